"""The sid and fid of fairchem LMDB items, read without unpickling the rest of each item.

fairchem's `LmdbDataset` stores every item as a pickled torch_geometric `Data`. Unpickling
rebuilds all its tensors, and torch pickles each tensor's storage as a `torch.save` blob that
is loaded through `torch.load`: about 0.6 ms an item for OC20-sized items without edges and
1 ms with them, nearly all of it for tensors that ordering by (sid, fid) does not need.
`sid_fid_reader` unpickles the stored value with those calls deferred (`_Deferred`) and makes
only the sid's and the fid's (about 0.2 ms an item). It reads what `LmdbDataset.__getitem__`
reads, so it serves only datasets whose items are the stored values unchanged.
"""

from __future__ import annotations

import bisect
import io
import pickle
from collections.abc import Callable

import numpy as np
import torch

# how torch pickles a tensor: _rebuild_tensor_v2(storage, ...), storage = _load_from_bytes(blob)
_DEFERRED = {("torch._utils", "_rebuild_tensor_v2"), ("torch.storage", "_load_from_bytes")}


class _Deferred:
    """A call in the pickle stream, made only when `_value` asks for its result."""

    def __init__(self, fn: Callable, args: tuple):
        self.fn, self.args = fn, args


class _Deferring:
    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args):
        return _Deferred(self.fn, args)


class _DeferringUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = super().find_class(module, name)
        return _Deferring(found) if (module, name) in _DEFERRED else found


def _value(obj):
    if isinstance(obj, _Deferred):
        return obj.fn(*(_value(a) for a in obj.args))
    return obj


def stored_sid_fid(raw: bytes) -> tuple:
    """(sid, fid) of one stored item (torch_geometric 2 or 1 layout); None for a missing one."""
    data = _DeferringUnpickler(io.BytesIO(raw)).load()
    store = data.__dict__.get("_store")  # torch_geometric 1 kept the attributes in __dict__
    mapping = data.__dict__ if store is None else store._mapping
    return _value(mapping.get("sid")), _value(mapping.get("fid"))


def sid_fid_reader(dataset) -> Callable[[int], tuple] | None:
    """position -> (sid, fid) of `dataset[position]` read from the stored value, for fairchem's
    LmdbDataset or (nested) Subsets of one; None for any other dataset and for one with
    `key_mapping` or `transforms` (its items are not the stored values)."""
    from fairchem.core.datasets.lmdb_dataset import LmdbDataset

    index = np.arange(len(dataset))
    base = dataset
    while isinstance(base, torch.utils.data.Subset):
        index = np.asarray(base.indices)[index]
        base = base.dataset
    if type(base) is not LmdbDataset or base.key_mapping or base.transforms.config:
        return None
    index = np.asarray(base.indices)[index]  # LmdbDataset's own shard selection

    # the lookup of LmdbDataset.__getitem__ (fairchem-core 1.10): one file, or a folder of them
    def raw(idx: int) -> bytes:
        if base.path.is_file():
            return base.env.begin().get(f"{base._keys[idx]}".encode("ascii"))
        db = bisect.bisect(base._keylen_cumulative, idx)
        el = idx - (base._keylen_cumulative[db - 1] if db else 0)
        return base.envs[db].begin().get(f"{base._keys[db][el]}".encode("ascii"))

    return lambda position: stored_sid_fid(raw(int(index[position])))
