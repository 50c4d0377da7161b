"""Broyden's method that reuses the previous solve's Jacobian information: TorchDEQ solver
"broyden_reuse".

Solves g(z) = f(z) - z = 0 per batch row (one row = one structure) with "good" Broyden: the
inverse Jacobian of g is modelled as H = -I + U V^T and after each step (s = dz, y = dg)
the rank-one secant update

    H <- H + (s - H y) (H^T s)^T / (s^T H y)

is applied (TorchDEQ's `broyden`, without its line search). A row that meets the tolerance
stops moving while the others go on.

Reuse: between consecutive MD frames the Jacobian of g changes little, so the next frame's
solve can start from the previous solves' Jacobian information as well as from their fixed
point. What is carried over is not Broyden's matrix itself: good Broyden's H satisfies only
its newest secant condition and is a poor global model (on a 40-dimensional linear test its
H differed from J^-1 by 24x J^-1's norm and reusing it made the first step grow the
residual tenfold). It is the newest `memory` secant pairs (s_k, y_k) of g, which sample the
Jacobian's action (exactly, for a linear g): a solve with pairs (S, Y) starts from the
multisecant model that fits all of them,

    H0 = -I + (S + Y) Y^+        (H0 Y = S; -I on the directions Y does not span),

(the pairs scaled to unit ||y||, Y^+ a pseudo-inverse that ignores nearly dependent
directions), and its own steps' pairs join the ring (the oldest leave). So the first step is
Newton-like in the directions earlier solves explored, plain fixed-point iteration
elsewhere; the Broyden updates of the solve go on top.

The pairs live in a `BroydenState` the caller may hand in (`state=`); the solver updates it
in place and also returns it in `info["solver_state"]`. In place, because a caller may end
the solve from inside f (StructureDEQSolver's early exit raises there): the solver's return
value is then lost, but the state object the caller holds is current (all pairs of completed
steps). `BroydenState.from_rows` / `columns` convert it from / to per-row tensors (S, Y) of
shape [B, *row, m] (oldest pair first; zero columns: no pair), the form a caller pads,
splits per structure and caches.

Safeguard: reused pairs may be wrong for the new frame. During the first `guard_steps`
steps of a row that started from reused pairs, a step whose residual ||g|| grows by more
than `guard_factor` (or turns non-finite) is rejected: the row returns to the point before
the step, its model and pairs are dropped (H = -I: a cold quasi-Newton start at the warm z)
and `state.dropped` marks it.

StructureDEQSolver recognises a solver with a reusable state by its `state_type` attribute
(here `BroydenState`): in evaluation it builds the state from the rows' cached columns,
passes it as `state=` and returns `state.columns(...)` with the solution.
"""

from __future__ import annotations

import torch
from torchdeq.solver import register_solver
from torchdeq.solver.utils import batch_flatten, init_solver_info, solver_stat_from_info

__all__ = ["DEFAULT_MEMORY", "BroydenState", "broyden_reuse_solver"]

DEFAULT_MEMORY = 20  # secant pairs kept per row (the cache holds 2 x memory vectors per structure)
PINV_RTOL = 1e-4  # directions of the unit-scaled Y below this relative singular value are ignored
_EPS = 1e-9  # as TorchDEQ's relative residual


class BroydenState:
    """The newest secant pairs (s, y) of g per row, the part of a solve a later one reuses.

    ss, ys [B, D, M]: pair k in slot k % M per row (a ring: the newest M are held); count
    [B]: pairs written per row; reused [B]: the row started from handed-in pairs that are
    still in use; dropped [B]: the safeguard dropped the row's handed-in pairs."""

    def __init__(self, ss: torch.Tensor, ys: torch.Tensor, count: torch.Tensor, reused: torch.Tensor):
        self.ss, self.ys, self.count, self.reused = ss, ys, count, reused
        self.dropped = torch.zeros_like(reused)

    @property
    def memory(self) -> int:
        return self.ss.shape[-1]

    @classmethod
    def from_rows(
        cls,
        z0: torch.Tensor,
        columns: tuple[torch.Tensor, torch.Tensor] | None = None,
        solver_kwargs: dict | None = None,
    ) -> BroydenState:
        """A state for the rows of z0 [B, *row]: from `columns` (S, Y), each [B, *row, m],
        oldest pair first (the newest `memory` are kept; zero columns: no pair), or empty
        (None). `memory` comes from the solver's kwargs (deq.solver_kwargs), default
        DEFAULT_MEMORY."""
        memory = int((solver_kwargs or {}).get("memory", DEFAULT_MEMORY))
        if memory < 1:
            raise ValueError(f"broyden_reuse memory must be >= 1, got {memory}")
        rows, dim = z0.shape[0], z0[0].numel()
        ss = z0.new_zeros((rows, dim, memory))
        ys = z0.new_zeros((rows, dim, memory))
        count = torch.zeros(rows, dtype=torch.long, device=z0.device)
        reused = torch.zeros(rows, dtype=torch.bool, device=z0.device)
        if columns is not None:
            s, y = (c.detach().reshape(rows, dim, -1).to(device=z0.device, dtype=z0.dtype) for c in columns)
            if s.shape != y.shape:
                raise ValueError(f"solver state S {tuple(s.shape)} and Y {tuple(y.shape)} differ in shape")
            m = min(s.shape[-1], memory)
            if m:
                ss[..., :m], ys[..., :m] = s[..., -m:], y[..., -m:]
                count.fill_(m)
                reused = (ys != 0).any(dim=(1, 2))
        return cls(ss, ys, count, reused)

    def columns(self, row_shape: torch.Size | tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, Y), each [B, *row_shape, M], oldest pair first (empty slots: zero columns in
        front): copies, the form `from_rows` takes back."""
        rows, dim, memory = self.ss.shape
        order = (self.count[:, None] + torch.arange(memory, device=self.ss.device)) % memory
        index = order[:, None, :].expand(rows, dim, memory)
        return tuple(t.gather(2, index).reshape(rows, *row_shape, memory) for t in (self.ss, self.ys))

    def add(self, s: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> None:
        """Appends the pair (s, y) [B, D] of the `rows` [B] (bool) whose pair is usable
        (finite, y != 0), overwriting their oldest once M are held (no host synchronisation:
        every row writes its slot, unusable rows write back what the slot held)."""
        # one reduction each: a non-finite entry of s or y makes s.y non-finite
        ok = rows & torch.isfinite((s * y).sum(dim=1)) & ((y * y).sum(dim=1) > 0)
        slot = (self.count % self.memory)[:, None, None].expand(-1, s.shape[1], 1)
        keep = ~ok[:, None, None]
        for held, new in ((self.ss, s), (self.ys, y)):
            held.scatter_(2, slot, torch.where(keep, held.gather(2, slot), new[..., None]))
        self.count += ok.long()

    def drop(self, rows: torch.Tensor) -> None:
        """Forgets the pairs of `rows` [B] (bool); dropped handed-in pairs are marked."""
        self.ss[rows] = 0.0
        self.ys[rows] = 0.0
        self.count[rows] = 0
        self.dropped |= rows & self.reused
        self.reused &= ~rows

    def multisecant_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U^T, V^T) [B, M, D] with -I + U V^T = -I + (S + Y) Y^+, the model that maps every
        held y to its s (pairs scaled to unit ||y||; Y^+ ignores directions below PINV_RTOL
        of the largest singular value; rows without pairs: zeros)."""
        scale = self.ys.norm(dim=1, keepdim=True)
        scale = torch.where(scale > 0, scale, 1.0)
        s, y = (self.ss / scale).double(), (self.ys / scale).double()
        y_pinv = torch.linalg.pinv(y, rtol=PINV_RTOL)  # [B, M, D]
        return (s + y).transpose(1, 2).to(self.ss.dtype), y_pinv.to(self.ss.dtype)


class _InverseJacobian:
    """H = -I + U V^T per row; the terms are stored transposed, us = U^T and vs = V^T
    [B, K, D], filled row by row, so the terms in use are a contiguous slice and each
    product is two batched matrix-vector products."""

    def __init__(self, us: torch.Tensor, vs: torch.Tensor, used: int):
        self.us, self.vs, self.used = us, vs, used

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """H x = -x + U (V^T x), x [B, D]."""
        if not self.used:
            return -x
        u, v = self.us[:, : self.used], self.vs[:, : self.used]
        return torch.bmm(torch.bmm(v, x[..., None]).transpose(1, 2), u)[:, 0] - x

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        """H^T x = -x + V (U^T x), x [B, D]."""
        if not self.used:
            return -x
        u, v = self.us[:, : self.used], self.vs[:, : self.used]
        return torch.bmm(torch.bmm(u, x[..., None]).transpose(1, 2), v)[:, 0] - x

    def update(self, s: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> None:
        """Good Broyden's secant update (H y = s afterwards) of the `rows` [B] (bool); a row
        whose update is undefined (s^T H y = 0, non-finite) keeps its model."""
        vt = self.rmatvec(s)
        u = (s - self.matvec(y)) / (vt * y).sum(dim=1, keepdim=True)
        ok = (rows & torch.isfinite((u + vt).sum(dim=1)))[:, None]  # NaN/inf in u or vt
        self.us[:, self.used] = torch.where(ok, u, 0.0)
        self.vs[:, self.used] = torch.where(ok, vt, 0.0)
        self.used += 1

    def reset(self, rows: torch.Tensor) -> None:
        """H = -I for `rows` [B] (bool)."""
        self.us[rows, : self.used] = 0.0
        self.vs[rows, : self.used] = 0.0


def broyden_reuse_solver(
    func,
    x0: torch.Tensor,
    max_iter: int = 50,
    tol: float = 1e-3,
    stop_mode: str = "abs",
    indexing: list[int] | None = None,
    state: BroydenState | None = None,
    memory: int = DEFAULT_MEMORY,
    guard_factor: float = 2.0,
    guard_steps: int = 3,
    **kwargs,
):
    """Broyden's method on g(z) = func(z) - z from x0 [B, ...], at most `max_iter`
    evaluations of func (the first at x0), each row until its residual (stop_mode "abs":
    ||g||, "rel": ||g|| / ||func(z)||) is below `tol`.

    state: the secant pairs to start from (`BroydenState`, updated in place: this solve's
    pairs are added; rows holding pairs count as reused); None: a new empty state of
    `memory` pairs. guard_factor, guard_steps: the safeguard on reused pairs (module
    docstring). Other TorchDEQ keyword arguments are ignored, except a line search
    (ls=True), which this solver does not do.

    Returns (lowest-residual z per row, states at the steps in `indexing`, info): TorchDEQ's
    solver statistics plus info["solver_state"] (the state)."""
    if kwargs.get("ls"):
        raise ValueError("broyden_reuse does no line search (ls=True)")
    if stop_mode not in ("abs", "rel"):
        raise ValueError(f"broyden_reuse stop_mode must be 'abs' or 'rel', got {stop_mode!r}")
    x = batch_flatten(x0)
    rows, dim = x.shape
    if state is None:
        state = BroydenState.from_rows(x.reshape(rows, dim), None, {"memory": memory})
    if tuple(state.ss.shape[:2]) != (rows, dim):
        raise ValueError(f"solver state is for rows of {tuple(state.ss.shape[:2])}, the solve has {(rows, dim)}")

    # the inverse-Jacobian model: the reused pairs' multisecant terms, then one term per step
    # (uninitialised: only the first `used` terms are ever read, and each is written first)
    us = x.new_empty((rows, state.memory + max_iter, dim))
    vs = x.new_empty((rows, state.memory + max_iter, dim))
    used = 0
    if bool(state.reused.any()):
        us[:, : state.memory], vs[:, : state.memory] = state.multisecant_terms()
        used = state.memory
    model = _InverseJacobian(us, vs, used)

    def g(z):
        return func(z.view_as(x0)).reshape_as(z) - z

    # the lowest-residual state per row (by the stop_mode residual) and TorchDEQ's statistics
    trace, lowest, lowest_step = init_solver_info(rows, x0.device)
    indexing_list: list[torch.Tensor] = []

    def record(x, gx, nstep, lowest_x):
        abs_diff = gx.norm(dim=1)
        rel_diff = abs_diff / ((gx + x).norm(dim=1) + _EPS)
        trace["abs"].append(abs_diff)
        trace["rel"].append(rel_diff)
        metric = abs_diff if stop_mode == "abs" else rel_diff
        better = metric < lowest[stop_mode]  # NaN: never better
        lowest_x = torch.where(better[:, None], x, lowest_x)
        for mode, value in (("abs", abs_diff), ("rel", rel_diff)):
            lowest[mode] = torch.where(better, value, lowest[mode])
            lowest_step[mode] = torch.where(better, nstep, lowest_step[mode])
        if indexing and nstep in indexing:
            indexing_list.append(lowest_x.view_as(x0))
        return lowest_x, ~(metric < tol)  # NaN: not met

    gx = g(x)
    nstep = 1
    lowest_x, active = record(x, gx, nstep, x.detach().clone())
    residual = gx.norm(dim=1)
    while nstep < max_iter and bool(active.any()):
        keep = ~active[:, None]  # rows that met the tolerance stay where they are
        x_new = torch.where(keep, x, x - model.matvec(gx))
        g_new = torch.where(keep, gx, g(x_new))
        nstep += 1
        residual_new = g_new.norm(dim=1)
        rejected = torch.zeros_like(active)
        if nstep - 1 <= guard_steps:
            # NaN compares False: a non-finite step is rejected too
            rejected = state.reused & active & ~(residual_new <= guard_factor * residual)
            if bool(rejected.any()):
                state.drop(rejected)
                model.reset(rejected)
                x_new = torch.where(rejected[:, None], x, x_new)
                g_new = torch.where(rejected[:, None], gx, g_new)
                residual_new = torch.where(rejected, residual, residual_new)
        s, y = x_new - x, g_new - gx
        moved = active & ~rejected
        model.update(s, y, moved)
        state.add(s, y, moved)
        x, gx, residual = x_new, g_new, residual_new
        lowest_x, unmet = record(x, gx, nstep, lowest_x)
        active &= unmet

    lowest_x = lowest_x.view_as(x0)
    if indexing and not indexing_list:
        indexing_list.append(lowest_x)
    info = solver_stat_from_info(stop_mode, lowest, trace, lowest_step)
    info["solver_state"] = state
    return lowest_x, indexing_list, info


broyden_reuse_solver.state_type = BroydenState  # StructureDEQSolver: this solver's state is reusable
register_solver("broyden_reuse", broyden_reuse_solver)
