"""Which DEQ1 training recipe learns most per CPU-minute on MD17 ethanol.

Why: the shipped configs trained with the paper's implicit gradient to an absolute b_tol of
1e-6, which the backward solve never reaches (all 40 iterations, every step), and nothing
learned the energy. Each recipe is the shipped `configs/md17/ethanol/deq1.yml` plus a few
keys (a generated YAML that includes it), trained through fairchem's CLI for the same CPU
time (`benchmarks.train_models.train_all`, two at a time, one thread each), then evaluated
on the held-back frames 1800.. (cold solves, the checkpoint's tolerance), with the raw
weights (what fairchem's calculators evaluate: they drop the EMA in inference-only mode)
and with the EMA weights (what fairchem's validation evaluates):

    ift_abs_1e-6    the paper: implicit gradient, b_tol 1e-6 absolute, b_max_iter 40
    ift_rel_1e-2    implicit gradient, b_tol 1e-2 relative, b_max_iter 10
    phantom_1       1-step phantom gradient
    phantom_3       3-step phantom gradient
    phantom_1_e10   phantom_1 with the energy loss weighted 10 (1:8 instead of 1:80)
    phantom_1_noema phantom_1 with fairchem's EMA without warm-up (the old recipe's EMA)

Step cost = CPU seconds / optimiser steps of the run (one thread, start-up included).

    .venv/bin/python -m benchmarks.training_recipe [--budget-minutes 6] [--frames 100]

Writes benchmarks/results/training_recipe.json and .png.
"""

from __future__ import annotations

import argparse

import numpy as np
import yaml

from benchmarks import train_models
from benchmarks.accuracy import evaluate
from benchmarks.common import machine, read_json, save_figure, write_json
from benchmarks.train_models import (
    REPO,
    WORK,
    Trained,
    add_budget_arguments,
    budget_of,
    held_out_frames,
    prepare_data,
    train_all,
    train_command,
)

DEQ = "model.backbone.deq."
RECIPES = {
    "ift_abs_1e-6": {DEQ + "grad": "ift", DEQ + "b_tol": 1e-6, DEQ + "b_stop_mode": "abs", DEQ + "b_max_iter": 40},
    "ift_rel_1e-2": {DEQ + "grad": "ift", DEQ + "b_tol": 1e-2, DEQ + "b_stop_mode": "rel", DEQ + "b_max_iter": 10},
    "phantom_1": {DEQ + "grad": 1},
    "phantom_3": {DEQ + "grad": 3},
    "phantom_1_e10": {
        DEQ + "grad": 1,
        "loss_functions": [
            {"energy": {"fn": "mae", "coefficient": 10}},
            {"forces": {"fn": "l2mae", "coefficient": 80}},
        ],
    },
    "phantom_1_noema": {DEQ + "grad": 1, "optim.ema_warmup": False},
}
CONFIGS = WORK / "recipe_configs"
TRAINING_KEYS = ("cpu_s", "steps", "cpu_s_per_step")


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def write_recipe_config(recipe: str) -> str:
    """A YAML including the shipped deq1 config, with the recipe's keys on top (fairchem
    merges: the including file wins, lists are replaced)."""
    CONFIGS.mkdir(parents=True, exist_ok=True)
    path = CONFIGS / f"deq1_{recipe}.yml"
    config = {"includes": [str(REPO / "configs/md17/ethanol/deq1.yml")], **_nested(RECIPES[recipe])}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def _register(recipe: str) -> str:
    name = f"deq1_{recipe}"
    train_models.LABELS[name] = f"DEQ1 {recipe}"
    train_models.CONFIG_OF[name] = write_recipe_config(recipe)
    return name


def constant_prediction_mae(frames) -> float:
    """Energy MAE (kcal/mol) on `frames` of predicting the mean energy of the training frames
    0..1799: what a model that learned no energy at all scores."""
    energies = np.ravel(np.load(train_models.ethanol_npz())["E"])
    mean = float(np.mean(energies[: train_models.N_TRAINVAL_FRAMES]))  # kcal/mol
    return float(np.mean([abs(a.info["energy_ev"] * train_models.KCAL_PER_EV - mean) for a in frames]))


def plot_saved() -> None:
    """Redraws the plot from benchmarks/results/training_recipe.json."""
    saved = read_json("training_recipe")
    _plot(saved["results"], saved["constant_prediction_energy_mae_kcal_mol"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(parser, budget_minutes=6.0, epochs=3.0)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--frames", type=int, default=100, help="held-back frames evaluated")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    prepare_data()
    names = {recipe: _register(recipe) for recipe in args.recipes}
    budget_cpu_s, max_wall_s = budget_of(args)
    runs = {}
    if not args.skip_training:
        runs = train_all(
            list(names.values()),
            lambda name: train_command(name, args.epochs, None),
            args.threads,
            args.parallel,
            budget_cpu_s,
            max_wall_s,
        )
    frames = held_out_frames(args.frames)
    constant = constant_prediction_mae(frames)
    previous = read_json("training_recipe").get("results", {})
    results = {}
    for recipe, name in names.items():
        row = evaluate(Trained(name), frames)
        ema = evaluate(Trained(name, ema=True), frames)  # the weights fairchem's validation uses
        row.update({f"ema_{k}": v for k, v in ema.items()})
        run = runs.get(name, {})
        if run:
            row.update(
                cpu_s=run["cpu_s"],
                steps=run["checkpoint_step"],
                cpu_s_per_step=run["cpu_s"] / max(1, run["checkpoint_step"] or 1),
            )
        else:  # --skip-training: the training figures of the run that made the checkpoint
            row.update({k: v for k, v in previous.get(recipe, {}).items() if k in TRAINING_KEYS})
        results[recipe] = row
        print(recipe, row, flush=True)
    payload = {
        "command": (
            f"python -m benchmarks.training_recipe --budget-minutes {args.budget_minutes:g} "
            f"--threads {args.threads} --epochs {args.epochs:g} --frames {args.frames}"
            + (" --skip-training (evaluation of the previous run's checkpoints)" if args.skip_training else "")
        ),
        "machine": machine(),
        "budget_cpu_s_per_recipe": budget_cpu_s,
        "recipes": {r: _nested(RECIPES[r]) for r in args.recipes},
        "constant_prediction_energy_mae_kcal_mol": constant,
        "test_frames": f"{frames[0].info['frame']}..{frames[-1].info['frame']}",
        "results": results,
    }
    write_json("training_recipe", payload)
    _plot(results, constant)
    return payload


def _plot(results: dict, constant: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(names, [r["forces_mae_kcal_mol_A"] for r in results.values()])
    axes[0].set_ylabel("force MAE (kcal/mol/Å)")
    axes[1].bar(names, [r["energy_mae_kcal_mol"] for r in results.values()])
    axes[1].axhline(constant, color="k", ls="--", label="constant prediction")
    axes[1].set_ylabel("energy MAE (kcal/mol)")
    axes[1].legend(fontsize=8)
    axes[2].bar(names, [r.get("cpu_s_per_step", np.nan) for r in results.values()])
    axes[2].set_ylabel("CPU s per training step (1 thread)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=35)
    fig.suptitle(
        "DEQ1 training recipes (same schedule, equal CPU cap per run), MD17 ethanol held-back frames (raw weights)"
    )
    save_figure(fig, "training_recipe")
    plt.close(fig)


if __name__ == "__main__":
    main()
