"""Every ML relaxation trajectory records at least its initial frame and energy.

fairchem 1.10's batched LBFGS writes a frame only from inside its step loop, and only for
systems not yet converged: a system already below `relaxation_fmax` at step 0 (or a batch
where all are) gets a `<sid>.traj` with no frames. IS2RE submissions read each
trajectory's last frame, so such a file breaks them (StopIteration in fairchem's merge).
`record_initial_frames` writes, after the relaxations, the initial structure with its
predicted energy and forces into every empty trajectory of `task.relax_opt.traj_dir`, the
frame fairchem's optimiser would have written at step 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fairchem.core.common import distutils

from fairchem_deq.outputs import atomic_file


def trajectory_length(path: str | Path) -> int:
    from ase.io.trajectory import Trajectory

    with Trajectory(str(path)) as traj:
        return len(traj)


def empty_trajectories(traj_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(traj_dir).glob("*.traj") if trajectory_length(p) == 0)


def record_initial_frames(trainer) -> list[Path]:
    """Fills the empty trajectories of this run's relaxations (each rank a share of them);
    returns the files this rank wrote."""
    relax_opt = trainer.config["task"].get("relax_opt") or {}
    traj_dir = relax_opt.get("traj_dir")
    dataset = getattr(trainer, "relax_dataset", None)
    if not traj_dir or dataset is None:
        return []
    distutils.synchronize()  # every rank's trajectories are closed and renamed
    empty = empty_trajectories(traj_dir) if Path(traj_dir).is_dir() else []
    mine = empty[distutils.get_rank() :: distutils.get_world_size()]
    if not mine:
        return []
    index = _index_by_sid(dataset, {p.stem for p in mine})
    written = []
    for path in mine:
        if path.stem not in index:
            logging.warning("%s has no frames and its system is not in the relaxation dataset", path)
            continue
        _write_initial_frame(trainer, dataset[index[path.stem]], path)
        written.append(path)
    logging.info("Recorded the initial frame of %d relaxation(s) that needed no step", len(written))
    return written


def _index_by_sid(dataset, wanted: set[str]) -> dict[str, int]:
    from .trajectory_sampler import dataset_sids_fids

    sids, _ = dataset_sids_fids(dataset)
    index = {}
    for i, sid in enumerate(sids):
        key = str(sid)
        if key in wanted and key not in index:
            index[key] = i
    return index


def _write_initial_frame(trainer, data, path: Path) -> None:
    from ase.io.trajectory import Trajectory
    from fairchem.core.common.relaxation.optimizable import OptimizableBatch
    from fairchem.core.datasets.lmdb_dataset import data_list_collater

    batch = data_list_collater([data], otf_graph=True).to(trainer.device)
    ignored = OptimizableBatch.ignored_changes
    if not hasattr(batch, "pbc"):  # as fairchem's ml_relax does for data without pbc
        OptimizableBatch.ignored_changes = {"pbc"}
    try:
        atoms = OptimizableBatch(batch, trainer=trainer).get_atoms_list()[0]
    finally:
        OptimizableBatch.ignored_changes = ignored
    with atomic_file(path) as tmp, Trajectory(str(tmp), mode="w") as traj:
        traj.write(atoms)
