"""Hands a planned sweep (fairchem_deq.launch.plan) to submitit.

Each array task runs fairchem's own `Runner` (fairchem.core._cli) on one planned config.
`Runner` is submitit-checkpointable: before a preemption or the time limit Slurm sends USR2
(`#SBATCH --signal`), submitit calls `Runner.checkpoint`, which saves checkpoint.pt and
requeues the task with `checkpoint` set, so the task resumes where it stopped (at most
`max_requeues` times after timeouts; preemptions always requeue). `sbatch_script` renders the
script without a cluster; local and debug runs use submitit's LocalExecutor/DebugExecutor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fairchem_deq.launch.plan import SweepPlan


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


def submit(
    plan: SweepPlan, executor: str = "slurm", *, timeout_h: float = 72, parallelism: int = 1, wait: bool | None = None
) -> list:
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
        ex.update_parameters(
            timeout_min=max(1, int(timeout_h * 60)),
            tasks_per_node=1,
            gpus_per_node=0 if plan.configs[0].get("cpu") else 1,
        )
    elif executor == "debug":
        from submitit import DebugExecutor

        ex = DebugExecutor(plan.folder)
    else:
        raise ValueError(f"cannot submit with executor {executor!r}")
    jobs = []
    step = max(1, int(parallelism))
    for start in range(0, len(plan.configs), step):
        chunk = ex.map_array(Runner(), plan.configs[start : start + step])
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
    """fairchem's experiment log of the submission (what `fairchem --submit` writes)."""
    from fairchem.core.common.utils import save_experiment_log

    logdir = plan.folder.parent
    return save_experiment_log(argparse.Namespace(logdir=logdir), jobs, plan.configs)
