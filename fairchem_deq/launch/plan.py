"""Which runs a sweep makes and how Slurm is asked for them; nothing here submits.

`expand_configs` picks config files, `build_run_configs` turns each into the config that
fairchem's own `build_config` makes for `fairchem --mode train --config-yml X --submit`, and
`plan_sweep` adds the sbatch settings of ONE array job (submitit's SlurmExecutor names). Every
run uses its identifier as timestamp id, so its files are
<run-dir>/{checkpoints,results,logs/<logger>}/<identifier>/ and a resubmitted sweep resumes from
<run-dir>/checkpoints/<identifier>/checkpoint.pt (fairchem's BaseTask.setup). Pure functions
(no submitit import): fairchem_deq.launch.submit renders and submits a plan.
"""

from __future__ import annotations

import copy
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
        parts = parts[index + 1 :]
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
            "--mode",
            mode,
            "--config-yml",
            str(path),
            "--identifier",
            identifier,
            "--timestamp-id",
            identifier,
            "--run-dir",
            str(run_dir),
            "--logdir",
            str(logdir),
            "--num-gpus",
            str(num_gpus),
            "--num-nodes",
            str(num_nodes),
            "--seed",
            str(seed),
            "--print-every",
            str(print_every),
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


# ---- Slurm ---------------------------------------------------------------------------
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
    params = {
        "job_name": job_name,
        "time": max(1, round(timeout_h * 60)),
        "nodes": num_nodes,
        "ntasks_per_node": num_gpus,
        "cpus_per_task": cpus_per_task,
        "mem": f"{int(mem_gb)}GB",
        "signal_delay_s": signal_delay_s,
        "additional_parameters": additional,
    }
    if not cpu:
        params["gpus_per_node"] = num_gpus
    optional = {"partition": partition, "account": account, "qos": qos, "constraint": constraint, "exclude": exclude}
    params.update({k: v for k, v in optional.items() if v})
    if array_parallelism:
        params["array_parallelism"] = int(array_parallelism)
    if setup:
        params["setup"] = list(setup)
    return params


def plan_sweep(
    paths: Sequence[Path],
    *,
    logdir: str | Path = "logs",
    executor: str = "slurm",
    max_requeues: int = 3,
    slurm: dict | None = None,
    **config_kwargs,
) -> SweepPlan:
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
    params = (
        {}
        if local
        else slurm_parameters(
            configs,
            num_gpus=config_kwargs.get("num_gpus", 1),
            num_nodes=config_kwargs.get("num_nodes", 1),
            cpu=config_kwargs.get("cpu", False),
            **(slurm or {}),
        )
    )
    for config in configs:
        # what fairchem's --submit stores; the trainer fills in the job id (A_i for arrays)
        config["slurm"] = {**copy.deepcopy(params), "folder": str(folder)} if not local else {}
    return SweepPlan(list(paths), configs, folder, params, max_requeues)
