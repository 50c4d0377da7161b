"""Solver-state reuse (issue 13, item 3): the "broyden_reuse" solver carries its secant pairs
(its Jacobian information) from one frame's solve to the next, beside the fixed point."""

from __future__ import annotations

import pytest
import torch
from conftest import ethanol_atoms, make_model, to_batch

from fairchem_deq.models.deq_options import DEQBackboneOptions
from fairchem_deq.reuse import FixedPointCache, forward_with_reuse
from fairchem_deq.solve import SolveScope, StructureDEQSolver, WarmStart
from fairchem_deq.solve.broyden_reuse import BroydenState, broyden_reuse_solver

pytestmark = pytest.mark.usefixtures("one_thread")


def _deq(solver: str, tol: float, max_iter: int = 100, **extra) -> dict:
    settings = {"max_iter": max_iter, "tol": tol, "stop_mode": "rel"}
    return {"solver": solver, "eval_cold": settings, "eval_warm": settings, **extra}


def _along(model, frames, cache, sids=(0,)) -> list:
    """forward_with_reuse over consecutive frames (one structure per sid): the ReuseSteps."""
    steps = []
    for atoms in frames:
        with torch.no_grad():
            steps.append(forward_with_reuse(model, model.backbone, to_batch([atoms], sids=list(sids)), cache))
    return steps


# ---- (a) the same fixed point as Anderson on a real tiny DEQ --------------------------------


def test_broyden_reuse_reaches_andersons_fixed_points_along_real_frames():
    frames = ethanol_atoms(range(4))  # consecutive MD17 frames
    fixed_points, caches = {}, {}
    for solver in ("anderson", "broyden_reuse"):
        model = make_model(_deq(solver, 1e-6)).eval()
        caches[solver] = FixedPointCache()
        steps = _along(model, frames, caches[solver])
        fixed_points[solver] = [s.solution.fixed_point for s in steps]
        for step in steps:
            assert bool(step.solution.stats["converged"].all()), solver
        if solver == "anderson":  # other solvers: no state passed, returned or stored
            assert all(s.solution.solver_state is None for s in steps)
            assert all("state_reused" not in s.solution.stats for s in steps)
            assert caches[solver].get(0, to_batch(frames[-1:]).atomic_numbers.long()).solver_state is None
        else:  # frames after the first start from the previous solve's pairs, and keep them
            assert [bool(s.solution.stats["state_reused"][0]) for s in steps] == [False, True, True, True]
            assert [s.warm_start.solver_state is not None for s in steps] == [False, True, True, True]
            assert not any(bool(s.solution.stats["state_dropped"][0]) for s in steps)
            s_cols, y_cols = caches[solver].get(0, to_batch(frames[-1:]).atomic_numbers.long()).solver_state
            assert s_cols.shape == y_cols.shape and s_cols.shape[:-1] == fixed_points[solver][-1].shape
    for z_anderson, z_broyden in zip(fixed_points["anderson"], fixed_points["broyden_reuse"]):
        assert float((z_broyden - z_anderson).norm() / z_anderson.norm()) < 2e-5


def test_training_solves_take_and_return_no_state():
    model = make_model(_deq("broyden_reuse", 1e-3, train={"max_iter": 8, "tol": 1e-3})).train()
    batch = to_batch(ethanol_atoms([0]))
    batch.warm_start = WarmStart.cold(1)
    batch.warm_start.solver_state = (torch.ones(9, 9, 16, 2), torch.ones(9, 9, 16, 2))
    out = model.backbone(batch)
    assert out["deq"].solver_state is None and "state_reused" not in out["deq"].stats


# ---- (b) fewer evaluations along slowly changing contractions --------------------------------


class SlowlyChangingLinear:
    """f_t(z) = A_t z + b_t per row: A_t a symmetric contraction (eigenvalues -0.3..0.9)
    rotated a little further each frame, b_t drifting; z [rows, 2, 20] (float64)."""

    def __init__(self, rows: int = 2, dim: int = 40, step: float = 0.01):
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        self.a0 = q @ torch.diag(torch.linspace(-0.3, 0.9, dim, dtype=torch.float64)) @ q.T
        p = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        self.p = 0.15 * (p - p.T)
        self.b0 = torch.randn(rows, dim, generator=g, dtype=torch.float64)
        self.db = torch.randn(rows, dim, generator=g, dtype=torch.float64)
        self.rows, self.dim, self.step = rows, dim, step

    def frame(self, t: int):
        r = torch.matrix_exp(self.step * t * self.p)
        a, b = r @ self.a0 @ r.T, self.b0 + self.step * t * self.db

        def f(z):
            return (z.reshape(self.rows, self.dim) @ a.T + b).reshape(z.shape)

        z_star = torch.linalg.solve(torch.eye(self.dim, dtype=torch.float64) - a, b.T).T
        return f, z_star.reshape(self.rows, 2, self.dim // 2), a

    def zeros(self):
        return torch.zeros(self.rows, 2, self.dim // 2, dtype=torch.float64)


def _chain(maps: SlowlyChangingLinear, reuse_state: bool, frames: int = 10, tol: float = 1e-8, **deq):
    """Warm-started solves of consecutive frames (fixed point always reused, the solver's
    state only with reuse_state): evaluations per frame and the largest error."""
    solver = StructureDEQSolver(DEQBackboneOptions.from_dict(_deq("broyden_reuse", tol, 200, **deq))).eval()
    z, state, nfe, error = maps.zeros(), None, [], 0.0
    for t in range(frames):
        f, z_star, _ = maps.frame(t)
        with torch.no_grad():
            result = solver(f, z, t > 0, SolveScope([]), solver_state=state if reuse_state else None)
        assert bool(result.stats["converged"].all())
        z, state = result.fixed_point, result.solver_state
        nfe.append(int(result.stats["nfe"]))
        error = max(error, float((z - z_star).norm() / z_star.norm()))
    return nfe, error


def test_reused_state_costs_fewer_evaluations_on_slowly_changing_contractions():
    maps = SlowlyChangingLinear()
    without, error_without = _chain(maps, reuse_state=False)
    with_state, error_with = _chain(maps, reuse_state=True)
    assert with_state[0] == without[0]  # frame 0: cold, no state either way
    assert sum(with_state[1:]) < 0.75 * sum(without[1:]), (with_state, without)
    assert error_with < 1e-6 and error_without < 1e-6


def test_state_is_a_ring_of_the_newest_pairs_and_survives_the_early_exit():
    maps = SlowlyChangingLinear(rows=1)
    f, _, a = maps.frame(0)
    z0 = maps.zeros()
    visited = []

    def recorded(z):
        visited.append(z.reshape(40).clone())
        return f(z)

    # run to the end without the tracker: the returned state is the object handed in
    state = BroydenState.from_rows(z0, None, {"memory": 4})
    _, _, info = broyden_reuse_solver(recorded, z0, max_iter=12, tol=1e-12, stop_mode="rel", state=state)
    assert info["solver_state"] is state and int(state.count[0]) == 11  # one pair per step
    s_cols, y_cols = state.columns(z0.shape[1:])
    assert s_cols.shape == (1, 2, 20, 4)
    # the newest four steps, oldest first, and their secants y = (A - I) s
    s_flat, y_flat = s_cols.reshape(40, 4), y_cols.reshape(40, 4)
    steps = torch.stack([visited[k + 1] - visited[k] for k in range(7, 11)], dim=1)
    torch.testing.assert_close(s_flat, steps)
    torch.testing.assert_close(y_flat, (a - torch.eye(40, dtype=torch.float64)) @ s_flat)
    # through StructureDEQSolver the solve ends inside f (early exit): the state still comes back
    solver = StructureDEQSolver(DEQBackboneOptions.from_dict(_deq("broyden_reuse", 1e-6, 50))).eval()
    with torch.no_grad():
        result = solver(f, z0, False, SolveScope([]))
    assert result.solver_state is not None
    n_pairs = int((result.solver_state[1].reshape(40, -1) != 0).any(dim=0).sum())
    assert n_pairs == min(int(result.stats["nfe"]) - 2, 20)  # the last evaluation raised: no pair from it


# ---- (c) a changed structure drops the history ----------------------------------------------


def test_changed_or_refused_structure_starts_without_state_and_state_bytes_count():
    frames = ethanol_atoms([0, 1])
    model = make_model(_deq("broyden_reuse", 1e-4)).eval()
    cache = FixedPointCache(max_displacement=0.25)
    numbers = to_batch(frames[:1]).atomic_numbers.long()
    _along(model, frames[:1], cache)
    entry = cache.get(0, numbers)
    assert entry.solver_state is not None
    state_bytes = sum(t.untyped_storage().nbytes() for t in entry.solver_state)
    assert entry.nbytes >= state_bytes > 0 and cache.nbytes == entry.nbytes  # in the memory bound

    # other atoms under the same key (species order changed): a cold solve without state
    swapped = frames[1][[2, 0, 1, *range(3, 9)]]  # C C O ... -> O C C ...
    assert swapped.numbers.tolist() != frames[1].numbers.tolist()
    (step,) = _along(model, [swapped], cache)
    assert step.warm_start.fixed_point is None and step.warm_start.solver_state is None
    assert not bool(step.solution.stats["state_reused"][0])
    assert cache.get(0, numbers) is None  # the old history and its state are gone
    new = cache.get(0, to_batch([swapped]).atomic_numbers.long())
    assert len(new.history) == 1  # the new entry holds this solve's pairs only
    n_pairs = int((new.solver_state[1].flatten(0, -2) != 0).any(dim=0).sum())
    assert n_pairs <= int(step.solution.stats["nfe"]) - 1

    # moved beyond the displacement bound: refused, evicted, solved without state
    far = swapped.copy()
    far.positions[3] += [0.0, 0.0, 0.5]
    (step,) = _along(model, [far], cache)
    assert bool(step.warm_start.refused[0]) and step.warm_start.solver_state is None
    assert not bool(step.solution.stats["state_reused"][0])

    # a solve that returns no state (another solver) leaves none in the entry
    cache.put(0, 5, new.fixed_point, new.atomic_numbers)
    assert cache.get(0, new.atomic_numbers).solver_state is None
    cache.put(0, 6, new.fixed_point, new.atomic_numbers, solver_state=new.solver_state)
    assert cache.get(0, new.atomic_numbers).solver_state is not None
    keep_none = FixedPointCache(keep_solver_state=False)  # fixed-point reuse only
    keep_none.put(0, 0, new.fixed_point, new.atomic_numbers, solver_state=new.solver_state)
    assert keep_none.get(0, new.atomic_numbers).solver_state is None


def test_cache_pads_states_of_different_rank_and_structures_without_one():
    cache = FixedPointCache()
    batch = to_batch(ethanol_atoms([0, 1, 2]), sids=[5, 6, 7])
    numbers = batch.atomic_numbers[:9].long()
    z = torch.ones(9, 4, 2)
    s2 = (torch.full((9, 4, 2, 2), 1.0), torch.full((9, 4, 2, 2), 2.0))
    s3 = (torch.full((9, 4, 2, 3), 3.0), torch.full((9, 4, 2, 3), 4.0))
    s3[0][..., 0] = 0.0  # an unused (all-zero) pair is not kept
    s3[1][..., 0] = 0.0
    cache.put(5, 0, z, numbers, solver_state=s2)
    cache.put(6, 0, z, numbers, solver_state=s3)
    cache.put(7, 0, z, numbers)
    assert cache.get(6, numbers).solver_state[0].shape[-1] == 2
    guess = cache.warm_start(batch)
    s_cols, y_cols = guess.solver_state
    assert s_cols.shape == (27, 4, 2, 2)
    assert bool((s_cols[:9] == 1).all()) and bool((s_cols[9:18] == 3).all()) and bool((s_cols[18:] == 0).all())
    assert bool((y_cols[:9] == 2).all()) and bool((y_cols[9:18] == 4).all())


# ---- (d) a wrong state is dropped by the safeguard -------------------------------------------


def test_wrong_state_is_dropped_and_the_solve_still_converges():
    model = make_model(_deq("broyden_reuse", 1e-5, fallback_cold_start=False)).eval()
    frames = ethanol_atoms([0, 1])
    with torch.no_grad():
        reference = model.backbone(to_batch(frames))
        batch = to_batch(frames)
        g = torch.Generator().manual_seed(0)
        shape = (*reference["deq"].fixed_point.shape, 6)
        s_cols, y_cols = 1e6 * torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        s_cols[9:], y_cols[9:] = 0.0, 0.0  # the second structure gets no state
        batch.warm_start = WarmStart.cold(2)
        batch.warm_start.solver_state = (s_cols, y_cols)
        out = model.backbone(batch)
    stats = out["deq"].stats
    assert stats["state_reused"].tolist() == [True, False]
    assert stats["state_dropped"].tolist() == [True, False]  # reported, and only where it was wrong
    assert bool(stats["converged"].all()) and not bool(stats["fallback"].any())
    z, z_ref = out["deq"].fixed_point, reference["deq"].fixed_point
    assert float((z - z_ref).norm() / z_ref.norm()) < 1e-4
    assert bool(torch.isfinite(out["deq"].solver_state[0]).all())


def test_wrong_state_on_a_linear_map_costs_one_rejected_step():
    maps = SlowlyChangingLinear(rows=2)
    f, z_star, _ = maps.frame(0)
    z0 = maps.zeros()
    plain = BroydenState.from_rows(z0, None, {})
    _, _, info_plain = broyden_reuse_solver(f, z0, max_iter=200, tol=1e-9, stop_mode="rel", state=plain)
    g = torch.Generator().manual_seed(1)
    wrong = (1e6 * torch.randn(2, 2, 20, 5, generator=g, dtype=torch.float64),)
    wrong = (*wrong, torch.randn(2, 2, 20, 5, generator=g, dtype=torch.float64))
    state = BroydenState.from_rows(z0, wrong, {})
    z, _, info = broyden_reuse_solver(f, z0, max_iter=200, tol=1e-9, stop_mode="rel", state=state)
    assert state.dropped.tolist() == [True, True] and not bool(state.reused.any())
    torch.testing.assert_close(z, z_star, rtol=1e-6, atol=1e-6)
    # after the rejected step the solve is plain Broyden from the same point
    assert int(info["nstep"].max()) <= int(info_plain["nstep"].max()) + 1
