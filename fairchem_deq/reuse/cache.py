"""Per-system memory of recent fixed points, so the next frame can start from them.

Keyed by system (a `sid`, or `(sid, segment)` when a long trajectory is split into segments
for evaluation); per key a `FixedPointHistory` of the last fixed points and their frame ids
(`fid`): the warm start is the history's prediction for the next frame (`warm_start=`:
"last" copies the latest fixed point; "linear", "quadratic", "aspc" extrapolate, see
`fairchem_deq.reuse.predictors`).

A stored fixed point is reused only where it is a good guess: the same atoms (count and
species, in order) and a structure close to the one it was solved for (every atom within
`max_displacement` Å of its position then, under the minimum image for periodic cells).
Anything else is refused, counted in `refused`, and the system starts a new history (the
rule: `policy.py`; packing per-structure pieces into batch tensors: `batch_rows.py`).

What goes in and out is the solve's own objects: `store(batch, solution)` takes the
backbone's `DEQSolution`, `warm_start(batch)` returns the batch's `WarmStart`.

Beside the newest fixed point an entry may hold the solver's own state from that solve
(`solver_state`, for a solver whose own state is reused between solves, such as the
secant pairs (S, Y) of "broyden_reuse", each [n_atoms, (lmax+1)^2, C, m]); it is handed out with the
prediction (`WarmStart.solver_state`), replaced by each store (a solve that returned
none leaves none), dropped with the history (other atoms, a refused entry, eviction) and
counted in the memory bound. `keep_solver_state=False` stores none (reuse of the fixed
point only). Likewise an entry may hold the adjoints of the backward passes (`adjoints`, energy-gradient
forces: per atom like the fixed points, a history with the same frame ids and predictor),
whose prediction is where the next frame's backward solve starts (`WarmStart.adjoint`);
`keep_adjoint=False` stores none.

Memory is bounded twice: by the number of systems and by bytes (`max_mb`); beyond either the
least recently used system is evicted. Entries hold copies, never views, so a cached system
does not pin the whole batch tensor it came from. Callers that know a system is finished
(the trajectory sampler passed its last frame, a relaxation batch ended) drop it with
`keep_only`. Tensors stay on the device they were computed on. Under DDP each rank has its
own cache of the systems it saw; a miss is simply a cold start.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch

from fairchem_deq.solve import DEQSolution, WarmStart

from .batch_rows import (
    atom_ranges,
    batch_keys,
    cell_pbc,
    frame_id,
    frame_ids,
    stack_rows,
    stack_scalars,
    stack_states,
    used_columns,
)
from .policy import DEFAULT_MAX_DISPLACEMENT, max_displacement, same_atoms
from .predictors import FixedPointHistory, get_predictor


@dataclass
class CachedFixedPoint:
    history: FixedPointHistory  # fixed points [n_atoms, (lmax+1)^2, C], newest last
    atomic_numbers: torch.Tensor
    positions: torch.Tensor | None = None  # [n_atoms, 3] the newest fixed point was solved for
    # the solver's state from the newest fixed point's solve (each [n_atoms, ..., m]), or None
    solver_state: tuple[torch.Tensor, ...] | None = None
    # the backward solves' adjoints beside the fixed points (same frame ids and predictor)
    adjoints: FixedPointHistory | None = None
    contraction: torch.Tensor | None = None  # 0-d: the newest solve's estimate of q
    nbytes: int = 0

    @property
    def fid(self):
        return self.history.latest_time

    @property
    def fixed_point(self) -> torch.Tensor:
        return self.history.latest

    @property
    def adjoint(self) -> torch.Tensor | None:
        return None if self.adjoints is None else self.adjoints.latest


class FixedPointCache:
    def __init__(
        self,
        max_systems: int = 10000,
        warm_start: str = "last",
        max_mb: float = 1024.0,
        max_displacement: float | None = DEFAULT_MAX_DISPLACEMENT,
        keep_solver_state: bool = True,
        keep_adjoint: bool = True,
    ):
        if max_systems < 1:
            raise ValueError(f"fixed-point cache size must be >= 1, got {max_systems}")
        if not max_mb > 0:
            raise ValueError(f"fixed-point cache_mb must be > 0, got {max_mb}")
        if max_displacement is not None and not max_displacement > 0:
            raise ValueError(f"reuse_max_displacement must be > 0 (Å) or None, got {max_displacement}")
        self.max_systems = int(max_systems)
        self.max_bytes = int(max_mb * 2**20)
        self.max_displacement = max_displacement
        self.predictor = get_predictor(warm_start).name
        self.keep_solver_state = bool(keep_solver_state)
        self.keep_adjoint = bool(keep_adjoint)
        self._entries: OrderedDict[Hashable, CachedFixedPoint] = OrderedDict()
        self.nbytes = 0  # bytes of tensor storage held by the entries
        self.hits = 0
        self.misses = 0
        self.refused = 0  # entries for the same atoms not reused: the structure moved too far

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def reset_counters(self) -> None:
        self.hits = self.misses = self.refused = 0

    def use_predictor(self, warm_start: str) -> None:
        """Switch the warm-start predictor (forgets every history)."""
        self.predictor = get_predictor(warm_start).name
        self.clear()

    def evict(self, key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes

    def keep_only(self, keys: Iterable) -> None:
        """Drops every system not in `keys` (those whose trajectories have ended)."""
        keep = set(keys)
        for key in [k for k in self._entries if k not in keep]:
            self.evict(key)

    def get(
        self,
        key,
        atomic_numbers: torch.Tensor,
        positions: torch.Tensor | None = None,
        cell: torch.Tensor | None = None,
        pbc: torch.Tensor | None = None,
    ) -> CachedFixedPoint | None:
        """The entry for `key` if it holds the same atoms and (given `positions`) the structure
        is within the displacement bound; else None (a refused entry is dropped)."""
        return self._lookup(key, atomic_numbers, positions, cell, pbc)[0]

    def reusable(
        self,
        key,
        atomic_numbers: torch.Tensor,
        positions: torch.Tensor | None = None,
        cell: torch.Tensor | None = None,
        pbc: torch.Tensor | None = None,
    ) -> bool:
        """Whether `get` would return `key`'s entry, without counting, reordering or evicting."""
        entry = self._entries.get(key)
        return same_atoms(entry, atomic_numbers) and not self._too_far(entry, positions, cell, pbc)

    def _too_far(self, entry: CachedFixedPoint, positions, cell, pbc) -> bool:
        return (
            positions is not None
            and entry.positions is not None
            and self.max_displacement is not None
            and max_displacement(positions, entry.positions, cell, pbc) > self.max_displacement
        )

    def _lookup(self, key, atomic_numbers, positions, cell, pbc) -> tuple[CachedFixedPoint | None, bool]:
        """`get`, and whether an entry for the same atoms was refused; counts hits/misses/refusals."""
        entry = self._entries.get(key)
        if not same_atoms(entry, atomic_numbers):
            self.misses += 1
            return None, False
        if self._too_far(entry, positions, cell, pbc):
            self.refused += 1
            self.evict(key)
            return None, True
        self._entries.move_to_end(key)
        self.hits += 1
        return entry, False

    def put(
        self,
        key,
        fid: int | None,
        fixed_point: torch.Tensor,
        atomic_numbers: torch.Tensor,
        positions: torch.Tensor | None = None,
        solver_state: tuple[torch.Tensor, ...] | None = None,
        adjoint: torch.Tensor | None = None,
        contraction: torch.Tensor | None = None,
    ) -> None:
        """Adds a copy of a fixed point to `key`'s history (fid None or < 0: unknown, taken as
        the next frame). `positions` are those it was solved for (the reuse check);
        `solver_state` the solver's state from that solve (replaces the entry's; zero
        columns are not kept); `adjoint` that solve's backward adjoint (replaces the entry's);
        `contraction` (0-d) that solve's estimate of f's contraction factor (replaces the entry's)."""
        entry = self._entries.get(key)
        if not same_atoms(entry, atomic_numbers):
            self.evict(key)
            entry = self._entries[key] = CachedFixedPoint(
                FixedPointHistory(self.predictor), atomic_numbers.detach().clone()
            )
        entry.history.push(fixed_point.detach().clone(), frame_id(fid))
        entry.positions = None if positions is None else positions.detach().clone()
        entry.contraction = None if contraction is None else contraction.detach().reshape(()).clone()
        entry.solver_state = used_columns(solver_state) if self.keep_solver_state else None
        if adjoint is None or not self.keep_adjoint:
            entry.adjoints = None
        else:
            if entry.adjoints is None:
                entry.adjoints = FixedPointHistory(self.predictor)
            entry.adjoints.push(adjoint.detach().clone(), frame_id(fid))
        self.nbytes -= entry.nbytes
        entry.nbytes = _entry_bytes(entry)
        self.nbytes += entry.nbytes
        self._entries.move_to_end(key)
        while self._entries and (len(self._entries) > self.max_systems or self.nbytes > self.max_bytes):
            self.evict(next(iter(self._entries)))

    def warm_start(self, batch, keys: Sequence | None = None) -> WarmStart:
        """Each structure's predicted fixed point (zeros = a cold start for misses and
        refusals), and which structures were warm-started or refused. `keys` default to the
        batch's sids."""
        keys = batch_keys(batch, keys)
        fids = frame_ids(batch)
        parts, states, adjoints, contractions, refused = [], [], [], [], []
        for i, (start, n) in enumerate(atom_ranges(batch.natoms)):
            entry, was_refused = self._lookup(
                keys[i],
                batch.atomic_numbers[start : start + n].long(),
                batch.pos[start : start + n],
                *cell_pbc(batch, i),
            )
            parts.append(entry.history.predict(frame_id(fids[i] if fids else None)) if entry is not None else None)
            states.append(entry.solver_state if entry is not None else None)
            has_adjoint = entry is not None and entry.adjoints is not None
            adjoints.append(entry.adjoints.predict(frame_id(fids[i] if fids else None)) if has_adjoint else None)
            contractions.append(entry.contraction if entry is not None else None)
            refused.append(was_refused)
        warm = torch.tensor([p is not None for p in parts], dtype=torch.bool)
        refused = torch.tensor(refused, dtype=torch.bool)
        if not bool(warm.any()):
            return WarmStart(None, warm, refused)
        sizes = [n for _, n in atom_ranges(batch.natoms)]
        return WarmStart(
            stack_rows(parts, sizes),
            warm,
            refused,
            stack_states(states, sizes),
            stack_rows(adjoints, sizes),
            stack_scalars(contractions),
        )

    def store(self, batch, solution: DEQSolution, keys: Sequence | None = None) -> None:
        """Stores each structure's part of a solve (`solution`, the backbone's "deq" output):
        its fixed point, and where present its solver state, its backward adjoint (once the
        forces were taken) and its contraction estimate."""
        keys = batch_keys(batch, keys)
        fids = frame_ids(batch)
        state = solution.solver_state
        adjoint = None if solution.adjoint is None else solution.adjoint.per_atom()
        contraction = solution.stats.get("contraction")
        for i, (start, n) in enumerate(atom_ranges(batch.natoms)):
            self.put(
                keys[i],
                fids[i] if fids else None,
                solution.history_point[start : start + n],
                batch.atomic_numbers[start : start + n].long(),
                batch.pos[start : start + n],
                None if state is None else tuple(t[start : start + n] for t in state),
                None if adjoint is None else adjoint[start : start + n],
                None if contraction is None else contraction[i],
            )


def _entry_bytes(entry: CachedFixedPoint) -> int:
    tensors = [*entry.history.points, entry.atomic_numbers, *(entry.solver_state or ())]
    if entry.adjoints is not None:
        tensors += entry.adjoints.points
    if entry.positions is not None:
        tensors.append(entry.positions)
    return sum(t.untyped_storage().nbytes() for t in tensors)
