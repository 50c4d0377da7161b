"""Train DEQ1 on the bundled OC20 relaxation trajectories for a CPU budget (fairchem's CLI).

Why: reuse in relaxations has to be measured on a model that knows slabs (the ethanol model
made OC20 reuse worse than cold, RESULTS section 7). The 20 trajectories are converted by
system (16 train / 2 val / 2 test, `fairchem-deq convert --oc20-tags --split-by system`) and
DEQ1 trains with the shipped `configs/oc20/converted/deq1.yml`, stopped after the budget
(CPU time, like `benchmarks.train_models`). `--width mini` trains the MD "mini" width
(64 channels) instead of the paper's 128 so that a CPU budget buys several epochs; every
override is recorded in `training_oc20.json`.

    .venv/bin/python -m benchmarks.train_oc20 [--budget-minutes 30] [--width mini]

Checkpoints: benchmarks/work/runs/checkpoints/<name>/checkpoint.pt; `--models oc20_eqv2_4l
oc20_eqv2_8l` trains the explicit baselines at the same width (for timing: an explicit
model's cost does not depend on its weights). Held-out test systems: `test_systems()`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import SHARED_DATA, machine, read_json, write_json
from benchmarks.train_models import (
    REPO,
    WORK,
    add_budget_arguments,
    budget_of,
    checkpoint,
    fairchem_train,
    train_all,
)

OC20_LMDB = WORK / "oc20_relax"
TRAJS = SHARED_DATA / "oc20_relax_trajs"
# run name -> (shipped config, extra overrides); EquiformerV2-8 is the 4-layer config with 8 layers
MODELS = {
    "oc20_deq1": ("configs/oc20/converted/deq1.yml", []),
    "oc20_eqv2_4l": ("configs/oc20/converted/eqv2_4l.yml", []),
    "oc20_eqv2_8l": ("configs/oc20/converted/eqv2_4l.yml", ["--model.backbone.num_layers=8"]),
}
# the MD "mini" channel widths (configs/includes/md/base.yml) on the OC20 graph
MINI_WIDTH = {
    "sphere_channels": 64,
    "attn_hidden_channels": 16,
    "num_heads": 4,
    "attn_alpha_channels": 16,
    "attn_value_channels": 8,
    "ffn_hidden_channels": 128,
    "edge_channels": 64,
}


def prepare_oc20() -> Path:
    """LMDB splits of the 20 trajectories, by system (once)."""
    from fairchem_deq.data.convert import convert

    if not (OC20_LMDB / "train").is_dir():
        WORK.mkdir(parents=True, exist_ok=True)
        convert(TRAJS, OC20_LMDB, split="paper", n_train=16, n_val=2, split_by="system", oc20_tags=True, progress=False)
    return OC20_LMDB


def conversion_info() -> dict:
    """`fairchem-deq convert`'s record of the OC20 conversion (conversion.json)."""
    import json

    return json.loads((OC20_LMDB / "conversion.json").read_text())


def split_sids() -> dict[str, list]:
    """split name -> sids of the systems (input files) in it."""
    return conversion_info().get("split_sids", {})


def test_systems() -> dict:
    """The conversion's record of which input files (systems) went to which split."""
    return {k: v for k, v in conversion_info().items() if "sid" in k or "system" in k or "split" in k}


def overrides(name: str, width: str, epochs: float, checkpoint_every: int = 10) -> list[str]:
    args = [
        *MODELS[name][1],
        "--optim.num_workers=0",
        f"--optim.max_epochs={epochs:g}",
        "--optim.eval_every=100000000",
        f"--optim.checkpoint_every={checkpoint_every}",
    ]
    if width == "mini":
        args += [f"--model.backbone.{k}={v}" for k, v in MINI_WIDTH.items()]
    return args


def train_command(name: str, width: str, epochs: float, checkpoint_every: int = 10) -> list[str]:
    return [
        *fairchem_train(MODELS[name][0], name),
        f"--dataset.train.src={OC20_LMDB / 'train'}",
        f"--dataset.val.src={OC20_LMDB / 'val'}",
        *overrides(name, width, epochs, checkpoint_every),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(parser, budget_minutes=30.0, epochs=2.0)
    parser.add_argument("--width", choices=("paper", "mini"), default="mini")
    parser.add_argument("--models", nargs="+", default=["oc20_deq1"], choices=list(MODELS))
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=10, help="optimiser steps between checkpoints")
    args = parser.parse_args(argv)
    prepare_oc20()
    budget_cpu_s, max_wall_s = budget_of(args)
    command = (
        f"python -m benchmarks.train_oc20 --budget-minutes {args.budget_minutes:g} --threads {args.threads} "
        f"--epochs {args.epochs:g} --width {args.width} --parallel {args.parallel} "
        f"--checkpoint-every {args.checkpoint_every} --models {' '.join(args.models)}"
    )
    new_runs = train_all(
        args.models,
        lambda name: train_command(name, args.width, args.epochs, args.checkpoint_every),
        args.threads,
        args.parallel,
        budget_cpu_s,
        max_wall_s,
    )
    runs = read_json("training_oc20").get("runs", {})  # merged over invocations
    for name, run in new_runs.items():
        run.update(
            command=command,
            config=MODELS[name][0],
            overrides=overrides(name, args.width, args.epochs, args.checkpoint_every),
            checkpoint=str(checkpoint(name).relative_to(REPO)),
        )
    runs.update(new_runs)
    write_json(
        "training_oc20",
        {
            "command": "see runs[*].command (runs of several invocations are merged)",
            "machine": machine(),
            "data": {"trajectories": str(TRAJS), "systems": "16 train / 2 val / 2 test", **test_systems()},
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
