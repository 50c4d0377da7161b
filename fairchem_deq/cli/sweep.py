"""Run many fairchem configs as ONE Slurm array job (submitit), or locally for debugging.

    fairchem-deq sweep configs/md22 --variants deq1 deq2 eqv2_4l \\
        --partition gpu --num-gpus 1 --timeout-h 48 --run-dir runs/md22 [--dry-run]

Each array task runs fairchem's own `Runner` on one config built by fairchem's `build_config`:
what `fairchem --mode train --config-yml X --submit` runs for a single config. Before a
preemption or the time limit Slurm sends USR2, `Runner.checkpoint` saves checkpoint.pt and the
task is requeued and resumes (at most --max-requeues times after timeouts). Run files go to
<run-dir>/{checkpoints,results,logs/<logger>}/<identifier>/, so a resubmitted sweep resumes.

--dry-run prints the array plan and the exact sbatch script (submitit's own Slurm
template) without a cluster; --local runs the tasks with submitit's LocalExecutor (one
subprocess per task, --array-parallelism at a time); --debug runs them in this process
(submitit's DebugExecutor, pdb on errors).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from fairchem_deq.command import UserError
from fairchem_deq.launch.plan import MODES, expand_configs, plan_sweep
from fairchem_deq.launch.submit import sbatch_script, submit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "configs", nargs="+", metavar="CONFIG", help="config files, or directories of them (includes/ folders skipped)"
    )
    parser.add_argument(
        "--variants", nargs="+", metavar="NAME", help="keep configs with these file names (e.g. deq1 deq2 eqv2_4l)"
    )
    parser.add_argument("--mode", default="train", choices=list(MODES), help="fairchem mode (default: train)")
    parser.add_argument("--run-dir", default=".", help="fairchem --run-dir of every run (default: .)")
    parser.add_argument(
        "--logdir",
        default="logs/sweeps",
        help="submitit folder: job scripts, pickles, stdout/err in <logdir>/<job id> (default: logs/sweeps)",
    )
    parser.add_argument("--identifier-prefix", default="", help="prepended to every run identifier")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fairchem config override for every run, e.g. optim.max_epochs=10 (repeatable)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint for every run, or last/best: each run's own checkpoint in --run-dir",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--print-every", type=int, default=10)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="CPU runs (gloo; no GPUs requested)")
    slurm = parser.add_argument_group("Slurm (per array task)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--constraint")
    slurm.add_argument("--exclude")
    slurm.add_argument("--num-gpus", type=int, default=1, help="GPUs (= ranks) per node (default: 1)")
    slurm.add_argument("--num-nodes", type=int, default=1, help="nodes per task (default: 1)")
    slurm.add_argument("--timeout-h", type=float, default=72, help="time limit in hours (default: 72)")
    slurm.add_argument("--mem-gb", type=int, default=80, help="memory per node in GB (default: 80)")
    slurm.add_argument("--cpus-per-task", type=int, help="default: optim.num_workers + 1 (fairchem's choice)")
    slurm.add_argument(
        "--array-parallelism", type=int, help="tasks running at once (Slurm: %%K of --array; local: default 1)"
    )
    slurm.add_argument(
        "--max-requeues", type=int, default=3, help="requeues after hitting the time limit (default: 3, fairchem's)"
    )
    slurm.add_argument(
        "--signal-delay-s",
        type=int,
        default=120,
        help="USR2 this many seconds before the limit -> Runner.checkpoint (default: 120)",
    )
    slurm.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="CMD",
        help="shell line run before srun, e.g. 'source .venv/bin/activate' (repeatable)",
    )
    slurm.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option, e.g. mail-type=END (repeatable)",
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--dry-run", action="store_true", help="print the plan and the sbatch script; submit nothing")
    how.add_argument("--local", action="store_true", help="run with submitit's LocalExecutor on this machine")
    how.add_argument("--debug", action="store_true", help="run in this process (submitit's DebugExecutor)")


def _parse_sbatch(items: Sequence[str]) -> dict:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise ValueError(f"--sbatch needs KEY=VALUE or KEY, got {item!r}")
        extra[key.lstrip("-")] = value if sep else True
    return extra


def run(args: argparse.Namespace) -> int:
    """Plans the sweep, then prints it (--dry-run) or submits it."""
    executor = "dry-run" if args.dry_run else "local" if args.local else "debug" if args.debug else "slurm"
    try:
        paths = expand_configs(args.configs, args.variants)
        plan = plan_sweep(
            paths,
            logdir=args.logdir,
            executor=executor,
            max_requeues=args.max_requeues,
            mode=args.mode,
            run_dir=args.run_dir,
            identifier_prefix=args.identifier_prefix,
            overrides=args.override,
            num_gpus=args.num_gpus,
            num_nodes=args.num_nodes,
            cpu=args.cpu,
            amp=args.amp,
            seed=args.seed,
            print_every=args.print_every,
            checkpoint=args.checkpoint,
            slurm={
                "partition": args.partition,
                "account": args.account,
                "qos": args.qos,
                "constraint": args.constraint,
                "exclude": args.exclude,
                "timeout_h": args.timeout_h,
                "mem_gb": args.mem_gb,
                "cpus_per_task": args.cpus_per_task,
                "array_parallelism": args.array_parallelism,
                "setup": args.setup,
                "signal_delay_s": args.signal_delay_s,
                "extra": _parse_sbatch(args.sbatch),
            },
        )
    except ValueError as exc:  # a bad selection or setting; a missing config is a FileNotFoundError
        raise UserError(str(exc)) from None
    print(f"{len(plan.configs)} runs ({args.mode}), submitit folder {plan.folder}:")
    for index, (path, identifier) in enumerate(zip(plan.paths, plan.identifiers, strict=True)):
        print(f"  [{index}] {identifier}  <- {path}")
    if executor == "dry-run":
        print("\n# sbatch script (submitit, not submitted):")
        print(sbatch_script(plan))
        return 0
    started = time.time()
    jobs = submit(plan, executor, timeout_h=args.timeout_h, parallelism=args.array_parallelism or 1)
    if executor == "slurm":
        print(
            f"submitted array job {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks): "
            + ", ".join(j.job_id for j in jobs)
        )
    else:
        print(f"{len(jobs)} runs finished in {time.time() - started:.0f} s; logs in {plan.folder.parent}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`fairchem-deq sweep ARGS` (the dispatcher's parsing and exit codes)."""
    from fairchem_deq.cli.main import run_subcommand

    return run_subcommand("sweep", argv)


if __name__ == "__main__":
    sys.exit(main())
