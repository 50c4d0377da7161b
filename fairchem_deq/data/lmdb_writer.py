"""Writer: ase.Atoms frames -> one fairchem LMDB file + metadata.npz.

The LMDB matches what fairchem's `LmdbDataset` reads: keys "0".."n-1" (ascii), values pickled
torch_geometric `Data`, plus "length" -> pickled int. `metadata.npz` holds `natoms` (int32, one
per entry, in key order), the file `make_lmdb_sizes` writes, so `load_balancing: atoms` works.
Both writers write in place: they fill a dataset folder that is published whole, so call them
inside fairchem_deq.outputs.atomic_directory (as `convert` does), never on a final path. A
per-file rename inside that temporary folder would add nothing.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path

import lmdb
import numpy as np

LMDB_NAME = "data.lmdb"
METADATA_NAME = "metadata.npz"
_INITIAL_MAP_SIZE = 1 << 26  # 64 MiB; doubled whenever the map is full
_COMMIT_EVERY = 1000


def write_lmdb(path: str | Path, data_objects: Iterable) -> np.ndarray:
    """Write Data objects under keys "0".."n-1" plus "length"; returns natoms per entry.

    The map grows by doubling when full, so no size has to be guessed up front. No lock file is
    left behind (fairchem opens LMDBs read-only with lock=False).
    """
    path = Path(path)
    env = lmdb.open(str(path), subdir=False, map_size=_INITIAL_MAP_SIZE, meminit=False, map_async=True, lock=False)
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
