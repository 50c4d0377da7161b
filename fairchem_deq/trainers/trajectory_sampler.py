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
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import defaultdict

import numpy as np
from torch.utils.data import Sampler
from tqdm import tqdm


def dataset_sids_fids(dataset) -> tuple[list, np.ndarray]:
    """(sid, fid) of every item: from metadata.npz when it has them, else by reading items.

    fairchem wraps datasets in a (shuffled) Subset whose `_metadata` is the underlying
    dataset's, so metadata arrays are indexed through `dataset.indices`.
    """
    meta = getattr(dataset, "_metadata", None) or {}
    if "sid" in meta and "fid" in meta:
        sids, fids = np.asarray(meta["sid"]), np.asarray(meta["fid"])
        indices = getattr(dataset, "indices", None)
        if indices is not None:
            sids, fids = sids[np.asarray(indices)], fids[np.asarray(indices)]
        if len(sids) == len(dataset):
            return sids.tolist(), fids
    logging.info("Reading sid/fid of %d items to order them by trajectory", len(dataset))
    sids, fids = [], []
    for i in tqdm(range(len(dataset)), desc="trajectory order", disable=len(dataset) < 1000):
        item = dataset[i]
        sid = item.sid
        sids.append(sid.item() if hasattr(sid, "item") else sid)
        fid = getattr(item, "fid", None)
        fids.append(int(fid) if fid is not None else i)
    return sids, np.asarray(fids)


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
        mine = segments[rank::world_size]
        self.batches: list[list[int]] = []
        for start in range(0, len(mine), batch_size):
            chunk = [[idx for _, idx in frames] for _, frames in mine[start : start + batch_size]]
            for t in range(max(len(c) for c in chunk)):
                self.batches.append([c[t] for c in chunk if t < len(c)])

    def segment_key(self, sid, fid) -> tuple:
        """The fixed-point cache key of frame (sid, fid): (sid, segment)."""
        return self._keys.get((sid, int(fid)), (sid, -1))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
