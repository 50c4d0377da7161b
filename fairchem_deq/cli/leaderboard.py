"""Compose an OC20/OC22 leaderboard (EvalAI) submission file from per-split predictions.

Checks every prediction file, then merges them with fairchem's make_submission_file:
  s2ef   --id/--ood-ads/--ood-cat/--ood-both: s2ef_predictions.npz from `--mode predict`
  is2rs  the same splits: relaxed_positions.npz from `--mode run-relaxations` (task.write_pos)
  is2re  the same splits: directories of ML relaxation trajectories (task.relax_opt.traj_dir)
OC22 takes --id and --ood. Exit codes: 0 written, 2 invalid or missing predictions (an empty
is2re trajectory included), 130 interrupted, 143 terminated (nothing written in both).
"""

from __future__ import annotations

import argparse
import sys

from fairchem_deq.leaderboard import SPLITS, TASKS, check_predictions, make_submission


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--task", default="s2ef", choices=list(TASKS), help="leaderboard task (default: s2ef)")
    parser.add_argument("--dataset", default="OC20", choices=sorted(SPLITS), help="(default: OC20)")
    for split in sorted({s for splits in SPLITS.values() for s in splits}):
        parser.add_argument(
            f"--{split.replace('_', '-')}", dest=split, metavar="PATH", help=f"predictions of the {split} test split"
        )
    parser.add_argument("--out-path", required=True, help="submission file to write (.npz)")
    parser.add_argument("--no-check", action="store_true", help="skip the checks of the prediction files")


def run(args: argparse.Namespace) -> int:
    """Checks, then merges; a SubmissionError is a UserError (one line, rc 2)."""
    predictions = {s: getattr(args, s) for s in SPLITS[args.dataset] if getattr(args, s, None)}
    counts = {}
    if not args.no_check:
        # a missing split is reported by make_submission; check the ones given
        counts = {s: check_predictions(p, args.task) for s, p in predictions.items()}
    out = make_submission(predictions, args.out_path, task=args.task, dataset=args.dataset, check=False)
    for split, count in counts.items():
        print(f"  {split}: {count['systems']} systems from {predictions[split]}")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`fairchem-deq submission ARGS` (the dispatcher's parsing and exit codes)."""
    from fairchem_deq.cli.main import run_subcommand

    return run_subcommand("submission", argv)


if __name__ == "__main__":
    sys.exit(main())
