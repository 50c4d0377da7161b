"""Per-system memory of recent fixed points, so the next frame can start from them.

Keyed by system (a `sid`, or `(sid, segment)` when a long trajectory is split into segments
for evaluation); per key a `FixedPointHistory` of the last fixed points and their frame ids
(`fid`): the warm start is the history's prediction for the next frame (`warm_start=`:
"last" copies the latest fixed point; "linear", "quadratic", "aspc" extrapolate, see
`fairchem_deq.reuse.predictors`).

A stored fixed point is reused only where it is a good guess: the same atoms (count and
species, in order) and a structure close to the one it was solved for (every atom within
`max_displacement` Å of its position then, under the minimum image for periodic cells).
Anything else is refused, counted in `refused`, and the system starts a new history.

Beside the newest fixed point an entry may hold the solver's own state from that solve
(`solver_state`, for a solver whose own state is reused between solves, such as the
secant pairs (S, Y) of "broyden_reuse", each [n_atoms, (lmax+1)^2, C, m]); it is handed out with the
prediction (`InitialGuess.solver_state`), replaced by each store (a solve that returned
none leaves none), dropped with the history (other atoms, a refused entry, eviction) and
counted in the memory bound. `keep_solver_state=False` stores none (reuse of the fixed
point only). Likewise an entry may hold the adjoints of the backward passes (`adjoints`, energy-gradient
forces: per atom like the fixed points, a history with the same frame ids and predictor),
whose prediction is where the next frame's backward solve starts (`InitialGuess.adjoint`);
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

from .predictors import FixedPointHistory, get_predictor

# MD steps (0.5 fs: <= 0.03 Å) and optimiser steps (fairchem's LBFGS: <= 0.04 Å, ASE's BFGS:
# <= 0.2 Å) pass; unrelated frames of a molecule move atoms by far more (measurements:
# benchmarks/RESULTS.md, "Reuse displacement bound")
DEFAULT_MAX_DISPLACEMENT = 0.25


@dataclass
class InitialGuess:
    """Where a batch's solve starts: `z0` [n_atoms, (lmax+1)^2, C] holds each warm-started
    structure's predicted fixed point and zeros for the others (None: every structure starts
    cold); `warm` and `refused` [n_structures] say which structures got a cached prediction
    and which had one that was refused (moved beyond the displacement bound).
    `solver_state` (None: no structure has one): the warm structures' cached solver states,
    per atom like z0 with a trailing rank dimension (zeros for the others; ranks padded
    with zero columns in front, the oldest end)."""

    z0: torch.Tensor | None
    warm: torch.Tensor
    refused: torch.Tensor
    solver_state: tuple[torch.Tensor, ...] | None = None
    adjoint: torch.Tensor | None = None  # per atom like z0, zeros where none is cached
    # [n_structures] the contraction factor each warm structure's last solve estimated (NaN:
    # none), the prior of the "error" stop rule before the new solve measures its own
    contraction: torch.Tensor | None = None

    @classmethod
    def cold(cls, num_structures: int) -> InitialGuess:
        none = torch.zeros(num_structures, dtype=torch.bool)
        return cls(None, none, none.clone())


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


def _same_atoms(entry: CachedFixedPoint | None, atomic_numbers: torch.Tensor) -> bool:
    """Whether `entry` exists and holds the same atoms (count and species, in order)."""
    return entry is not None and torch.equal(entry.atomic_numbers, atomic_numbers.to(entry.atomic_numbers.device))


def max_displacement(
    pos: torch.Tensor, ref: torch.Tensor, cell: torch.Tensor | None = None, pbc: torch.Tensor | None = None
) -> float:
    """Largest per-atom |pos - ref| (Å), under the minimum image along periodic cell axes."""
    diff = pos.detach().double() - ref.detach().double().to(pos.device)
    if cell is not None and pbc is not None and bool(torch.as_tensor(pbc).any()):
        cell = cell.detach().double().reshape(3, 3).to(pos.device)
        frac = diff @ torch.linalg.inv(cell)
        periodic = torch.as_tensor(pbc, dtype=torch.bool, device=pos.device).reshape(3)
        frac = torch.where(periodic, frac - torch.round(frac), frac)
        diff = frac @ cell
    return float(diff.norm(dim=1).max()) if len(diff) else 0.0


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

    def _lookup(self, key, atomic_numbers, positions, cell, pbc) -> tuple[CachedFixedPoint | None, bool]:
        """`get`, and whether an entry for the same atoms was refused; counts hits/misses/refusals."""
        entry = self._entries.get(key)
        if not _same_atoms(entry, atomic_numbers):
            self.misses += 1
            return None, False
        if (
            positions is not None
            and entry.positions is not None
            and self.max_displacement is not None
            and max_displacement(positions, entry.positions, cell, pbc) > self.max_displacement
        ):
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
        if not _same_atoms(entry, atomic_numbers):
            self.evict(key)
            entry = self._entries[key] = CachedFixedPoint(
                FixedPointHistory(self.predictor), atomic_numbers.detach().clone()
            )
        entry.history.push(fixed_point.detach().clone(), _frame_id(fid))
        entry.positions = None if positions is None else positions.detach().clone()
        entry.contraction = None if contraction is None else contraction.detach().reshape(()).clone()
        entry.solver_state = _state_copy(solver_state) if self.keep_solver_state else None
        if adjoint is None or not self.keep_adjoint:
            entry.adjoints = None
        else:
            if entry.adjoints is None:
                entry.adjoints = FixedPointHistory(self.predictor)
            entry.adjoints.push(adjoint.detach().clone(), _frame_id(fid))
        self.nbytes -= entry.nbytes
        entry.nbytes = _entry_bytes(entry)
        self.nbytes += entry.nbytes
        self._entries.move_to_end(key)
        while self._entries and (len(self._entries) > self.max_systems or self.nbytes > self.max_bytes):
            self.evict(next(iter(self._entries)))

    def initial_guess(self, batch, keys: Sequence | None = None) -> InitialGuess:
        """Each structure's predicted fixed point (zeros = a cold start for misses and
        refusals), and which structures were warm-started or refused. `keys` default to the
        batch's sids."""
        keys = batch_keys(batch, keys)
        fids = _fids(batch)
        parts, states, adjoints, contractions, refused = [], [], [], [], []
        for i, (start, n) in enumerate(_atom_ranges(batch.natoms)):
            entry, was_refused = self._lookup(
                keys[i],
                batch.atomic_numbers[start : start + n].long(),
                batch.pos[start : start + n],
                *_cell_pbc(batch, i),
            )
            parts.append(entry.history.predict(_frame_id(fids[i] if fids else None)) if entry is not None else None)
            states.append(entry.solver_state if entry is not None else None)
            has_adjoint = entry is not None and entry.adjoints is not None
            adjoints.append(entry.adjoints.predict(_frame_id(fids[i] if fids else None)) if has_adjoint else None)
            contractions.append(entry.contraction if entry is not None else None)
            refused.append(was_refused)
        warm = torch.tensor([p is not None for p in parts], dtype=torch.bool)
        refused = torch.tensor(refused, dtype=torch.bool)
        if not bool(warm.any()):
            return InitialGuess(None, warm, refused)
        sizes = [n for _, n in _atom_ranges(batch.natoms)]
        return InitialGuess(
            _batch_rows(parts, sizes),
            warm,
            refused,
            _batch_state(states, sizes),
            _batch_rows(adjoints, sizes),
            _batch_scalars(contractions),
        )

    def store(
        self,
        batch,
        fixed_point: torch.Tensor,
        keys: Sequence | None = None,
        solver_state: tuple[torch.Tensor, ...] | None = None,
        adjoint: torch.Tensor | None = None,
        contraction: torch.Tensor | None = None,
    ) -> None:
        """Stores each structure's fixed point [n_atoms, ...] and, if given, its solver
        state (tensors [n_atoms, ..., m], per atom like the fixed point), its backward
        adjoint (per atom like the fixed point) and its solve's contraction estimate [n_structures]."""
        keys = batch_keys(batch, keys)
        fids = _fids(batch)
        for i, (start, n) in enumerate(_atom_ranges(batch.natoms)):
            self.put(
                keys[i],
                fids[i] if fids else None,
                fixed_point[start : start + n],
                batch.atomic_numbers[start : start + n].long(),
                batch.pos[start : start + n],
                None if solver_state is None else tuple(t[start : start + n] for t in solver_state),
                None if adjoint is None else adjoint[start : start + n],
                None if contraction is None else contraction[i],
            )


def _state_copy(state: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...] | None:
    """A copy of one structure's solver state without its all-zero (unused) columns (the
    last dimension), in order; None if it has no used column."""
    if state is None:
        return None
    used = torch.stack([(t.detach() != 0).flatten(0, -2).any(dim=0) for t in state]).any(dim=0)
    if not bool(used.any()):
        return None
    return tuple(t.detach()[..., used].clone() for t in state)


def _batch_rows(parts: list, sizes: list[int]) -> torch.Tensor | None:
    """Per-structure tensors [n, ...] (None: none) as one batch tensor, zeros for the
    structures without one; None if no structure has one."""
    template = next((p for p in parts if p is not None), None)
    if template is None:
        return None
    return torch.cat(
        [p if p is not None else template.new_zeros((n, *template.shape[1:])) for p, n in zip(parts, sizes)]
    )


def _batch_scalars(values: list) -> torch.Tensor | None:
    """Per-structure 0-d tensors (None: none) as one [n_structures] tensor, NaN for the
    structures without one; None if no structure has one."""
    template = next((v for v in values if v is not None), None)
    if template is None:
        return None
    return torch.stack([v if v is not None else torch.full_like(template, float("nan")) for v in values])


def _batch_state(states: list, sizes: list[int]) -> tuple[torch.Tensor, ...] | None:
    """Per-structure solver states (None: none) as batch tensors [n_atoms, ..., m], ranks
    padded with zero columns in front (the oldest end) and zeros for structures without
    one; None if no structure has one."""
    template = next((s for s in states if s is not None), None)
    if template is None:
        return None
    rank = max(s[0].shape[-1] for s in states if s is not None)
    out = []
    for k, t in enumerate(template):
        parts = []
        for state, n in zip(states, sizes):
            part = t.new_zeros((n, *t.shape[1:-1], rank))
            if state is not None:
                part[..., rank - state[k].shape[-1] :] = state[k]
            parts.append(part)
        out.append(torch.cat(parts))
    return tuple(out)


def _entry_bytes(entry: CachedFixedPoint) -> int:
    tensors = [*entry.history.points, entry.atomic_numbers, *(entry.solver_state or ())]
    if entry.adjoints is not None:
        tensors += entry.adjoints.points
    if entry.positions is not None:
        tensors.append(entry.positions)
    return sum(t.untyped_storage().nbytes() for t in tensors)


def _cell_pbc(batch, i: int):
    cell = batch.cell[i] if "cell" in batch else None
    pbc = batch.pbc[i] if "pbc" in batch and batch.pbc is not None else None
    return cell, pbc


def _atom_ranges(natoms: torch.Tensor):
    start = 0
    for n in natoms.tolist():
        yield start, n
        start += n


def _fids(batch) -> list | None:
    return _as_list(batch.fid) if "fid" in batch else None


def _frame_id(fid) -> int | None:
    return None if fid is None or int(fid) < 0 else int(fid)


def batch_keys(batch, keys: Sequence | None = None) -> list:
    """The cache keys of a batch's structures: `keys` if given, else the batch's sids."""
    return _as_list(batch.sid) if keys is None else list(keys)


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)
