"""Convert MD17/MD22 npz, extxyz and ASE .traj trajectories into split fairchem LMDBs.

Output layout (one directory per split, each a valid fairchem `src`):

    <out>/
      train/data.lmdb  train/metadata.npz
      val/data.lmdb    val/metadata.npz
      test/data.lmdb   test/metadata.npz     (or all/... with split="none")
      conversion.json                         (inputs, sids, units, split settings, counts,
                                               which systems (sids) are in which split)

Every entry is a torch_geometric Data with pos (Å), cell [1,3,3], pbc [1,3], atomic_numbers,
natoms, tags, fixed, sid [1] (one id per input file), fid [1] (frame index in the file, in time
order), energy and forces. Energies and forces are eV and eV/Å by default (units="ev"); npz
inputs (kcal/mol) are converted, units="kcal/mol" keeps kcal/mol and kcal/mol/Å instead.
Energies are the files' total energies: for OC20 relaxations these are total DFT energies, NOT
the referenced adsorption energies of the official S2EF LMDBs.

Splits (the DEQuiformer paper's protocol, split="paper"): n_train and n_val frames are drawn
at random (numpy default_rng(seed).permutation) from the whole trajectory; the remaining frames
form `test`. Within every split entries are stored in time order (input file order, then fid),
so consecutive entries of `test` are consecutive MD frames. With several input files,
split_by="frame" pools all frames, split_by="system" draws whole files (n_train/n_val count
files). Empty splits are not written. split="test" writes everything to `test` (data for
evaluation only), split="none" everything to `all`.

Elements that occur in val/test but not in train are reported (UnseenElementsWarning, and
`elements_not_in_train` in conversion.json): the model never saw them, and element references
fitted on the training split (configs/includes/oc20) are 0 eV for them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from tqdm import tqdm

from fairchem_deq.command import OutputExistsError, UserError
from fairchem_deq.data.atoms_graphs import atoms_to_data, make_atoms_to_graphs
from fairchem_deq.data.lmdb_writer import LMDB_NAME, METADATA_NAME, write_lmdb, write_metadata
from fairchem_deq.data.oc20_tags import oc20_tags as rebuild_oc20_tags
from fairchem_deq.data.readers import (
    MAX_NUM_ELEMENTS,
    MOLECULE_CELL,
    DatasetFormatError,
    known_suffixes,
    normalize_unit,
    read_frames,
    system_id_from_name,
)
from fairchem_deq.outputs import atomic_directory

SPLIT_MODES = ("paper", "none", "test")
SPLIT_BY = ("frame", "system")
PAPER_SPLITS = ("train", "val", "test")
INFO_NAME = "conversion.json"


class SplitError(ValueError, UserError):
    """The requested split does not fit the data (e.g. n_train + n_val > number of frames)."""


class UnseenElementsWarning(UserWarning):
    """Elements in val/test that the training split does not contain."""


@dataclass
class Trajectory:
    """One input file: its system id and its validated frames (time order)."""

    path: Path
    sid: int
    frames: Sequence


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; a directory expands to its files of a known format (`readers.READERS`:
    .npz/.extxyz/.xyz/.traj), sorted by name."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in known_suffixes())
            if not found:
                raise DatasetFormatError(path, f"directory holds no {known_suffixes()} files")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise DatasetFormatError(path, "no such file or directory")
    if not paths:
        raise ValueError("no input files given")
    return paths


def assign_system_ids(paths: Sequence[Path]) -> list[int]:
    """sid per file: the integer of a `random<sid>.<ext>` name, else the file's index in `paths`.

    If that gives two files the same sid, every file gets its index instead.
    """
    sids = [system_id_from_name(p) for p in paths]
    sids = [index if sid is None else sid for index, sid in enumerate(sids)]
    return sids if len(set(sids)) == len(sids) else list(range(len(paths)))


def paper_split(n: int, n_train: int = 950, n_val: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices 0..n-1 split into train/val (random, seeded) and test (the rest), each sorted."""
    if n_train < 0 or n_val < 0:
        raise SplitError(f"n_train and n_val must be >= 0 (got {n_train}, {n_val})")
    if n_train + n_val > n:
        raise SplitError(f"n_train + n_val = {n_train} + {n_val} = {n_train + n_val} > {n} available")
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }


def plan_splits(
    trajectories: Sequence[Trajectory],
    split: str = "paper",
    n_train: int = 950,
    n_val: int = 50,
    seed: int = 0,
    split_by: str = "frame",
) -> dict[str, list[tuple[int, int]]]:
    """Split name -> list of (trajectory index, fid), in time order; empty splits dropped."""
    frames = [(t, fid) for t, traj in enumerate(trajectories) for fid in range(len(traj.frames))]
    if split == "none":
        return {"all": frames}
    if split == "test":
        return {"test": frames} if frames else {}
    if split_by == "frame":
        try:
            parts = paper_split(len(frames), n_train, n_val, seed)
        except SplitError as exc:
            raise SplitError(f"split by frame: {exc} frames") from exc
        plan = {name: [frames[i] for i in idx] for name, idx in parts.items()}
    else:
        try:
            parts = paper_split(len(trajectories), n_train, n_val, seed)
        except SplitError as exc:
            raise SplitError(f"split by system: {exc} systems (input files)") from exc
        plan = {
            name: [(t, fid) for t in idx for fid in range(len(trajectories[t].frames))] for name, idx in parts.items()
        }
    return {name: entries for name, entries in plan.items() if entries}


def elements_not_in_train(trajectories: Sequence[Trajectory], plan: dict) -> dict[str, list[str]]:
    """Split name -> element symbols it has and `train` lacks ({} without a train split)."""
    if "train" not in plan:
        return {}

    def elements(entries) -> set[int]:
        found: set[int] = set()
        for t in sorted({t for t, _ in entries}):  # a trajectory's species never change
            found.update(int(z) for z in trajectories[t].frames[0].get_atomic_numbers())
        return found

    train = elements(plan["train"])
    unseen = {name: sorted(elements(entries) - train) for name, entries in plan.items() if name != "train"}
    return {name: [chemical_symbols[z] for z in zs] for name, zs in unseen.items() if zs}


def _graph_statistics(trajectories, entries, a2g, sample: int = 1000):
    """Mean atoms and neighbours of a split (evenly spaced sample), at the molecule graph
    (5 Å, 1000 neighbours) for non-periodic frames and OC20's (12 Å, 20) for periodic ones."""
    from fairchem_deq.data.graph_stats import MOLECULE_GRAPH, OC20_GRAPH, graph_statistics, sample_indices

    chosen = [entries[int(i)] for i in sample_indices(len(entries), sample)]
    frames = [trajectories[t].frames[fid] for t, fid in chosen]
    cutoff, cap = OC20_GRAPH if any(a.pbc.any() for a in frames) else MOLECULE_GRAPH
    items = [atoms_to_data(a, trajectories[t].sid, fid, a2g) for a, (t, fid) in zip(frames, chosen)]
    return graph_statistics(items, cutoff, cap)


def convert(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    fmt: str = "auto",
    units: str = "ev",
    split: str = "paper",
    n_train: int = 950,
    n_val: int = 50,
    seed: int = 0,
    split_by: str = "frame",
    oc20_tags: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    molecule_cell: float = MOLECULE_CELL,
    max_num_elements: int = MAX_NUM_ELEMENTS,
) -> dict[str, int]:
    """Convert trajectories into `<out>/<split>/{data.lmdb,metadata.npz}`; returns split -> count.

    All inputs are read and validated first (DatasetFormatError on a bad file, SplitError on an
    impossible split); output is written into `<out>.tmp-<pid>` and renamed to `out` only when
    complete, so a failure or interrupt leaves nothing. `oc20_tags` rebuilds tags from FixAtoms
    (see fairchem_deq.data.oc20_tags); otherwise the files' tags (0 when absent) are kept.
    """
    units = normalize_unit(units)
    if split not in SPLIT_MODES:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLIT_MODES}")
    if split_by not in SPLIT_BY:
        raise ValueError(f"unknown split_by {split_by!r}; choose one of {SPLIT_BY}")
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExistsError(out)

    paths = expand_inputs([inputs] if isinstance(inputs, (str, Path)) else inputs)
    sids = assign_system_ids(paths)
    trajectories = [
        Trajectory(
            path,
            sid,
            read_frames(path, fmt, units=units, molecule_cell=molecule_cell, max_num_elements=max_num_elements),
        )
        for path, sid in zip(paths, sids)
    ]
    plan = plan_splits(trajectories, split, n_train, n_val, seed, split_by)
    unseen = elements_not_in_train(trajectories, plan)
    for name, symbols in unseen.items():
        warnings.warn(
            f"{name} has element(s) {', '.join(symbols)} that no training frame has: the model "
            "never sees them in training, and element references fitted on train are 0 eV for them",
            UnseenElementsWarning,
            stacklevel=2,
        )

    a2g = make_atoms_to_graphs()

    def data_objects(entries, bar):
        for t, fid in entries:
            traj = trajectories[t]
            atoms = traj.frames[fid]
            if oc20_tags:
                atoms.set_tags(rebuild_oc20_tags(atoms))
            yield atoms_to_data(atoms, traj.sid, fid, a2g)
            bar.update(1)

    counts: dict[str, int] = {}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for name, entries in plan.items():
            (tmp / name).mkdir()
            with tqdm(total=len(entries), desc=f"{name}", unit="frame", disable=not progress) as bar:
                natoms = write_lmdb(tmp / name / LMDB_NAME, data_objects(entries, bar))
            write_metadata(
                tmp / name / METADATA_NAME,
                natoms,
                sid=np.asarray([trajectories[t].sid for t, _ in entries], dtype=np.int64),
                fid=np.asarray([fid for _, fid in entries], dtype=np.int64),
            )
            counts[name] = len(natoms)
        info = {
            "inputs": [{"path": str(t.path), "sid": t.sid, "frames": len(t.frames)} for t in trajectories],
            "units": {
                "energy": "eV" if units == "ev" else "kcal/mol",
                "forces": "eV/Å" if units == "ev" else "kcal/mol/Å",
                "positions": "Å",
            },
            "split": split,
            "split_sids": {name: sorted({trajectories[t].sid for t, _ in entries}) for name, entries in plan.items()},
            "elements_not_in_train": unseen,
            "split_by": split_by if split == "paper" else None,
            "n_train": n_train if split == "paper" else None,
            "n_val": n_val if split == "paper" else None,
            "seed": seed if split == "paper" else None,
            "oc20_tags": oc20_tags,
            "counts": counts,
            # EquiformerV2's readout constants of each split (avg_num_nodes, avg_degree) at the
            # graph of the shipped configs: configs set them to `auto` and the trainer
            # measures the training set the same way (fairchem_deq.data.graph_stats)
            "graph_statistics": {
                name: _graph_statistics(trajectories, entries, a2g).as_dict()
                for name, entries in plan.items()
                if entries
            },
        }
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return counts
