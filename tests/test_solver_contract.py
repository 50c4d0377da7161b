"""StructureDEQSolver's contract with TorchDEQ's real solvers, on a small contraction f:
iterations actually spent, settings that take effect, statistics of the returned state."""

from __future__ import annotations

import pytest
import torch

from fairchem_deq.models.deq_config import DEQConfig
from fairchem_deq.models.deq_solver import StructureDEQSolver
from fairchem_deq.models.solve_scope import SolveScope


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
    return StructureDEQSolver(DEQConfig.from_dict(deq))


def _z0(rows=3, dim=6):
    return torch.zeros(rows, 2, dim)  # [structures, atoms, features]


def test_anderson_with_two_iterations_returns_an_evaluated_state_and_its_residual():
    f = Contraction()
    solver = _solver(eval_cold={"max_iter": 2, "tol": 1e-12}).eval()
    with torch.no_grad():
        result = solver(f, _z0(), warm=False, scope=SolveScope([]))
        f1 = f(_z0())
        f2 = f(f1)
    # TorchDEQ's Anderson alone returns z0 (zeros) here; the evaluated f(z) must come back
    assert not torch.equal(result.fixed_point, _z0())
    rel = lambda fz, z: ((fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1))  # noqa: E731
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
    result = solver(f, _z0(), warm=False, scope=SolveScope([]))
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
        z_star = solver(f, _z0(), warm=False, scope=SolveScope([])).fixed_point
        for _ in range(60):
            z_star = f(z_star)
        z0 = _z0()
        z0[0] = z_star[0]  # structure 0 starts at its fixed point, the others far from it
        result = solver(recorded, z0, warm=True, scope=SolveScope([]))
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
        result = solver(f, _z0(), warm=False, scope=SolveScope([]))
    assert result.stats["converged"].all() and int(result.stats["nfe"]) > 1
