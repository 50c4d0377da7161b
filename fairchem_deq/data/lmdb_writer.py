"""Writer: ase.Atoms frames -> one fairchem LMDB file + metadata.npz, and atomic output dirs.

The LMDB matches what fairchem's `LmdbDataset` reads: keys "0".."n-1" (ascii), values pickled
torch_geometric `Data`, plus "length" -> pickled int. `metadata.npz` holds `natoms` (int32, one
per entry, in key order), the file `make_lmdb_sizes` writes, so `load_balancing: atoms` works.
`atomic_directory` makes a conversion all-or-nothing: everything is written into a temporary
sibling and renamed into place only after it all succeeded.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

import lmdb
import numpy as np
import torch
from ase import Atoms

from fairchem_deq.outputs import atomic_directory  # noqa: F401  (re-exported: fairchem_deq.data)

LMDB_NAME = "data.lmdb"
METADATA_NAME = "metadata.npz"
_INITIAL_MAP_SIZE = 1 << 26  # 64 MiB; doubled whenever the map is full
_COMMIT_EVERY = 1000


def make_atoms_to_graphs():
    """fairchem's AtomsToGraphs with energy, forces, fixed and pbc, no precomputed edges."""
    from fairchem.core.preprocessing import AtomsToGraphs

    return AtomsToGraphs(
        r_energy=True, r_forces=True, r_fixed=True, r_edges=False, r_distances=False, r_pbc=True
    )


def atoms_to_data(atoms: Atoms, sid: int, fid: int, a2g=None):
    """One frame -> torch_geometric Data with sid/fid LongTensors [1], pbc as bool [1, 3] and
    `id` "<sid>_<fid>" (the S2EF naming; fairchem's LmdbDataset keeps it when `src` is the
    data.lmdb file and replaces it by "<file index>_<entry index>" when `src` is a folder).

    pbc is stored [1, 3] (like cell [1, 3, 3]) so that a batch holds [B, 3], which is what
    fairchem's `radius_graph_pbc` indexes; AtomsToGraphs alone would give [3].
    """
    data = (a2g or make_atoms_to_graphs()).convert(atoms)
    data.sid = torch.tensor([sid], dtype=torch.long)
    data.fid = torch.tensor([fid], dtype=torch.long)
    data.pbc = data.pbc.view(1, 3)
    data.id = f"{sid}_{fid}"
    return data


def write_lmdb(path: str | Path, data_objects: Iterable) -> np.ndarray:
    """Write Data objects under keys "0".."n-1" plus "length"; returns natoms per entry.

    The map grows by doubling when full, so no size has to be guessed up front. No lock file is
    left behind (fairchem opens LMDBs read-only with lock=False).
    """
    path = Path(path)
    env = lmdb.open(
        str(path), subdir=False, map_size=_INITIAL_MAP_SIZE, meminit=False, map_async=True, lock=False
    )
    natoms: list[int] = []
    pending: list[tuple[bytes, bytes]] = []
    try:
        for index, data in enumerate(data_objects):
            pending.append((f"{index}".encode("ascii"), pickle.dumps(data, protocol=-1)))
            natoms.append(int(data.natoms))
            if len(pending) >= _COMMIT_EVERY:
                _put_all(env, pending)
                pending.clear()
        pending.append(("length".encode("ascii"), pickle.dumps(len(natoms), protocol=-1)))
        _put_all(env, pending)
        env.sync(True)
    finally:
        env.close()
    return np.asarray(natoms, dtype=np.int32)


def _put_all(env: lmdb.Environment, items: list[tuple[bytes, bytes]]) -> None:
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:  # the transaction was aborted: grow the map and redo it
            env.set_mapsize(env.info()["map_size"] * 2)


def write_metadata(path: str | Path, natoms: np.ndarray, **per_entry: np.ndarray) -> None:
    """metadata.npz with `natoms` (int32), the format of fairchem's make_lmdb_sizes, plus
    optional per-entry arrays (the converter adds `sid` and `fid`, so trajectory-ordered
    evaluation needs no pass over the data)."""
    with open(path, "wb") as handle:  # np.savez would append .npz to a name without it
        np.savez(handle, natoms=np.asarray(natoms, dtype=np.int32), **per_entry)
