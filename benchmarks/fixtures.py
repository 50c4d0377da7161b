"""What every benchmark shares: data, models, results, the tight-reference cache, timing.

Models are named, not built: each script takes the shipped reference models
(`DEQCalculator.from_reference`, made by `python -m benchmarks.reference_models export`) and
`--checkpoints NAME=PATH ...` replaces any of them (the smoke test hands in the tiny test
checkpoints). Every model call goes through `fairchem_deq.DEQCalculator`, what a user runs;
explicit EquiformerV2 checkpoints run through it too (`calc.is_deq` False). EquiformerV2
depths without a reference model (1 layer; 8 layers on OC20) are derived from the 4-layer one
(`derived_checkpoint`): for timing only, since an explicit model's cost does not depend on
its weights.

Data (`FAIRCHEM_DEQ_DATA`, default ../shared/data): MD17 ethanol frames 0..1799 train the
ethanol models (950 train / 50 val), frames 1800..1999 are held back, one consecutive block
that every benchmark steps along; OC20: the 20 bundled DFT relaxations, split by system
(16 train / 2 val / 2 test). Results: `--out` (default benchmarks/results/), <script>.json
and .png written atomically. Scratch (LMDBs, derived checkpoints, cached tight solves):
benchmarks/work/ (git-ignored). Timings: one process, models interleaved frame by frame,
ratios of medians with the load average beside them (the machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).parents[1]
BENCH = Path(__file__).parent
WORK = BENCH / "work"
RESULTS = BENCH / "results"
TEST_DATA = REPO / "tests" / "data"
CONFIG_INCLUDES = REPO / "configs" / "includes"
KCAL_PER_EV = 23.060548
N_TRAINVAL_FRAMES = 1800  # ethanol frames >= this are the held-back consecutive test block
LABELS = {
    "ethanol_deq1": "DEQ1",
    "ethanol_eqv2_1l": "EquiformerV2-1",
    "ethanol_eqv2_4l": "EquiformerV2-4",
    "ethanol_eqv2_8l": "EquiformerV2-8",
    "oc20_deq1": "DEQ1",
    "oc20_eqv2_1l": "EquiformerV2-1",
    "oc20_eqv2_4l": "EquiformerV2-4",
    "oc20_eqv2_8l": "EquiformerV2-8",
}
SYSTEMS = {  # system -> (its DEQ, its explicit EquiformerV2-1/4/8)
    "ethanol": ("ethanol_deq1", ("ethanol_eqv2_1l", "ethanol_eqv2_4l", "ethanol_eqv2_8l")),
    "oc20": ("oc20_deq1", ("oc20_eqv2_1l", "oc20_eqv2_4l", "oc20_eqv2_8l")),
}
DERIVED = {
    "ethanol_eqv2_1l": ("ethanol_eqv2_4l", 1),
    "oc20_eqv2_1l": ("oc20_eqv2_4l", 1),
    "oc20_eqv2_8l": ("oc20_eqv2_4l", 8),
}
SAFE_MEAN, SAFE_MAX, TIGHT_MEAN = 0.01, 0.03, 0.003  # force error vs the exact fixed point


# ---- results --------------------------------------------------------------------------


def parser(doc: str, systems: bool = False) -> argparse.ArgumentParser:
    """A script's parser with the suite's common options (`systems`: the chains' options)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--checkpoints", nargs="*", default=[], metavar="NAME=PATH", help="replace reference models")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    if systems:
        p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
        p.add_argument("--frames", type=int, default=40, help="ethanol frames measured (one more starts each chain)")
        p.add_argument("--oc20-frames", type=int, default=20, help="OC20 slab frames measured")
    return p


def frames_of(args) -> dict[str, int]:
    return {system: args.frames if system == "ethanol" else args.oc20_frames for system in args.systems}


def start(args) -> Models:
    torch.set_num_threads(args.threads)
    args.out = Path(args.out or RESULTS)
    return Models(args.checkpoints)


def command(module: str, argv) -> str:
    return f"python -m benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:])


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_json(name: str, payload: dict, out: Path | None = None) -> Path:
    from fairchem_deq.outputs import write_text_atomic

    return write_text_atomic(Path(out or RESULTS) / f"{name}.json", json.dumps(payload, indent=2))


def read_json(name: str, out: Path | None = None) -> dict:
    """<out>/<name>.json, or {} before its first run."""
    path = Path(out or RESULTS) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str, out: Path | None = None) -> Path:
    from fairchem_deq.outputs import atomic_file

    path = Path(out or RESULTS) / f"{name}.png"
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


# ---- data -----------------------------------------------------------------------------


def shared_data() -> Path:
    return Path(os.environ.get("FAIRCHEM_DEQ_DATA", REPO.parent / "shared" / "data"))


def ethanol_npz() -> Path:
    return shared_data() / "md17_ethanol_2000.npz"


def ethanol_frames(start: int = 0, stop: int | None = None) -> list:
    """MD17 ethanol frames as ASE Atoms; info: system, frame, energy_ev, forces_ev (DFT, eV)."""
    from ase import Atoms

    d = dict(np.load(ethanol_npz()))  # (an NpzFile reads an array from the zip at every access)
    frames = []
    for i in range(start, len(d["R"]) if stop is None else min(stop, len(d["R"]))):
        atoms = Atoms(numbers=d["z"], positions=d["R"][i], pbc=False)
        energy = float(np.ravel(d["E"][i])[0]) / KCAL_PER_EV
        atoms.info.update(system="md17_ethanol", frame=i, energy_ev=energy, forces_ev=d["F"][i] / KCAL_PER_EV)
        frames.append(atoms)
    return frames


def held_out_frames(n: int | None = None) -> list:
    """The first `n` (all) held-back consecutive ethanol frames 1800.."""
    return ethanol_frames(N_TRAINVAL_FRAMES, None if n is None else N_TRAINVAL_FRAMES + n)


def prepare_data() -> Path:
    """LMDB splits of ethanol frames 0..1799 (once): 950 train / 50 val, random, seed 0."""
    from fairchem_deq.data.convert import convert

    lmdb = WORK / "md17_ethanol"
    if (lmdb / "train").is_dir():
        return lmdb
    WORK.mkdir(parents=True, exist_ok=True)
    d = dict(np.load(ethanol_npz()))
    head = WORK / "md17_ethanol_first1800.npz"
    per_frame = {k for k, v in d.items() if np.ndim(v) and len(v) == len(d["R"])}
    np.savez(head, **{k: (v[:N_TRAINVAL_FRAMES] if k in per_frame else v) for k, v in d.items()})
    convert(head, lmdb, n_train=950, n_val=50, seed=0, progress=False)
    return lmdb


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


def oc20_trajectories() -> list[Path]:
    return sorted((shared_data() / "oc20_relax_trajs").glob("*.traj"))


def prepare_oc20() -> Path:
    """LMDB splits of the 20 trajectories by system (once): 16 train / 2 val / 2 test."""
    from fairchem_deq.data.convert import convert

    lmdb = WORK / "oc20_relax"
    if not (lmdb / "train").is_dir():
        WORK.mkdir(parents=True, exist_ok=True)
        convert(
            shared_data() / "oc20_relax_trajs",
            lmdb,
            split="paper",
            n_train=16,
            n_val=2,
            split_by="system",
            oc20_tags=True,
            progress=False,
        )
    return lmdb


def oc20_systems(splits=("test",)) -> tuple[list[Path], bool]:
    """(trajectories of the systems in `splits` of the OC20 conversion, True), or (every
    bundled trajectory, False) where this machine has no conversion record."""
    record = WORK / "oc20_relax" / "conversion.json"
    if not record.is_file():
        return oc20_trajectories(), False
    sids = {str(s) for split in splits for s in json.loads(record.read_text()).get("split_sids", {}).get(split, [])}
    return [p for p in oc20_trajectories() if p.stem.removeprefix("random") in sids], True


def oc20_frames(path: Path, n: int | None = None) -> list:
    """The first `n` (all) optimiser steps of a DFT relaxation; info as `ethanol_frames`."""
    from ase.io import read

    frames = read(path, index=":" if n is None else f":{n}")
    for i, atoms in enumerate(frames):
        atoms.info.update(
            system=path.stem, frame=i, energy_ev=atoms.get_potential_energy(), forces_ev=atoms.get_forces()
        )
    return frames


def oc20_slab_frames(n: int, min_atoms: int = 100) -> list:
    """`n` consecutive optimiser steps of the largest held-out OC20 system with >= min_atoms
    (else of the largest bundled one); info["held_out"] says which."""
    from ase.io import read

    paths, held_out = oc20_systems()
    sizes = {p: len(read(p, index=0)) for p in oc20_trajectories()}
    large = [p for p in paths if sizes[p] >= min_atoms]
    frames = oc20_frames(max(large or sizes, key=sizes.get), n)
    for atoms in frames:
        atoms.info["held_out"] = bool(large) and held_out
    return frames


def system_frames(system: str, n: int) -> list:
    return held_out_frames(n) if system == "ethanol" else oc20_slab_frames(n)


def free_atoms(atoms) -> np.ndarray:
    """Mask of the atoms no FixAtoms constraint holds (OC20 scores forces on those)."""
    from ase.constraints import FixAtoms

    free = np.ones(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            free[constraint.index] = False
    return free


def rel_error(forces, reference) -> float:
    """||F - F_ref|| / ||F_ref||."""
    return float(np.linalg.norm(forces - reference) / np.linalg.norm(reference))


# ---- training runs (benchmarks.reference_models) --------------------------------------


def _cpu_seconds(pid: int) -> float:
    """user+sys CPU time of a running process (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _checkpoint_complete(path: Path) -> bool:
    """False while torch.save is writing `path` (the zip's central directory comes last)."""
    import zipfile

    return not path.exists() or zipfile.is_zipfile(path)


def fairchem_train(config: str, name: str) -> list[str]:
    """fairchem's CLI training `config` (relative to the repository) as run `name`, on the CPU."""
    return [
        str(Path(sys.executable).parent / "fairchem"),
        *("--mode", "train", "--config-yml", str(REPO / config), "--cpu", "--run-dir", str(WORK / "runs")),
        *("--identifier", name, "--timestamp-id", name, "--print-every", "5"),
    ]


# ---- models ---------------------------------------------------------------------------


def load_calculator(path: Path, **kwargs):
    """`DEQCalculator(path, cpu=True, seed=0, **kwargs)` without fairchem's config dump."""
    from fairchem_deq import DEQCalculator

    with quiet(logging.INFO):
        return DEQCalculator(path, cpu=True, seed=0, **kwargs)


class Models:
    """Where each model name's checkpoint is: `--checkpoints NAME=PATH` where given, else the
    shipped reference model (checksum verified), or for DERIVED names a checkpoint derived
    from their source model."""

    def __init__(self, specs=()):
        self.overrides = dict(spec.split("=", 1) for spec in specs)

    def path(self, name: str) -> Path:
        if name in self.overrides:
            return Path(self.overrides[name])
        if name in DERIVED:
            source, layers = DERIVED[name]
            return derived_checkpoint(self.path(source), layers)
        from fairchem_deq.reference import reference_checkpoint

        return reference_checkpoint(name)

    def calculator(self, name: str, **kwargs):
        return load_calculator(self.path(name), **kwargs)


def derived_checkpoint(source: Path, num_layers: int) -> Path:
    """An explicit EquiformerV2 checkpoint of `num_layers` blocks made from `source`'s (block
    k takes the weights of source block k mod L; raw weights, no EMA, no optimizer state), for
    timing EquiformerV2 depths that have no reference model. Kept in WORK/derived/."""
    from fairchem_deq.reference import sha256

    out = WORK / "derived" / f"{source.stem}_{sha256(source)[:12]}_{num_layers}l.pt"
    if out.is_file():
        return out
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    layers = checkpoint["config"]["model"]["backbone"]["num_layers"]
    block = re.compile(r"^((?:module\.)?backbone\.blocks\.)(\d+)(\..+)$")
    state, blocks = {}, {}
    for key, value in checkpoint["state_dict"].items():
        m = block.match(key)
        if m:
            blocks.setdefault(int(m[2]), []).append((m[1], m[3], value))
        else:
            state[key] = value
    for k in range(num_layers):
        state.update({f"{pre}{k}{post}": value.clone() for pre, post, value in blocks[k % layers]})
    checkpoint.update(state_dict=state, ema=None, optimizer=None, scheduler=None)
    checkpoint["config"]["model"]["backbone"]["num_layers"] = num_layers
    from fairchem_deq.outputs import atomic_file

    with atomic_file(out) as tmp:
        torch.save(checkpoint, tmp)
    return out


@dataclass(frozen=True)
class Setting:
    """One way of solving, written "stop_mode/tol/predictor/solver[/propagation]" (e.g.
    "rel/1e-2/aspc/broyden_reuse", "rel/1e-2/linear/anderson/one_step"): the stop rule and
    tolerance of every solve, the warm start (`DEQCalculator(warm_start=)`; "cold": every
    frame from zero), the solver, and the fixed-budget propagation of warm steps
    (`DEQCalculator(propagation=)`; "solve", the default: a converged solve)."""

    stop_mode: str
    tol: float
    predictor: str
    solver: str
    propagation: str = "solve"

    @classmethod
    def parse(cls, spec: str) -> Setting:
        stop_mode, tol, predictor, solver, *propagation = spec.split("/")
        return cls(stop_mode, float(tol), predictor, solver, *propagation)

    @property
    def label(self) -> str:
        label = f"{self.stop_mode}/{self.tol:g}/{self.predictor}/{self.solver}"
        return label if self.propagation == "solve" else f"{label}/{self.propagation}"

    def options(self, max_iter: int = 40) -> dict:
        """The options of a DEQCalculator or DEQTorchSimModel solving this way."""
        cold = self.predictor == "cold"
        options = {"tol": self.tol, "max_iter": max_iter, "reuse": not cold, "solver": self.solver}
        options["propagation"] = None if cold or self.propagation == "solve" else self.propagation
        return options | {"warm_start": "last" if cold else self.predictor}

    def stopping(self, model):
        """`model` (a DEQCalculator or DEQTorchSimModel) with this stop rule in its solves."""
        for phase in ("eval_cold", "eval_warm"):
            model.model.backbone.set_solver_settings(phase, stop_mode=self.stop_mode)
        return model

    def calculator(self, models: Models, name: str, max_iter: int = 40):
        """A fresh DEQCalculator of model `name` solving this way (its own warm chain)."""
        return self.stopping(models.calculator(name, **self.options(max_iter)))


class TightForces:
    """The forces of the exact fixed point, as a tight cold solve of each frame gives them
    (rel 1e-6, up to 200 iterations), cached per checkpoint and frame in WORK/tight/."""

    TOL, MAX_ITER = 1e-6, 200

    def __init__(self, path: Path):
        from fairchem_deq.reference import sha256

        self.path, self.calc = path, None
        self.file = WORK / "tight" / f"{sha256(path)[:16]}_rel{self.TOL:g}_{self.MAX_ITER}.npz"
        self.cache = dict(np.load(self.file)) if self.file.is_file() else {}

    def __call__(self, atoms) -> np.ndarray:
        key = f"{atoms.info['system']}:{atoms.info['frame']}"
        if key not in self.cache:
            if self.calc is None:
                self.calc = load_calculator(self.path, reuse=False, tol=self.TOL, max_iter=self.MAX_ITER)
            self.calc.calculate(atoms)
            self.cache[key] = self.calc.results["forces"].copy()
            self.cache[key + ":converged"] = np.array(self.calc.last_solver_stats["converged"])
        return self.cache[key]

    def unconverged(self) -> int:
        return sum(1 for k, v in self.cache.items() if k.endswith(":converged") and not v)

    def save(self) -> None:
        from fairchem_deq.outputs import atomic_file

        with atomic_file(self.file) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **self.cache)


class Trained:
    """benchmarks.reference_models' loader (test errors, export): a checkpoint through
    DEQCalculator, every frame solved from zero; `model` holds the chosen weights."""

    def __init__(self, name: str, path: Path, ema: bool = False):
        self.calc = load_calculator(path, reuse=False, weights="ema" if ema else "raw")
        self.name, self.weights, self.model = name, self.calc.weights, self.calc.trainer._unwrapped_model

    def predict(self, atoms):
        """-> (energy eV, forces eV/Å, None, solver statistics)."""
        self.calc.calculate(atoms)
        return self.calc.results["energy"], self.calc.results["forces"], None, dict(self.calc.last_solver_stats)


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- timing ---------------------------------------------------------------------------


def step_along(calcs: dict, frames: list, record=None) -> dict[str, list[float]]:
    """Every calculator takes one step per frame, interleaved frame by frame (the order turns
    each frame, so none always goes first). frames[0] starts every chain and is not timed;
    after each later step `record(label, calc, atoms)`. -> seconds per step and label."""
    labels, times = list(calcs), {label: [] for label in calcs}
    for i, atoms in enumerate(frames):
        for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
            t0 = time.perf_counter()
            calcs[label].calculate(atoms)
            if i:
                times[label].append(time.perf_counter() - t0)
                if record is not None:
                    record(label, calcs[label], atoms)
    return times


@contextlib.contextmanager
def quiet(level: int = logging.WARNING):
    """No log records at or below `level` (capped solves warn on every call by design)."""
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


# ---- fresh models (benchmarks.gpu_check) -----------------------------------------------

# The backbone hyper-parameters (graph, widths, norm, dropout) taken from the shipped configs.
WIDTH_KEYS = (
    *("use_pbc", "otf_graph", "max_neighbors", "max_radius", "max_num_elements", "sphere_channels"),
    *("attn_hidden_channels", "num_heads", "attn_alpha_channels", "attn_value_channels", "ffn_hidden_channels"),
    *("norm_type", "lmax_list", "mmax_list", "grid_resolution", "num_sphere_samples", "edge_channels"),
    *("alpha_drop", "drop_path_rate"),
)


def config_width(*includes: str) -> dict:
    """WIDTH_KEYS of the backbone that configs/includes/<include>... set (later files win)."""
    backbone = {}
    for name in includes:
        backbone.update(yaml.safe_load((CONFIG_INCLUDES / name).read_text())["model"]["backbone"])
    return {key: backbone[key] for key in WIDTH_KEYS}


MD_MINI = config_width("md/base.yml")
OC20_200K = config_width("oc20/base.yml", "oc20/deq1.yml")


def build_model(width: dict, num_layers: int, deq: dict | None = None, seed: int = 0):
    """Fresh hydra model: DEQ backbone when `deq` is given, else fairchem's explicit EquiformerV2."""
    from fairchem.core.models.base import HydraModel

    import fairchem_deq  # noqa: F401

    torch.manual_seed(seed)
    kind = "equiformer_v2_backbone" if deq is None else "deq_equiformer_v2_backbone"
    backbone = dict(width, model=kind, num_layers=num_layers, **({} if deq is None else {"deq": deq}))
    heads = {"energy": {"module": "equiformerV2_scalar_head"}, "forces": {"module": "equiformerV2_vector_head"}}
    model = HydraModel(backbone=backbone, heads=heads, otf_graph=True)
    model.backbone.direct_forces = True  # forces from the head: no autograd in inference
    return model
