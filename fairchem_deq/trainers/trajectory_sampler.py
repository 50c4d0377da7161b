"""Trajectory-ordered evaluation: each frame is solved right after its predecessor.

fairchem's samplers shuffle and balance atoms across ranks, so consecutive frames of a
trajectory land in unrelated batches (or ranks) and a fixed point is never reused. Here
frames are ordered by (sid, fid) and cut into contiguous segments; a batch holds up to
`batch_size` segments, which step through their frames in lockstep (batch t = frame t of
each segment). Segments are dealt to ranks, so a segment's frames and its cache entry stay
on one rank.

Why segments: an MD17/MD22 dataset is ONE long trajectory (one sid). Dealt whole, it would
leave every rank but one without work (and fairchem's validation then fails on the empty
ranks) and run at batch size 1. Long trajectories are therefore split until there are at
least `batch_size * world_size` segments, of near-equal length; each segment's first frame
is solved cold, the rest warm. The cache key of a frame is `segment_key(sid, fid)`.

Padding: ranks get different numbers of batches whenever segments or their lengths do not
divide evenly, yet fairchem's `validate` all-reduces in every batch's loss (`DDPLoss`), so a
rank that ran out of batches would leave the others waiting forever. Every rank therefore
runs as many batches as the busiest one: a shorter rank appends padding batches, repeats of
its own batches (of rank 0's when it has none) under indices shifted by the dataset length,
which `PaddedDataset` turns into copies of the items flagged `deq_padding`. A batch is all
padding or none; the trainer runs padding batches (forward and loss, so the collectives
match) and leaves them out of metrics, solver statistics, the fixed-point cache and the
predictions (`is_padding`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
from collections import defaultdict

import numpy as np
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm


def dataset_sids_fids(dataset, rank: int = 0, world_size: int = 1, gather=None) -> tuple[list, np.ndarray]:
    """(sid, fid) of every item: from metadata.npz when it has them, else by reading items.
    Worked out once per dataset object and kept on it: later passes read nothing.

    fairchem wraps datasets in a (shuffled) Subset whose `_metadata` is the underlying
    dataset's, so metadata arrays are indexed through `dataset.indices`. Without them (fairchem's
    `make_lmdb_sizes` writes natoms only) items are read, LMDB items cheaply
    (fairchem_deq.data.lmdb_ids); with `gather` (all ranks call together: obj -> [obj of each
    rank]) each of the `world_size` ranks reads every world_size-th item.
    """
    cached = getattr(dataset, _SIDS_FIDS, None)
    if cached is None:
        cached = _metadata_sids_fids(dataset) or _read_sids_fids(dataset, rank, world_size, gather)
        with contextlib.suppress(AttributeError):
            setattr(dataset, _SIDS_FIDS, cached)
    return cached


_SIDS_FIDS = "_deq_sids_fids"  # the attribute that keeps them on the dataset


def _metadata_sids_fids(dataset) -> tuple[list, np.ndarray] | None:
    meta = getattr(dataset, "_metadata", None) or {}
    if "sid" in meta and "fid" in meta:
        sids, fids = np.asarray(meta["sid"]), np.asarray(meta["fid"])
        indices = getattr(dataset, "indices", None)
        if indices is not None:
            sids, fids = sids[np.asarray(indices)], fids[np.asarray(indices)]
        if len(sids) == len(dataset):
            return sids.tolist(), fids
    return None


def _read_sids_fids(dataset, rank: int, world_size: int, gather) -> tuple[list, np.ndarray]:
    from fairchem_deq.data.lmdb_ids import sid_fid_reader

    n = len(dataset)
    mine = range(rank, n, world_size) if gather is not None else range(n)
    logging.info("Reading sid/fid of %d items to order them by trajectory (not in metadata.npz)", len(mine))
    read = sid_fid_reader(dataset)
    if read is not None and len(mine) and not _reads_the_items(read, dataset, mine[0]):
        logging.warning("Could not read sid/fid from the LMDB values alone: reading whole items")
        read = None
    read = read or (lambda i: _item_sid_fid(dataset[i]))
    pairs = [_plain(read(i)) for i in tqdm(mine, desc="trajectory order", disable=len(mine) < 1000)]
    if gather is not None and world_size > 1:
        shares, pairs = gather(pairs), [None] * n
        for r, share in enumerate(shares):
            pairs[r::world_size] = share
    sids = [sid for sid, _ in pairs]
    return sids, np.asarray([i if fid is None else fid for i, (_, fid) in enumerate(pairs)])


def _reads_the_items(read, dataset, i: int) -> bool:
    try:
        return _plain(read(i)) == _plain(_item_sid_fid(dataset[i]))
    except Exception:  # noqa: BLE001  (a pickle layout it does not know: the caller reads whole items)
        return False


def _item_sid_fid(item) -> tuple:
    return item.sid, getattr(item, "fid", None)


def _plain(pair: tuple) -> tuple:
    sid, fid = pair
    return (sid.item() if hasattr(sid, "item") else sid), (None if fid is None else int(fid))


def split_trajectories(trajectories: dict, n_segments: int) -> list[tuple]:
    """Cuts {sid: [(fid, idx), ...] in time order} into contiguous segments until there are at
    least `n_segments` (when there are enough frames), near-equal within a trajectory.
    Returns [((sid, k), [(fid, idx), ...]), ...]."""
    total = sum(len(frames) for frames in trajectories.values())
    target = max(1, math.ceil(total / max(1, n_segments)))
    segments = []
    for sid in sorted(trajectories, key=str):
        frames = trajectories[sid]
        pieces = max(1, math.ceil(len(frames) / target))
        bounds = np.linspace(0, len(frames), pieces + 1).round().astype(int)
        segments += [((sid, k), frames[a:b]) for k, (a, b) in enumerate(itertools.pairwise(bounds))]
    return segments


class TrajectoryBatchSampler(Sampler[list[int]]):
    def __init__(self, sids, fids, batch_size: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        trajectories: dict = defaultdict(list)
        for idx, (sid, fid) in enumerate(zip(sids, fids)):
            trajectories[sid].append((int(fid), idx))
        for frames in trajectories.values():
            frames.sort()
        segments = split_trajectories(trajectories, batch_size * world_size)
        self._keys = {(key[0], fid): key for key, frames in segments for fid, _ in frames}
        # every rank's batches (dealt deterministically), so that each knows the longest
        per_rank = [_lockstep_batches(segments[r::world_size], batch_size) for r in range(world_size)]
        self.batches: list[list[int]] = per_rank[rank]
        self.num_real = len(self.batches)
        repeat = self.batches or per_rank[0]  # without segments: rank 0's (it has some if any rank has)
        offset = len(sids)  # index offset + i: a padding copy of item i (PaddedDataset)
        for k in range(max(map(len, per_rank)) - self.num_real):
            self.batches.append([offset + i for i in repeat[k % len(repeat)]])

    def segment_key(self, sid, fid) -> tuple:
        """The fixed-point cache key of frame (sid, fid): (sid, segment)."""
        return self._keys.get((sid, int(fid)), (sid, -1))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _lockstep_batches(segments: list, batch_size: int) -> list[list[int]]:
    """Groups of `batch_size` segments stepped in lockstep: batch t holds frame t of each."""
    batches = []
    for start in range(0, len(segments), batch_size):
        chunk = [[idx for _, idx in frames] for _, frames in segments[start : start + batch_size]]
        for t in range(max(len(c) for c in chunk)):
            batches.append([c[t] for c in chunk if t < len(c)])
    return batches


class PaddedDataset(Dataset):
    """`dataset` for a TrajectoryBatchSampler: index i < len(dataset) is item i, index
    len(dataset) + i a (shallow) copy of item i flagged `deq_padding`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int):
        n = len(self.dataset)
        if idx < n:
            return self.dataset[idx]
        item = copy.copy(self.dataset[idx - n])  # the dataset's own object stays unflagged
        item.deq_padding = True
        return item


def is_padding(batch) -> bool:
    """Whether `batch` is a padding batch of a TrajectoryBatchSampler (see the module doc)."""
    return "deq_padding" in batch
