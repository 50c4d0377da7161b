"""Run many fairchem configs as ONE Slurm array job (submitit), or locally for debugging.

    fairchem-deq sweep configs/md22 --variants deq1 deq2 eqv2_4l \\
        --partition gpu --num-gpus 1 --timeout-h 48 --run-dir runs/md22 [--dry-run]

Each array task runs fairchem's own `Runner` (fairchem.core._cli) on one config built by
fairchem's `build_config`: what `fairchem --mode train --config-yml X --submit` runs for a
single config. `Runner` is submitit-checkpointable: before a preemption or the time limit
Slurm sends USR2 (`#SBATCH --signal`), submitit calls `Runner.checkpoint`, which saves
checkpoint.pt and requeues the task with `checkpoint` set, so the task resumes where it
stopped (at most --max-requeues times after timeouts; preemptions always requeue).
Every run uses its identifier as timestamp id, so its files are
<run-dir>/{checkpoints,results,logs/<logger>}/<identifier>/ and a resubmitted sweep resumes
from <run-dir>/checkpoints/<identifier>/checkpoint.pt (fairchem's BaseTask.setup).

--dry-run prints the array plan and the exact sbatch script (submitit's own Slurm
template) without a cluster; --local runs the tasks with submitit's LocalExecutor (one
subprocess per task, --array-parallelism at a time); --debug runs them in this process
(submitit's DebugExecutor, pdb on errors).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("train", "validate", "predict", "run-relaxations")
EXECUTORS = ("slurm", "dry-run", "local", "debug")
INCLUDES_DIR = "includes"


# ---- which configs -----------------------------------------------------------------
def expand_configs(items: Iterable[str | Path], variants: Sequence[str] | None = None) -> list[Path]:
    """Config files as given; a directory expands to its *.yml files (recursively, sorted),
    skipping `includes/` folders. `variants` keeps files whose name (without .yml) is listed.
    """
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.yml") if INCLUDES_DIR not in p.relative_to(path).parts[:-1])
            if not found:
                raise FileNotFoundError(f"{path}: no .yml configs")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such config file or directory")
    if variants:
        unknown = sorted(set(variants) - {p.stem for p in paths})
        if unknown:
            raise ValueError(f"no config named {unknown} among {len(paths)} configs")
        paths = [p for p in paths if p.stem in set(variants)]
    unique: list[Path] = []
    for p in paths:
        if p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    if not unique:
        raise ValueError("no configs selected")
    return unique


def identifier_for(path: Path, prefix: str = "") -> str:
    """`configs/md22/dha/deq1.yml` -> `md22-dha-deq1` (path below `configs/`, else parent-name)."""
    parts = Path(path).with_suffix("").parts
    if "configs" in parts:
        index = len(parts) - 1 - parts[::-1].index("configs")
        parts = parts[index + 1:]
    else:
        parts = parts[-2:]
    return prefix + "-".join(parts)


# ---- fairchem configs --------------------------------------------------------------
def build_run_configs(
    paths: Sequence[Path],
    *,
    mode: str = "train",
    run_dir: str | Path = ".",
    logdir: str | Path = "logs",
    identifier_prefix: str = "",
    overrides: Sequence[str] = (),
    num_gpus: int = 1,
    num_nodes: int = 1,
    cpu: bool = False,
    amp: bool = False,
    seed: int = 0,
    print_every: int = 10,
    checkpoint: str | None = None,
    submit: bool = True,
) -> list[dict]:
    """One fairchem config per path: fairchem's own parser and `build_config`.

    `overrides` are fairchem's `--a.b=value` arguments (the leading dashes are optional).
    `checkpoint`: a file for every run, or "last"/"best" for each run's own
    <run-dir>/checkpoints/<identifier>/{checkpoint,best_checkpoint}.pt (e.g. to predict
    with the checkpoints of a training sweep).
    """
    from fairchem.core.common.flags import flags
    from fairchem.core.common.utils import build_config

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    run_dir = Path(run_dir).absolute()
    fairchem_overrides = [o if o.startswith("--") else f"--{o}" for o in overrides]
    bad = [o for o in fairchem_overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must look like key.sub=value, got {bad}")
    configs, identifiers = [], {}
    for path in paths:
        identifier = identifier_for(path, identifier_prefix)
        if identifier in identifiers:
            raise ValueError(f"{path} and {identifiers[identifier]} get the same identifier {identifier!r}")
        identifiers[identifier] = path
        argv = [
            "--mode", mode, "--config-yml", str(path), "--identifier", identifier,
            "--timestamp-id", identifier, "--run-dir", str(run_dir), "--logdir", str(logdir),
            "--num-gpus", str(num_gpus), "--num-nodes", str(num_nodes), "--seed", str(seed),
            "--print-every", str(print_every),
        ]
        argv += ["--cpu"] * cpu + ["--amp"] * amp + ["--submit"] * submit
        if checkpoint in ("last", "best"):
            name = "checkpoint.pt" if checkpoint == "last" else "best_checkpoint.pt"
            argv += ["--checkpoint", str(run_dir / "checkpoints" / identifier / name)]
        elif checkpoint:
            argv += ["--checkpoint", str(Path(checkpoint).absolute())]
        args = flags.get_parser().parse_args(argv)
        configs.append(build_config(args, list(fairchem_overrides)))
    return configs


# ---- executors -----------------------------------------------------------------------
@dataclass
class SweepPlan:
    """Everything a submission needs; `slurm_parameters` use submitit's SlurmExecutor names."""

    paths: list[Path]
    configs: list[dict]
    folder: Path
    slurm_parameters: dict = field(default_factory=dict)
    max_requeues: int = 3

    @property
    def identifiers(self) -> list[str]:
        return [c["identifier"] for c in self.configs]


def slurm_parameters(
    configs: Sequence[dict],
    *,
    job_name: str = "fairchem-deq-sweep",
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    num_gpus: int = 1,
    num_nodes: int = 1,
    timeout_h: float = 72,
    mem_gb: int = 80,
    cpus_per_task: int | None = None,
    array_parallelism: int | None = None,
    constraint: str | None = None,
    exclude: str | None = None,
    setup: Sequence[str] = (),
    signal_delay_s: int = 120,
    cpu: bool = False,
    extra: dict | None = None,
) -> dict:
    """sbatch settings as fairchem's `--submit` chooses them (one rank per GPU, cpus =
    num_workers + 1 per rank), plus the array throttle, `--requeue` (so a preempted task may be
    requeued) and the USR2 signal time before the limit that triggers Runner.checkpoint.
    Keys of each config's `slurm:` block and `extra` become extra sbatch options.
    """
    if cpus_per_task is None:
        cpus_per_task = max(int(c.get("optim", {}).get("num_workers", 0)) + 1 for c in configs)
    additional = {"requeue": True}
    for config in configs:
        additional.update(config.get("slurm") or {})
    additional.update(extra or {})
    params = dict(
        job_name=job_name,
        time=max(1, int(round(timeout_h * 60))),
        nodes=num_nodes,
        ntasks_per_node=num_gpus,
        cpus_per_task=cpus_per_task,
        mem=f"{int(mem_gb)}GB",
        signal_delay_s=signal_delay_s,
        additional_parameters=additional,
    )
    if not cpu:
        params["gpus_per_node"] = num_gpus
    optional = dict(partition=partition, account=account, qos=qos, constraint=constraint, exclude=exclude)
    params.update({k: v for k, v in optional.items() if v})
    if array_parallelism:
        params["array_parallelism"] = int(array_parallelism)
    if setup:
        params["setup"] = list(setup)
    return params


def plan_sweep(paths: Sequence[Path], *, logdir: str | Path = "logs", executor: str = "slurm",
               max_requeues: int = 3, slurm: dict | None = None, **config_kwargs) -> SweepPlan:
    """Builds every run config and the executor settings (nothing is submitted)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    local = executor in ("local", "debug")
    if local:
        # one rank per task, initialised by fairchem's local path (no SLURM_* variables)
        config_kwargs.update(num_gpus=1, num_nodes=1, submit=False)
    elif config_kwargs.get("cpu"):
        # fairchem's Slurm path (config["submit"]) always starts NCCL on CUDA devices; a CPU task
        # takes fairchem's local path instead (gloo), which supports exactly one rank
        if config_kwargs.get("num_gpus", 1) != 1 or config_kwargs.get("num_nodes", 1) != 1:
            raise ValueError("CPU tasks on Slurm run one rank: use --num-gpus 1 --num-nodes 1 with --cpu")
        config_kwargs["submit"] = False
    configs = build_run_configs(paths, logdir=logdir, **config_kwargs)
    folder = Path(logdir).absolute() / "%j"
    params = {} if local else slurm_parameters(
        configs, num_gpus=config_kwargs.get("num_gpus", 1), num_nodes=config_kwargs.get("num_nodes", 1),
        cpu=config_kwargs.get("cpu", False), **(slurm or {}))
    for config in configs:
        # what fairchem's --submit stores; the trainer fills in the job id (A_i for arrays)
        config["slurm"] = {**copy.deepcopy(params), "folder": str(folder)} if not local else {}
    return SweepPlan(list(paths), configs, folder, params, max_requeues)


def _slurm_executor_class(dry_run: bool):
    from submitit.slurm.slurm import SlurmExecutor

    if not dry_run:
        return SlurmExecutor

    class DryRunSlurmExecutor(SlurmExecutor):
        """submitit's SlurmExecutor without the check for `srun`: it only renders scripts."""

        @classmethod
        def affinity(cls) -> int:
            return 1

    return DryRunSlurmExecutor


def sbatch_script(plan: SweepPlan) -> str:
    """The sbatch script submitit would submit for this sweep (an array if > 1 task)."""
    executor = _slurm_executor_class(dry_run=True)(plan.folder, max_num_timeout=plan.max_requeues)
    executor.update_parameters(**plan.slurm_parameters)  # submitit validates the parameters
    if len(plan.configs) > 1:
        executor.parameters["map_count"] = len(plan.configs)  # what submitit does for map_array
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def submit(plan: SweepPlan, executor: str = "slurm", *, timeout_h: float = 72, parallelism: int = 1,
           wait: bool | None = None) -> list:
    """Submits the sweep: one array job on Slurm; local/debug run tasks here, `parallelism` at a time.

    Returns submitit jobs. Local and debug runs are waited for (an error raises).
    """
    from fairchem.core._cli import Runner

    if executor == "slurm":
        ex = _slurm_executor_class(dry_run=False)(plan.folder, max_num_timeout=plan.max_requeues)
        ex.update_parameters(**plan.slurm_parameters)
        jobs = ex.map_array(Runner(), plan.configs)
        _save_log(plan, jobs)
        return jobs
    if executor == "local":
        from submitit import LocalExecutor

        ex = LocalExecutor(plan.folder, max_num_timeout=plan.max_requeues)
        ex.update_parameters(timeout_min=max(1, int(timeout_h * 60)), tasks_per_node=1,
                             gpus_per_node=0 if plan.configs[0].get("cpu") else 1)
    elif executor == "debug":
        from submitit import DebugExecutor

        ex = DebugExecutor(plan.folder)
    else:
        raise ValueError(f"cannot submit with executor {executor!r}")
    jobs = []
    step = max(1, int(parallelism))
    for start in range(0, len(plan.configs), step):
        chunk = ex.map_array(Runner(), plan.configs[start:start + step])
        if wait is not False:
            for job in chunk:
                job.result()
                if executor == "debug":
                    _release(job)
        jobs.extend(chunk)
    return jobs


def _release(job) -> None:
    """Drops a finished in-process run's trainer: its LMDB environments stay open (lmdb
    refuses to open a file twice in one process) until the trainer is garbage-collected."""
    import gc

    runner = job.submission().function
    for attr in ("trainer", "task"):
        if hasattr(runner, attr):
            setattr(runner, attr, None)
    gc.collect()


def _save_log(plan: SweepPlan, jobs: list) -> Path:
    from fairchem.core.common.utils import save_experiment_log

    logdir = plan.folder.parent
    return save_experiment_log(argparse.Namespace(logdir=logdir), jobs, plan.configs)


# ---- command line ----------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("configs", nargs="+", metavar="CONFIG",
                        help="config files, or directories of them (includes/ folders skipped)")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="keep configs with these file names (e.g. deq1 deq2 eqv2_4l)")
    parser.add_argument("--mode", default="train", choices=list(MODES), help="fairchem mode (default: train)")
    parser.add_argument("--run-dir", default=".", help="fairchem --run-dir of every run (default: .)")
    parser.add_argument("--logdir", default="logs/sweeps",
                        help="submitit folder: job scripts, pickles, stdout/err in <logdir>/<job id> "
                        "(default: logs/sweeps)")
    parser.add_argument("--identifier-prefix", default="", help="prepended to every run identifier")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="fairchem config override for every run, e.g. optim.max_epochs=10 (repeatable)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint for every run, or last/best: each run's own checkpoint in --run-dir")
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
    slurm.add_argument("--array-parallelism", type=int,
                       help="tasks running at once (Slurm: %%K of --array; local: default 1)")
    slurm.add_argument("--max-requeues", type=int, default=3,
                       help="requeues after hitting the time limit (default: 3, fairchem's)")
    slurm.add_argument("--signal-delay-s", type=int, default=120,
                       help="USR2 this many seconds before the limit -> Runner.checkpoint (default: 120)")
    slurm.add_argument("--setup", action="append", default=[], metavar="CMD",
                       help="shell line run before srun, e.g. 'source .venv/bin/activate' (repeatable)")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="extra sbatch option, e.g. mail-type=END (repeatable)")
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
    executor = "dry-run" if args.dry_run else "local" if args.local else "debug" if args.debug else "slurm"
    try:
        paths = expand_configs(args.configs, args.variants)
        plan = plan_sweep(
            paths, logdir=args.logdir, executor=executor, max_requeues=args.max_requeues,
            mode=args.mode, run_dir=args.run_dir, identifier_prefix=args.identifier_prefix,
            overrides=args.override, num_gpus=args.num_gpus, num_nodes=args.num_nodes, cpu=args.cpu,
            amp=args.amp, seed=args.seed, print_every=args.print_every, checkpoint=args.checkpoint,
            slurm=dict(
                partition=args.partition, account=args.account, qos=args.qos,
                constraint=args.constraint, exclude=args.exclude, timeout_h=args.timeout_h,
                mem_gb=args.mem_gb, cpus_per_task=args.cpus_per_task,
                array_parallelism=args.array_parallelism, setup=args.setup,
                signal_delay_s=args.signal_delay_s, extra=_parse_sbatch(args.sbatch),
            ),
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"fairchem-deq sweep: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(plan.configs)} runs ({args.mode}), submitit folder {plan.folder}:")
    for index, (path, identifier) in enumerate(zip(plan.paths, plan.identifiers)):
        print(f"  [{index}] {identifier}  <- {path}")
    if executor == "dry-run":
        print("\n# sbatch script (submitit, not submitted):")
        print(sbatch_script(plan))
        return 0
    started = time.time()
    jobs = submit(plan, executor, timeout_h=args.timeout_h, parallelism=args.array_parallelism or 1)
    if executor == "slurm":
        print(f"submitted array job {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks): "
              + ", ".join(j.job_id for j in jobs))
    else:
        print(f"{len(jobs)} runs finished in {time.time() - started:.0f} s; logs in {plan.folder.parent}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fairchem-deq sweep")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
