"""Training peak memory and step time: DEQ (shipped phantom-1 and the paper's implicit
gradients) vs EquiformerV2 4 and 8 layers.

Why: implicit differentiation should not store the solver's activations, so a DEQ's training
memory should be about one block's worth, not N blocks'.

Method (CPU: tracemalloc does not see torch's allocator). Every variant runs in a FRESH
subprocess (one thread, to disturb concurrent jobs less): build the model (MD "mini" width,
random init: memory does not depend on the weights; the short training runs of
benchmarks.train_models hardly move them anyway), the batch and the AdamW
optimiser, read the resident set size (RSS, /proc/self/statm) as the baseline, then run
optimiser steps (energy + 80 x L2 force loss, as in the shipped config, against the reference
labels) and read the peak RSS (getrusage ru_maxrss). Reported: peak - baseline, i.e. the
memory a training step adds (activations kept for backward, gradients, optimiser state,
allocator slack). Step time: median of the steps after the first, in that same subprocess;
the subprocesses run one after another, so step-time ratios are noisier than the interleaved
timings of the other benchmarks. Batches: 4 ethanol frames, and 1 OC20 slab frame (same width,
MD cutoff 5 Å, so a much larger graph).

    .venv/bin/python -m benchmarks.training_memory [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import MD_MINI, SHARED_DATA, build_model, machine, save_figure, write_json
from fairchem_deq.reuse.forward import captured_output

REPO = Path(__file__).parents[1]
# label -> (config include, layers, deq overrides): "DEQn" = the shipped deq block
# (1-step phantom gradient); "DEQn paper" = the *_paper.yml variants (implicit gradient,
# b_tol 1e-6 absolute, 40 backward iterations)
PAPER = {"grad": "ift", "b_tol": 1e-6, "b_stop_mode": "abs", "b_max_iter": 40}
VARIANTS = {
    "DEQ1": ("deq1", 1, {}),
    "DEQ2": ("deq2", 2, {}),
    "DEQ1 paper": ("deq1", 1, PAPER),
    "DEQ2 paper": ("deq2", 2, PAPER),
    "EquiformerV2-4": ("eqv2_4l", 4, None),
    "EquiformerV2-8": ("eqv2_8l", 8, None),
}


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def batch_of(system: str):
    from ase.io import read

    from benchmarks.train_models import held_out_frames
    from fairchem_deq.data.atoms_graphs import atoms_to_batch

    if system == "ethanol":
        frames = held_out_frames(4)
        energy = torch.tensor([a.info["energy_ev"] for a in frames], dtype=torch.float32)
        forces = torch.tensor(np.concatenate([a.info["forces_ev"] for a in frames]), dtype=torch.float32)
    else:
        frames = [read(sorted((SHARED_DATA / "oc20_relax_trajs").glob("*.traj"))[0], index=0)]
        energy = torch.tensor([frames[0].get_potential_energy()], dtype=torch.float32)
        forces = torch.tensor(frames[0].get_forces(), dtype=torch.float32)
    return atoms_to_batch(frames), energy - energy.mean(), forces


def child(variant: str, system: str, steps: int) -> dict:
    torch.set_num_threads(1)
    name, layers, overrides = VARIANTS[variant]
    deq = None
    if overrides is not None:
        deq = yaml.safe_load((REPO / f"configs/includes/md/{name}.yml").read_text())["model"]["backbone"]["deq"]
        deq.update(overrides)
    model = build_model(MD_MINI, layers, deq)
    weights = "random init"
    model.train()
    batch, energy, forces = batch_of(system)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    base = rss_mb()
    times, nsteps = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        with captured_output(model.backbone) as captured:
            out = model(batch)
        e = out["energy"]["energy"].reshape(-1)
        f = out["forces"]["forces"].reshape(-1, 3)
        loss = (e - energy).abs().mean() + 80 * (f - forces).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if deq is not None:
            nsteps.append(float(captured["output"]["deq_stats"]["nstep"].float().mean()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "baseline_rss_mb": base,
        "peak_rss_mb": peak,
        "step_mb": peak - base,
        "step_s_median": statistics.median(times[1:] or times),
        "weights": weights,
        "natoms": int(batch.natoms.sum()),
        "train_nstep_mean": statistics.mean(nsteps) if nsteps else None,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--oc20-steps", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "SYSTEM"))
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, args.steps)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results = {}
    for system, steps in (("ethanol", args.steps), ("oc20", args.oc20_steps)):
        for variant in VARIANTS:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.training_memory", "--child", variant, system, "--steps", str(steps)],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            results.setdefault(system, {})[variant] = r = json.loads(line[7:])
            print(system, variant, r, flush=True)
    ratios = {
        s: {
            f"{v} / EquiformerV2-{n}": r[v][key] / r[f"EquiformerV2-{n}"][key]
            for v in VARIANTS
            if v.startswith("DEQ")
            for n in (4, 8)
            for key in ("step_mb",)
        }
        for s, r in results.items()
    }
    time_ratios = {
        s: {
            f"{v} / EquiformerV2-{n}": r[v]["step_s_median"] / r[f"EquiformerV2-{n}"]["step_s_median"]
            for v in VARIANTS
            if v.startswith("DEQ")
            for n in (4, 8)
        }
        for s, r in results.items()
    }
    print("memory ratios", ratios, "\nstep-time ratios", time_ratios)
    write_json(
        "training_memory",
        {
            "command": f"python -m benchmarks.training_memory --steps {args.steps} --oc20-steps {args.oc20_steps}",
            "machine": machine(),
            "method": __doc__.split("Method")[1].split("    .venv")[0].strip(),
            "results": results,
            "memory_ratios": ratios,
            "step_time_ratios": time_ratios,
            "target": "DEQ step memory <= 0.5 x EquiformerV2-8",
        },
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (system, r) in zip(axes, results.items()):
        ax.bar(list(r), [v["step_mb"] for v in r.values()])
        ax.set_title(f"{system}: peak RSS - baseline (MB), {next(iter(r.values()))['natoms']} atoms")
        ax.tick_params(axis="x", rotation=20)
    save_figure(fig, "training_memory")


if __name__ == "__main__":
    main()
