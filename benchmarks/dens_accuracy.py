"""Does DeNS help DEQ1 at an equal training budget? MD17 ethanol, with vs without DeNS.

Why: DeNS (denoising non-equilibrium structures) is an auxiliary task that improved
EquiformerV2; whether it improves DEQuiformer for the same training compute is an open
question. Two runs through fairchem's CLI, side by side under the same load and the same
CPU-time budget (benchmarks.train_models.train_all): configs/md17/ethanol/deq1_dens.yml
(run `deq1_dens`) and configs/md17/ethanol/deq1.yml (run `deq1_nodens`, its own checkpoint,
never the `deq1` one of benchmarks.train_models). Same data, schedule span (`--epochs`),
DEQ gradient (`--deq-grad`) as benchmarks.train_models. Then force/energy MAE on the
held-back consecutive frames 1800.. (benchmarks.accuracy.evaluate: batch 1, cold solves).

fairchem's DeNS trainer validates (and predicts the test split) after every epoch, which
the plain trainer does not: that comes out of the DeNS run's budget. Both runs point the
test split at a copy of the 50-frame validation split and skip the cold re-solve
(task.deq.compare_cold False) to keep that cost small; `evaluation_overhead` in the JSON
counts those passes.

    .venv/bin/python -m benchmarks.dens_accuracy [--budget-minutes 20] [--epochs 6] [--frames 100]

Writes benchmarks/results/dens_accuracy.json and .png (not with --scratch: development runs).
"""

from __future__ import annotations

import argparse
import re
import shutil

from benchmarks.accuracy import evaluate
from benchmarks.common import machine, save_figure, write_json
from benchmarks.train_models import (
    LABELS,
    LMDB,
    N_TRAINVAL_FRAMES,
    RUNS,
    Trained,
    add_budget_arguments,
    budget_of,
    config_path,
    ethanol_npz,
    held_out_frames,
    prepare_data,
    train_all,
    train_command,
)

RUNS_COMPARED = ("deq1_dens", "deq1_nodens")
PAPER_NOTE = (
    "DeNS paper (Liao et al. 2024), Equiformer on MD17 ethanol, 1500 epochs: force MAE "
    "improved with DeNS; here the budget is minutes of CPU time"
)


def small_test_split():
    """A copy of the validation split: fairchem cannot open one LMDB twice in a process."""
    copy = LMDB / "val_copy_for_dens"
    if not copy.is_dir():
        tmp = LMDB / ".val_copy_for_dens.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(LMDB / "val", tmp)
        tmp.rename(copy)
    return copy


def dens_command(name: str, epochs: float, deq_grad: str) -> list[str]:
    args = [a for a in train_command(name, epochs, deq_grad) if not a.startswith("--dataset.test.src=")]
    return [*args, f"--dataset.test.src={small_test_split()}", "--task.deq.compare_cold=False"]


def evaluation_passes(name: str) -> dict:
    log = (RUNS / f"{name}.log").read_text()
    return {
        "validations": len(re.findall(r"Evaluating on val", log)),
        "test_predictions": len(re.findall(r"Predicting on test", log)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(parser, budget_minutes=20.0, epochs=6.0)
    parser.add_argument("--frames", type=int, default=100, help="held-back test frames")
    parser.add_argument("--scratch", action="store_true", help="do not write benchmarks/results/")
    args = parser.parse_args(argv)
    prepare_data()
    budget_cpu_s, max_wall_s = budget_of(args)
    runs = train_all(
        list(RUNS_COMPARED),
        lambda name: dens_command(name, args.epochs, args.deq_grad),
        args.threads,
        len(RUNS_COMPARED),
        budget_cpu_s,
        max_wall_s,
    )
    failed = [name for name, run in runs.items() if run["checkpoint_step"] is None]
    if failed:
        raise SystemExit(f"no checkpoint from {failed}: see {[runs[n]['log'] for n in failed]}")
    frames = held_out_frames(args.frames)
    results = {}
    for name in RUNS_COMPARED:
        runs[name]["evaluation_overhead"] = evaluation_passes(name)
        results[LABELS[name]] = r = evaluate(Trained(name), frames)
        r["checkpoint_step"] = runs[name]["checkpoint_step"]
        print(LABELS[name], r, flush=True)
    if args.scratch:
        return results
    command = (
        "python -m benchmarks.dens_accuracy --budget-minutes %g --epochs %g --deq-grad %s --threads %d --frames %d"
        % (args.budget_minutes, args.epochs, args.deq_grad, args.threads, args.frames)
    )
    write_json(
        "dens_accuracy",
        {
            "command": command,
            "machine": machine(),
            "budget_cpu_s_per_run": budget_cpu_s,
            "configs": {LABELS[name]: config_path(name) for name in RUNS_COMPARED},
            "data": {
                "npz": str(ethanol_npz()),
                "trainval_frames": f"0..{N_TRAINVAL_FRAMES - 1}",
                "split": "950 train / 50 val (random, seed 0)",
                "test_frames": f"{frames[0].info['frame']}..{frames[-1].info['frame']} (held back, consecutive)",
            },
            "results": results,
            "runs": runs,
            "note": PAPER_NOTE,
        },
    )
    plot(results, budget_cpu_s)
    return results


def plot(results: dict, budget_cpu_s: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 4))
    labels = list(results)
    ax1.bar(labels, [r["forces_mae_kcal_mol_A"] for r in results.values()], color=["C1", "C0"])
    ax1.set_ylabel("force MAE (kcal/mol/Å)")
    ax2.bar(labels, [r["energy_mae_kcal_mol"] for r in results.values()], color=["C1", "C0"])
    ax2.set_ylabel("energy MAE (kcal/mol)")
    fig.suptitle(f"MD17 ethanol, DEQ1 with vs without DeNS, {budget_cpu_s / 60:g} CPU-min each, held-back frames")
    save_figure(fig, "dens_accuracy")


if __name__ == "__main__":
    main()
