"""Per-system memory of recent fixed points, so the next frame can start from them.

Keyed by system id (`sid`); per system a `FixedPointHistory` of the last fixed points and
their frame ids (`fid`): the warm start is the history's prediction for the next frame
(`warm_start=`: "last" copies the latest fixed point; "linear", "quadratic", "aspc"
extrapolate, see `fairchem_deq.warm_start`; memory grows with the predictor's history
length). A system whose atoms (count, species) changed starts a new history. Bounded: beyond
`max_systems` the least recently used system is evicted. Tensors stay on the device they
were computed on. Under DDP each rank has its own cache of the systems it saw; a miss is
simply a cold start.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from fairchem_deq.warm_start import FixedPointHistory, get_predictor


@dataclass
class CachedFixedPoint:
    history: FixedPointHistory  # fixed points [n_atoms, (lmax+1)^2, C], newest last
    atomic_numbers: torch.Tensor

    @property
    def fid(self):
        return self.history.latest_time

    @property
    def fixed_point(self) -> torch.Tensor:
        return self.history.latest


def _same_atoms(entry: CachedFixedPoint | None, atomic_numbers: torch.Tensor) -> bool:
    """Whether `entry` exists and holds the same atoms (count and species, in order)."""
    return entry is not None and torch.equal(
        entry.atomic_numbers, atomic_numbers.to(entry.atomic_numbers.device))


class FixedPointCache:
    def __init__(self, max_systems: int = 10000, warm_start: str = "last"):
        if max_systems < 1:
            raise ValueError(f"fixed-point cache size must be >= 1, got {max_systems}")
        self.max_systems = int(max_systems)
        self.predictor = get_predictor(warm_start).name
        self._entries: OrderedDict[int, CachedFixedPoint] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def use_predictor(self, warm_start: str) -> None:
        """Switch the warm-start predictor (forgets every history)."""
        self.predictor = get_predictor(warm_start).name
        self.clear()

    def get(self, sid, atomic_numbers: torch.Tensor) -> CachedFixedPoint | None:
        """The entry for `sid` if it describes the same atoms (count and species), else None."""
        entry = self._entries.get(sid)
        if not _same_atoms(entry, atomic_numbers):
            self.misses += 1
            return None
        self._entries.move_to_end(sid)
        self.hits += 1
        return entry

    def put(self, sid, fid: int | None, fixed_point: torch.Tensor, atomic_numbers: torch.Tensor) -> None:
        """Adds a fixed point to `sid`'s history (fid None or < 0: unknown, taken as the next frame)."""
        entry = self._entries.get(sid)
        if not _same_atoms(entry, atomic_numbers):
            entry = self._entries[sid] = CachedFixedPoint(FixedPointHistory(self.predictor), atomic_numbers.detach())
        entry.history.push(fixed_point, _frame_id(fid))
        self._entries.move_to_end(sid)
        while len(self._entries) > self.max_systems:
            self._entries.popitem(last=False)

    def warm_start(self, batch) -> torch.Tensor | None:
        """Initial guess for a whole batch: each system's predicted fixed point, zeros (= cold)
        for misses. Returns None when no structure of the batch has a usable entry.
        """
        parts, any_hit = [], False
        sids = _as_list(batch.sid)
        fids = _fids(batch)
        for i, (start, n) in enumerate(_atom_ranges(batch.natoms)):
            entry = self.get(sids[i], batch.atomic_numbers[start:start + n].long())
            parts.append(entry.history.predict(_frame_id(fids[i] if fids else None)) if entry is not None else None)
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
        fids = _fids(batch)
        for i, (start, n) in enumerate(_atom_ranges(batch.natoms)):
            self.put(sids[i], fids[i] if fids else None, fixed_point[start:start + n],
                     batch.atomic_numbers[start:start + n].long())


def _atom_ranges(natoms: torch.Tensor):
    start = 0
    for n in natoms.tolist():
        yield start, n
        start += n


def _fids(batch) -> list | None:
    return _as_list(batch.fid) if "fid" in batch else None


def _frame_id(fid) -> int | None:
    return None if fid is None or int(fid) < 0 else int(fid)


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)
