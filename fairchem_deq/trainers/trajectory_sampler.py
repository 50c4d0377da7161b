"""Trajectory-ordered evaluation: each frame is solved right after its predecessor.

fairchem's samplers shuffle and balance atoms across ranks, so consecutive frames of a
trajectory land in unrelated batches (or ranks) and a fixed point is never reused. Here
frames are ordered by (sid, fid); a batch holds up to `batch_size` distinct systems, which
step through their frames in lockstep (batch t = frame t of each system). Under DDP whole
systems are dealt to ranks, so a system's frames and its cache entry stay on one rank.
"""

from __future__ import annotations

import logging
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


class TrajectoryBatchSampler(Sampler[list[int]]):
    def __init__(self, sids, fids, batch_size: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        trajectories: dict = defaultdict(list)
        for idx, (sid, fid) in enumerate(zip(sids, fids)):
            trajectories[sid].append((fid, idx))
        systems = sorted(trajectories, key=str)[rank::world_size]
        self.batches: list[list[int]] = []
        for start in range(0, len(systems), batch_size):
            chunk = [[idx for _, idx in sorted(trajectories[s])] for s in systems[start:start + batch_size]]
            for t in range(max(len(c) for c in chunk)):
                self.batches.append([c[t] for c in chunk if t < len(c)])

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
