"""Force and energy MAE against CPU-minutes of training: DEQ1, DEQ2, EquiformerV2 4 and 8.

Why: one number at the end of a budget hides whether a model is still learning, and whether
one that is behind at 45 minutes is catching up. The runs are benchmarks.train_models' equal-
budget runs with `--snapshot-minutes` (checkpoint copies at CPU-time marks); each snapshot is
evaluated on the held-back consecutive frames 1800.. (batch 1, DEQs solved cold at the
checkpoint's tolerance, EMA weights as fairchem evaluates them).

    .venv/bin/python -m benchmarks.train_models --budget-minutes 45 --snapshot-minutes 5
    .venv/bin/python -m benchmarks.learning_curves [--frames 100]

Writes benchmarks/results/learning_curves.json and .png.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.accuracy import evaluate
from benchmarks.common import machine, read_json, save_figure, write_json
from benchmarks.train_models import MODELS, RUNS, Trained, held_out_frames
from benchmarks.training_recipe import constant_prediction_mae


def snapshots(name: str) -> list:
    return sorted((RUNS / "snapshots" / name).glob("cpu*.pt"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)
    frames = held_out_frames(args.frames)
    curves = {}
    for name in args.models:
        points = []
        for path in snapshots(name):
            cpu_s = int(path.stem[3:])
            model = Trained(name, path)
            row = evaluate(model, frames)
            row.update(
                cpu_minutes=cpu_s / 60, step=int(torch.load(path, map_location="cpu", weights_only=False)["step"])
            )
            points.append(row)
            print(model.label, row, flush=True)
        if points:
            curves[model.label] = points
    constant = constant_prediction_mae(frames)
    previous = read_json("learning_curves").get("curves", {})  # models not evaluated this time stay
    curves = {**{k: v for k, v in previous.items() if k not in curves}, **curves}
    payload = {
        "command": f"python -m benchmarks.learning_curves --frames {args.frames} (models evaluated by "
        "separate invocations are merged)",
        "machine": machine(),
        "test_frames": f"{frames[0].info['frame']}..{frames[-1].info['frame']}",
        "constant_prediction_energy_mae_kcal_mol": constant,
        "curves": curves,
    }
    write_json("learning_curves", payload)
    _plot(curves, constant)
    return payload


def _plot(curves: dict, constant: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, points in curves.items():
        minutes = [p["cpu_minutes"] for p in points]
        ax1.plot(minutes, [p["forces_mae_kcal_mol_A"] for p in points], marker="o", label=label)
        ax2.plot(minutes, [p["energy_mae_kcal_mol"] for p in points], marker="o", label=label)
    ax2.axhline(constant, color="k", ls="--", label="constant prediction")
    ax2.axhline(constant / 2, color="grey", ls=":", label="target: half of it")
    ax1.set_ylabel("force MAE (kcal/mol/Å)")
    ax2.set_ylabel("energy MAE (kcal/mol)")
    for ax in (ax1, ax2):
        ax.set_xlabel("training CPU-minutes (1 thread)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("MD17 ethanol, held-back frames 1800..: accuracy along equal-budget training")
    save_figure(fig, "learning_curves")
    plt.close(fig)


if __name__ == "__main__":
    main()
