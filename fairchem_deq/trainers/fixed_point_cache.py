"""Per-system memory of the latest fixed point, so the next frame can start from it.

Keyed by system id (`sid`); holds the frame id (`fid`) it came from. Bounded: beyond
`max_systems` the least recently used system is evicted. Tensors stay on the device they
were computed on. Under DDP each rank has its own cache of the systems it saw; a miss is
simply a cold start.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class CachedFixedPoint:
    fid: int
    fixed_point: torch.Tensor  # [n_atoms, (lmax+1)^2, C]
    atomic_numbers: torch.Tensor


class FixedPointCache:
    def __init__(self, max_systems: int = 10000):
        if max_systems < 1:
            raise ValueError(f"fixed-point cache size must be >= 1, got {max_systems}")
        self.max_systems = int(max_systems)
        self._entries: OrderedDict[int, CachedFixedPoint] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def get(self, sid, atomic_numbers: torch.Tensor) -> CachedFixedPoint | None:
        """The entry for `sid` if it describes the same atoms (count and species), else None."""
        entry = self._entries.get(sid)
        if entry is None or not torch.equal(entry.atomic_numbers, atomic_numbers.to(entry.atomic_numbers.device)):
            self.misses += 1
            return None
        self._entries.move_to_end(sid)
        self.hits += 1
        return entry

    def put(self, sid, fid: int, fixed_point: torch.Tensor, atomic_numbers: torch.Tensor) -> None:
        self._entries[sid] = CachedFixedPoint(int(fid), fixed_point.detach(), atomic_numbers.detach())
        self._entries.move_to_end(sid)
        while len(self._entries) > self.max_systems:
            self._entries.popitem(last=False)

    def warm_start(self, batch) -> torch.Tensor | None:
        """Initial guess for a whole batch: cached fixed points, zeros (= cold) for misses.

        Returns None when no structure of the batch has a usable entry.
        """
        parts, any_hit = [], False
        sids = _as_list(batch.sid)
        for i, (start, n) in enumerate(_atom_ranges(batch.natoms)):
            entry = self.get(sids[i], batch.atomic_numbers[start:start + n].long())
            parts.append(entry.fixed_point if entry is not None else None)
            any_hit |= entry is not None
        if not any_hit:
            return None
        template = next(p for p in parts if p is not None)
        return torch.cat([
            p if p is not None else template.new_zeros((n, *template.shape[1:]))
            for p, (_, n) in zip(parts, _atom_ranges(batch.natoms))
        ])

    def store(self, batch, fixed_point: torch.Tensor) -> None:
        sids = _as_list(batch.sid)
        fids = _as_list(batch.fid) if "fid" in batch else None
        for i, (start, n) in enumerate(_atom_ranges(batch.natoms)):
            fid = fids[i] if fids is not None else -1
            self.put(sids[i], fid, fixed_point[start:start + n],
                     batch.atomic_numbers[start:start + n].long())


def _atom_ranges(natoms: torch.Tensor):
    start = 0
    for n in natoms.tolist():
        yield start, n
        start += n


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)
