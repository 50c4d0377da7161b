"""OC20/OC22 leaderboard (EvalAI) submission files, composed by fairchem's own script.

A thin layer over `fairchem.core.scripts.make_submission_file`: it checks each prediction
file before fairchem merges them, so that a truncated or mixed-up file fails here and not
on the leaderboard. What each task expects (fairchem-core 1.10):

    s2ef   one `s2ef_predictions.npz` per test split, from `--mode predict`
           (keys ids "sid_fid", energy, forces of the free atoms, chunk_idx)
    is2rs  one `relaxed_positions.npz` per test split, from `--mode run-relaxations` with
           `task.write_pos: True` (keys ids "sid", pos of all atoms, chunk_idx)
    is2re  one directory of ML relaxation trajectories `<sid>.traj` per test split
           (`task.relax_opt.traj_dir`); the energy of each last frame is submitted

OC20 has four test splits (id, ood_ads, ood_cat, ood_both), OC22 two (id, ood). A real
submission uses a different prediction file (or directory) for every split.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fairchem_deq.command import UserError

SPLITS: dict[str, tuple[str, ...]] = {
    "OC20": ("id", "ood_ads", "ood_cat", "ood_both"),
    "OC22": ("id", "ood"),
}
TASKS = ("s2ef", "is2rs", "is2re")
REQUIRED_KEYS = {
    "s2ef": ("ids", "energy", "forces", "chunk_idx"),
    "is2rs": ("ids", "pos", "chunk_idx"),
}


class SubmissionError(ValueError, UserError):
    """A prediction file (or the set of them) cannot make a valid submission."""


def check_predictions(path: str | Path, task: str = "s2ef") -> dict[str, int]:
    """Validates one prediction file (s2ef/is2rs) or trajectory directory (is2re).

    Returns {"systems": n, "atoms": n} (atoms: rows of forces/pos; 0 for is2re).
    """
    path = Path(path)
    if task not in TASKS:
        raise SubmissionError(f"unknown task {task!r}; choose one of {TASKS}")
    if task == "is2re":
        if not path.is_dir():
            raise SubmissionError(f"{path}: is2re needs a directory of <sid>.traj files")
        trajs = sorted(path.glob("*.traj"))
        if not trajs:
            raise SubmissionError(f"{path}: no .traj files (set task.relax_opt.traj_dir)")
        for traj in trajs:
            check_is2re_trajectory(traj)
        return {"systems": len(trajs), "atoms": 0}
    if not path.is_file():
        raise SubmissionError(f"{path}: no such prediction file")
    with np.load(path, allow_pickle=True) as data:
        missing = [k for k in REQUIRED_KEYS[task] if k not in data.files]
        if missing:
            raise SubmissionError(
                f"{path}: missing key(s) {missing} for {task} (has {sorted(data.files)}); "
                + (
                    "write it with --mode predict"
                    if task == "s2ef"
                    else "write it with --mode run-relaxations and task.write_pos: True"
                )
            )
        ids = data["ids"]
        chunk_idx = np.asarray(data["chunk_idx"])
        rows = data["forces" if task == "s2ef" else "pos"]
        n = len(ids)
        if n == 0:
            raise SubmissionError(f"{path}: no predictions")
        if len(set(ids.tolist())) != n:
            raise SubmissionError(f"{path}: duplicate ids")
        if task == "s2ef":
            bad = [str(i) for i in ids[:10] if "_" not in str(i)]
            if bad:
                raise SubmissionError(f"{path}: S2EF ids must be 'sid_fid', got {bad}")
            if len(data["energy"]) != n:
                raise SubmissionError(f"{path}: {len(data['energy'])} energies for {n} ids")
        # fairchem stores the n - 1 split points of the per-system blocks (np.split style)
        if len(chunk_idx) != n - 1:
            raise SubmissionError(f"{path}: {len(chunk_idx)} chunk_idx entries for {n} ids (expected {n - 1})")
        if n > 1 and (np.any(np.diff(chunk_idx) < 0) or chunk_idx[0] < 0 or chunk_idx[-1] > len(rows)):
            raise SubmissionError(f"{path}: chunk_idx is not a valid split of {len(rows)} rows")
        if rows.ndim != 2 or rows.shape[1] != 3:
            raise SubmissionError(f"{path}: expected [n_atoms, 3] rows, got shape {rows.shape}")
        if not np.all(np.isfinite(rows.astype(np.float64))):
            raise SubmissionError(f"{path}: non-finite values")
        return {"systems": n, "atoms": len(rows)}


def check_is2re_trajectory(path: str | Path) -> float:
    """The energy of the last frame of one ML relaxation trajectory, which IS2RE submits.

    An empty trajectory (fairchem 1.10 writes none for a system already below
    `relaxation_fmax` at step 0) or a last frame without a finite energy is a SubmissionError.
    """
    from ase.io.trajectory import Trajectory

    try:
        with Trajectory(str(path)) as traj:
            n = len(traj)
            atoms = traj[-1] if n else None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise SubmissionError(f"{path}: not a readable ASE trajectory ({type(exc).__name__}: {exc})") from None
    if atoms is None:
        raise SubmissionError(
            f"{path}: the trajectory has no frames (fairchem writes none for a system that needs no "
            "relaxation step); rerun --mode run-relaxations with fairchem-deq's trainer, which records "
            "the initial frame, or delete the file so that the system is relaxed again"
        )
    try:
        energy = float(atoms.get_potential_energy())
    except Exception:  # noqa: BLE001 - no calculator / no energy stored
        energy = float("nan")
    if not np.isfinite(energy):
        raise SubmissionError(f"{path}: the last frame has no finite energy")
    return energy


def make_submission(
    predictions: Mapping[str, str | Path],
    out_path: str | Path,
    *,
    task: str = "s2ef",
    dataset: str = "OC20",
    check: bool = True,
) -> Path:
    """Writes the EvalAI submission `out_path` (.npz) from one file/directory per test split.

    `predictions` maps split name (SPLITS[dataset]) to the split's predictions. The files are
    merged by fairchem's `make_submission_file` (keys `<split>_<key>`, e.g. `id_energy`).
    """
    if dataset not in SPLITS:
        raise SubmissionError(f"unknown dataset {dataset!r}; choose one of {sorted(SPLITS)}")
    splits = SPLITS[dataset]
    missing = [s for s in splits if not predictions.get(s)]
    extra = sorted(set(predictions) - set(splits))
    if missing or extra:
        raise SubmissionError(
            f"{dataset} {task} needs exactly the splits {list(splits)}; missing {missing}, unexpected {extra}"
        )
    if task not in TASKS:
        raise SubmissionError(f"unknown task {task!r}; choose one of {TASKS}")
    if check:
        for split in splits:
            check_predictions(predictions[split], task)

    from fairchem.core.scripts import make_submission_file

    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        out_path = out_path.with_name(out_path.name + ".npz")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # fairchem writes the file in place; write it under a hidden name and rename when complete
    tmp = out_path.with_name(f".{out_path.stem}.partial-{os.getpid()}.npz")
    args = argparse.Namespace(
        id=None,
        ood_ads=None,
        ood_cat=None,
        ood_both=None,
        ood=None,
        out_path=str(tmp),
        is2re_relaxations=task == "is2re",
        hybrid=False,
        dataset=dataset,
    )
    for split in splits:
        setattr(args, split, str(predictions[split]))
    try:
        try:
            make_submission_file.main(args)
        except StopIteration:  # ase.io.read of an empty trajectory, inside fairchem's merge
            raise SubmissionError(
                "an is2re trajectory has no frames; check_predictions (the checks that --no-check skips) names it"
            ) from None
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def make_s2ef_submission(id, ood_ads, ood_cat, ood_both, out_path, check: bool = True) -> Path:  # noqa: A002
    """OC20 S2EF submission from the four test splits' `s2ef_predictions.npz`."""
    return make_submission(
        {"id": id, "ood_ads": ood_ads, "ood_cat": ood_cat, "ood_both": ood_both},
        out_path,
        task="s2ef",
        dataset="OC20",
        check=check,
    )
