"""StructureDEQSolver's contract with TorchDEQ's real solvers, on a small contraction f:
iterations actually spent, settings that take effect, statistics of the returned state."""

from __future__ import annotations

import pytest
import torch

from fairchem_deq.models.deq_options import DEQBackboneOptions
from fairchem_deq.solve import SolveScope, StructureDEQSolver


class Contraction(torch.nn.Module):
    """f(z) = 0.5 tanh(W z) + b, counting the evaluations made without autograd (the solver's)."""

    def __init__(self, dim: int = 6, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(scale * torch.eye(dim) + 0.05 * torch.randn(dim, dim))
        self.bias = torch.nn.Parameter(torch.randn(dim))
        self.solver_calls = 0

    def forward(self, z):
        if not torch.is_grad_enabled():
            self.solver_calls += 1
        return 0.5 * torch.tanh(z @ self.weight.T) + self.bias


def _solver(**deq):
    return StructureDEQSolver(DEQBackboneOptions.from_dict(deq))


def _z0(rows=3, dim=6):
    return torch.zeros(rows, 2, dim)  # [structures, atoms, features]


def test_anderson_with_two_iterations_returns_an_evaluated_state_and_its_residual():
    f = Contraction()
    solver = _solver(eval_cold={"max_iter": 2, "tol": 1e-12}).eval()
    with torch.no_grad():
        result = solver(f, _z0(), warm_started=False, scope=SolveScope([]))
        f1 = f(_z0())
        f2 = f(f1)
    # TorchDEQ's Anderson alone returns z0 (zeros) here; the evaluated f(z) must come back
    assert not torch.equal(result.fixed_point, _z0())
    rel = lambda fz, z: (fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)  # noqa: E731
    best = torch.where((rel(f2, f1) < rel(f1, _z0())).view(-1, 1, 1), f2, f1)
    torch.testing.assert_close(result.fixed_point, best)
    torch.testing.assert_close(result.stats["rel_residual"], torch.minimum(rel(f2, f1), rel(f1, _z0())))
    assert int(result.stats["nfe"]) == 2 and result.stats["nstep"].tolist() == [2, 2, 2]
    assert not result.stats["converged"].any()


def test_anderson_training_solves_shorter_than_three_iterations_are_refused():
    with pytest.raises(ValueError, match="train.max_iter 2.*Anderson.*max_iter >= 3"):
        _solver(train={"max_iter": 2})
    with pytest.raises(ValueError, match="n_states 3.*max_iter >= 9"):
        _solver(train={"max_iter": 6}, n_states=3)
    solver = _solver()
    with pytest.raises(ValueError, match="max_iter >= 3"):
        solver.set_phase("train", max_iter=1)
    _solver(eval_cold={"max_iter": 1}, eval_warm={"max_iter": 2})  # evaluation: best evaluated state


@pytest.mark.parametrize("grad", ["ift", 3])
def test_changed_training_max_iter_takes_effect_and_gradient_steps_are_not_counted(grad):
    f = Contraction(scale=0.2)
    solver = _solver(train={"max_iter": 6, "tol": 1e-14}, grad=grad).train()
    solver.set_phase("train", max_iter=12)
    result = solver(f, _z0(), warm_started=False, scope=SolveScope([]))
    result.fixed_point.sum().backward()
    assert f.solver_calls == 12
    assert int(result.stats["nfe"]) == 12 and result.stats["nstep"].tolist() == [12, 12, 12]
    assert f.weight.grad is not None


def test_returned_state_is_the_one_the_statistics_describe():
    """converged / residuals describe the returned state: each returned row is an evaluated
    f(z) whose recorded residual is the reported one (TorchDEQ's Anderson returns the best
    of its loop only, ignoring evaluations 1-2, where a warm start may already converge)."""
    f = Contraction()
    evaluations = []

    def recorded(z):
        fz = f(z)
        evaluations.append((z.clone(), fz.clone()))
        return fz

    solver = _solver(eval_warm={"max_iter": 8, "tol": 1e-5}, fallback_cold_start=False).eval()
    with torch.no_grad():
        z_star = solver(f, _z0(), warm_started=False, scope=SolveScope([])).fixed_point
        for _ in range(60):
            z_star = f(z_star)
        z0 = _z0()
        z0[0] = z_star[0]  # structure 0 starts at its fixed point, the others far from it
        result = solver(recorded, z0, warm_started=True, scope=SolveScope([]))
    for row in range(3):
        matches = [(z, fz) for z, fz in evaluations if torch.equal(fz[row], result.fixed_point[row])]
        assert matches, row
        z, fz = matches[0]
        rel = float((fz[row] - z[row]).norm() / fz[row].norm())
        assert float(result.stats["rel_residual"][row]) == pytest.approx(rel, rel=1e-5, abs=1e-12)
        assert bool(result.stats["converged"][row]) == (rel < 1e-5)
    assert int(result.stats["nstep"][0]) == 1


def test_a_solver_registered_in_torchdeq_is_accepted_by_name():
    """deq.solver was checked against a closed tuple; TorchDEQ's registry is the source."""
    from torchdeq.solver import fixed_point_iter, register_solver

    with pytest.raises(ValueError, match="Unknown DEQ solver 'damped_fp'.*anderson.*broyden"):
        _solver(solver="damped_fp")

    def damped_fp(func, x0, **kwargs):
        return fixed_point_iter(func, x0, **{**kwargs, "tau": 0.8})

    register_solver("damped_fp", damped_fp)
    f = Contraction()
    solver = _solver(solver="damped_fp", eval_cold={"max_iter": 60, "tol": 1e-5}).eval()
    with torch.no_grad():
        result = solver(f, _z0(), warm_started=False, scope=SolveScope([]))
    assert result.stats["converged"].all() and int(result.stats["nfe"]) > 1


# ---- stop_mode "error": a stopping rule that bounds the distance to the fixed point -----


class Linear(torch.nn.Module):
    """f(z) = q z + b per structure, fixed point z* = b / (1 - q); counts solver evaluations."""

    def __init__(self, q: float, rows: int = 3, dim: int = 6):
        super().__init__()
        torch.manual_seed(1)
        self.q = q
        self.b = torch.randn(rows, 2, dim) + 1.0
        self.solver_calls = 0

    @property
    def z_star(self):
        return self.b / (1.0 - self.q)

    def forward(self, z):
        if not torch.is_grad_enabled():
            self.solver_calls += 1
        return self.q * z + self.b


def _true_error(f: Linear, z: torch.Tensor) -> torch.Tensor:
    return (z - f.z_star).flatten(1).norm(dim=1) / f.z_star.flatten(1).norm(dim=1)


@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_error_rule_bounds_the_distance_to_the_fixed_point_where_the_residual_does_not(tol):
    """f contracts weakly (q = 0.9): plain fixed-point steps meet a relative-residual tol
    while still ~q/(1-q) = 9 tol away from z*; the error rule keeps the true error <= ~tol.
    (Anderson solves an affine f exactly within three evaluations, whatever rule; the plain
    iteration shows what a slowly converging solve does.)"""
    f = Linear(q=0.9)
    errors, nfe = {}, {}
    for mode in ("rel", "error"):
        solver = _solver(solver="fixed_point_iter", eval_cold={"max_iter": 400, "tol": tol, "stop_mode": mode}).eval()
        with torch.no_grad():
            result = solver(f, torch.zeros_like(f.b), warm_started=False, scope=SolveScope([]))
        assert result.stats["converged"].all(), mode
        errors[mode], nfe[mode] = _true_error(f, result.fixed_point), int(result.stats["nfe"])
        # secant ratios of plain steps on an affine f are exactly q
        torch.testing.assert_close(result.stats["contraction"], torch.full((3,), 0.9), rtol=1e-3, atol=1e-4)
        # the reported estimate is q/(1-q) x the reported relative residual, and bounds the error
        torch.testing.assert_close(
            result.stats["error_estimate"], 9.0 * result.stats["rel_residual"], rtol=1e-2, atol=0
        )
        assert (errors[mode] <= result.stats["error_estimate"] * 1.01).all(), mode
    assert (errors["rel"] > 2 * tol).all(), errors["rel"]  # the residual rule misses tol by far
    assert (errors["error"] <= 2 * tol).all(), errors["error"]
    assert (result.stats["error_estimate"] < tol).all()
    assert nfe["error"] > nfe["rel"]


def test_error_rule_stops_within_a_few_evaluations_on_a_strong_contraction():
    """q = 0.1: the bound is 1/9 of the residual, so the rule costs no more than the rel rule
    (the residual falls 10x per step; tol 1e-3 from ||f(0) - 0|| / ||f(0)|| = 1 takes 3-4)."""
    f = Linear(q=0.1)
    spent = {}
    for mode in ("rel", "error"):
        solver = _solver(solver="fixed_point_iter", eval_cold={"max_iter": 50, "tol": 1e-3, "stop_mode": mode}).eval()
        with torch.no_grad():
            result = solver(f, torch.zeros_like(f.b), warm_started=False, scope=SolveScope([]))
        assert result.stats["converged"].all()
        assert (_true_error(f, result.fixed_point) <= 1e-3).all()
        spent[mode] = int(result.stats["nfe"])
    assert spent["error"] <= spent["rel"] <= 4, spent


def test_error_rule_with_anderson_is_not_cut_short_by_torchdeq_and_uses_a_contraction_prior():
    """Anderson in evaluation: TorchDEQ's own check (made tighter for "error") never ends the
    solve before the rule holds. A warm start at the fixed point up to a relative residual
    r: with the default q0 = 0.5 (bound = r) one evaluation suffices; with a handed-in
    contraction 0.9 (bound = 9 r) it does not."""
    f = Linear(q=0.9)
    solver = _solver(eval_warm={"max_iter": 40, "tol": 1e-3, "stop_mode": "error"}, fallback_cold_start=False).eval()
    core = solver.cores["phase_eval_warm"]
    assert core.f_stop_mode == "rel" and core.f_tol < 1e-3 * 0.05 / 0.95
    # residual ||f(z0) - z0|| = (1 - q) ||z0 - z*||: a relative residual of ~5e-4 at z0
    z0 = f.z_star * (1 + 5e-3)
    with torch.no_grad():
        default = solver(f, z0, warm_started=True, scope=SolveScope([]))
        primed = solver(f, z0, warm_started=True, scope=SolveScope([]), contraction=torch.full((3,), 0.9))
    assert int(default.stats["nfe"]) == 1 and default.stats["converged"].all()
    assert int(primed.stats["nfe"]) > 1 and primed.stats["converged"].all()
    assert (primed.stats["error_estimate"] < 1e-3).all()
    assert (_true_error(f, primed.fixed_point) < 1e-3).all()
    # changed settings reach TorchDEQ's core through set_phase as well
    solver.set_phase("eval_warm", stop_mode="rel", tol=1e-4)
    assert (core.f_stop_mode, core.f_tol) == ("rel", 1e-4)


def test_error_rule_in_training_stops_like_rel_and_reports_the_estimate():
    f = Linear(q=0.9)
    solver = _solver(solver="fixed_point_iter", train={"max_iter": 400, "tol": 1e-2, "stop_mode": "error"}).train()
    assert solver.cores["phase_train"].f_stop_mode == "rel"
    assert solver.cores["phase_train"].f_tol == 1e-2
    result = solver(f, torch.zeros_like(f.b), warm_started=False, scope=SolveScope([]))
    assert (result.stats["rel_residual"] < 1e-2).all()
    assert (result.stats["error_estimate"] > 1e-2).all() and not result.stats["converged"].any()


def test_stop_mode_and_error_settings_are_validated():
    with pytest.raises(ValueError, match="Unknown DEQ stop_mode 'err'.*'rel', 'abs', 'error'"):
        _solver(eval_cold={"stop_mode": "err"})
    with pytest.raises(ValueError, match="Unknown DEQ b_stop_mode 'error'"):
        _solver(b_stop_mode="error")  # the backward solve is TorchDEQ's: rel/abs only
    with pytest.raises(ValueError, match="error_q_max"):
        _solver(eval_cold={"stop_mode": "error", "error_q_max": 1.0})
    with pytest.raises(ValueError, match="error_q0"):
        _solver(eval_cold={"stop_mode": "error", "error_q0": 0.99})
    with pytest.raises(ValueError, match="Unknown DEQ stop_mode"):
        _solver().set_phase("eval_warm", stop_mode="relative")
    _solver(train={"stop_mode": "error"}, eval_cold={"stop_mode": "error"}, eval_warm={"stop_mode": "error"})
