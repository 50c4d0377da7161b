"""Fixed-point solves through TorchDEQ with per-structure convergence and statistics.

`StructureDEQSolver` owns one TorchDEQ core per phase (train / eval_cold / eval_warm, each
with its own tolerance and iteration cap) and adds what the reference code lacked:

- per-structure statistics (first function evaluation at which the structure met its
  tolerance, lowest absolute and relative residual), measured inside f so they are exact
  for any TorchDEQ solver and cost no host synchronisation per iteration;
- in evaluation, the solve ends at the first function evaluation where every structure
  meets its tolerance, for any solver: a warm start that already satisfies it costs ONE
  evaluation (TorchDEQ's Anderson alone always spends three before its first check);
- detection of non-finite or non-converged solves, an optional cold-start retry for a
  failed warm start, and a clear error (or warning) instead of a silent NaN prediction;
- in evaluation, on request (`track_inputs`: energy-gradient forces), the fixed point is
  returned with an implicit-differentiation graph to f's inputs (positions), so that
  -dE/dpos runs through z* (TorchDEQ's IFT backward, to b_tol);
- a stopping rule that bounds the error of the returned state, not only its residual
  (`stop_mode: error`): per structure, the contraction factor q of f is estimated from the
  solve's own evaluations and the solve ends when q/(1-q) x the relative residual (the
  a-posteriori bound of a contraction on ||f(z_k) - z*|| / ||f(z_k)||) is below tol.
  Every solve reports per structure `contraction` (that estimate of q) and
  `error_estimate` (the bound for the returned state); a caller may hand the contraction of
  a previous solve of the same structures back in (`forward(..., contraction=...)`) so that
  a warm start judged after one evaluation does not rely on the default `error_q0`;
- solver-state reuse, for a registered solver with a reusable state (one with a
  `state_type` attribute implementing `state.SolverState`: "broyden_reuse"): in evaluation a caller may
  hand in each structure's state from its previous solve (`forward(..., solver_state=...)`,
  per-row tensors, e.g. the secant pairs (S, Y) of Broyden's, each [B, *row, m]); the
  solver builds the state object from them and passes it to the TorchDEQ solver (`state=`),
  which updates it in place, so that it is current even when the early exit raised from
  inside f; its per-row tensors come back in `DEQSolveResult.solver_state` (stats gain
  `state_reused` and `state_dropped`: the solver's safeguard dropped a reused state). Other
  solvers, and every training solve, never see a state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn
from torchdeq import get_deq
from torchdeq.loss import jac_reg
from torchdeq.solver import get_solver

from .adjoint import AdjointRecord, attach_adjoint
from .layout import per_row
from .precision import float32_solver
from .propagation import Propagation, propagate
from .scope import SolveScope
from .settings import SolveOptions, SolveSettings
from .state import solver_state_type
from .tracker import NEVER, REPORTED, AllConverged, RowRules, TrackedFunction, torchdeq_stop


class DEQDivergenceError(FloatingPointError):
    """The fixed-point solve produced NaN/inf for at least one structure."""


@dataclass
class DEQSolveResult:
    fixed_point: torch.Tensor  # [B, n_max, L, C], the solution (with autograd in training)
    states: list[torch.Tensor]  # solver states with gradients (training), last == fixed_point
    stats: dict[str, torch.Tensor]  # per-structure tensors of shape [B] (+ scalar "nfe")
    # evaluation with a solver that has a reusable state: its per-row tensors (e.g. the
    # secant pairs (S, Y) of "broyden_reuse", each [B, *row, m]); None otherwise
    solver_state: tuple[torch.Tensor, ...] | None = None
    # evaluation with track_inputs: the backward (adjoint) solve's record, filled once the
    # gradient has been taken
    adjoint: AdjointRecord | None = None
    # fixed-budget propagation: the state the next step's prediction extrapolates from,
    # when it differs from `fixed_point` (one evaluation: f(z_p), not the over-relaxed output)
    carry: torch.Tensor | None = None
    # training with Jacobian regularisation: the Hutchinson estimate of ||J_f(z*)||_F^2 / dim
    # (with graph, a loss term)
    jacobian_loss: torch.Tensor | None = None


def _on_any_rank(flag: torch.Tensor) -> torch.Tensor:
    """Whether `flag` (a bool tensor) is set on any DDP rank (itself outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    value = flag.to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value[0] > 0


class StructureDEQSolver(nn.Module):
    def __init__(self, options: SolveOptions):
        super().__init__()
        self.options = options
        self._build_cores()

        # evaluation's implicit derivative of z* (energy-gradient forces), b_* settings fixed
        self._b_solver = get_solver(options.b_solver)
        self.last_adjoint: AdjointRecord | None = None
        self.jacobian_vectors = 0  # training's Jacobian regularisation (set_jacobian_regularisation)
        self.set_backward()

    @property
    def last_backward_stats(self) -> dict[str, torch.Tensor]:
        """TorchDEQ's statistics of the last adjoint solve (empty before one ran)."""
        return self.last_adjoint.stats if self.last_adjoint is not None else {}

    def _build_cores(self) -> None:
        options = self.options
        grad = options.grad
        self.state_type = solver_state_type(options.solver)
        # TorchDEQ cores hold no parameters; as submodules they follow .train()/.eval()
        self.cores = nn.ModuleDict(
            {
                f"phase_{phase}": get_deq(
                    core="sliced",
                    f_solver=options.solver,
                    b_solver=options.b_solver,
                    f_max_iter=s.max_iter,
                    eval_f_max_iter=s.max_iter,
                    f_tol=torchdeq_stop(phase, s)[0],
                    f_stop_mode=torchdeq_stop(phase, s)[1],
                    b_max_iter=options.b_max_iter,
                    b_tol=options.b_tol,
                    b_stop_mode=options.b_stop_mode,
                    ift=grad == "ift",
                    grad=1 if grad == "ift" else int(grad),
                    n_states=int(options.n_states),
                )
                for phase, s in (
                    ("train", options.train),
                    ("eval_cold", options.eval_cold),
                    ("eval_warm", options.eval_warm),
                    # a batch of warm and cold rows: each row has its own rule, checked by the
                    # tracker inside f; TorchDEQ's own check (tol 0) never ends the solve
                    ("eval_mixed", replace(options.eval_cold, tol=NEVER)),
                )
            }
        )
        self.cores.train(self.training)

    def set_solver(self, name: str, solver_kwargs: dict | None = None) -> None:
        """Switches the forward solver (a name in TorchDEQ's registry) and its keyword
        arguments (None: none; anderson's lam default applies) for every phase, e.g. after
        loading a checkpoint. Phase settings are kept."""
        self._change_options(solver=name, solver_kwargs=dict(solver_kwargs or {}))
        self._build_cores()

    def _change_options(self, **changes) -> None:
        """Applies `changes` to the deq options after the checks of a config's deq block have
        passed on them (a refused change leaves the options as they were)."""
        checked = replace(self.options, **changes)  # runs the block's checks and defaults
        for key in changes:
            setattr(self.options, key, getattr(checked, key))

    def set_backward(self, **changes) -> None:
        """Changes the evaluation's adjoint solve (energy-gradient forces): b_tol, b_max_iter,
        b_stop_mode, as in the config's deq block."""
        unknown = set(changes) - {"b_tol", "b_max_iter", "b_stop_mode"}
        if unknown:
            raise ValueError(f"unknown backward settings {sorted(unknown)}; use b_tol, b_max_iter, b_stop_mode")
        self._change_options(**changes)
        self._b_kwargs = dict(
            max_iter=self.options.b_max_iter, tol=self.options.b_tol, stop_mode=self.options.b_stop_mode
        )

    def set_phase(self, phase: str, **changes) -> None:
        """Changes one phase's settings (max_iter, tol, stop_mode, error_q0, error_q_max)
        after construction."""
        settings = SolveSettings(**{**vars(self.options.phase(phase)), **changes})
        self.options.check_iterations(phase, settings)
        setattr(self.options, phase, settings)
        core = self.cores[f"phase_{phase}"]
        core.f_tol, core.f_stop_mode = torchdeq_stop(phase, settings)
        core.f_max_iter = core.eval_f_max_iter = settings.max_iter

    def forward(
        self,
        f,
        z0: torch.Tensor,
        warm_started: bool | torch.Tensor,
        scope: SolveScope,
        track_inputs: bool = False,
        contraction: torch.Tensor | float | None = None,
        solver_state: tuple[torch.Tensor, ...] | None = None,
        adjoint_guess: torch.Tensor | None = None,
        propagation: Propagation | None = None,
    ) -> DEQSolveResult:
        """`warm_started` (bool, or per structure [B]): which rows start from a previous
        fixed point; in evaluation each row is solved with its phase's settings (eval_warm or
        eval_cold), and a warm row whose solve fails is redone from zero (fallback_cold_start).
        `track_inputs` (evaluation only): return z* with an implicit-gradient graph to
        the inputs of f, for derivatives such as forces = -dE/dpos. `contraction` (scalar or
        per structure [B]; NaN entries: unknown): estimates of f's contraction factor, e.g.
        stats["contraction"] of an earlier solve of the same structures, used by
        stop_mode "error" until the solve has its own (before its second evaluation).
        `solver_state` (evaluation with a solver that has a reusable state, ignored
        otherwise): per-row tensors of a previous solve's state (`result.solver_state`;
        zero rows: none), where the solver's own model starts. `adjoint_guess` (with
        `track_inputs`; rows like z0, zeros: none): where the backward (adjoint) solve starts,
        e.g. the previous step's `result.adjoint.solution`. `propagation` (evaluation, every
        row warm, no `track_inputs`): a fixed number of evaluations instead of a converged
        solve (`fairchem_deq.solve.propagation`); rows its guard refuses are solved."""
        warm = torch.as_tensor(warm_started, dtype=torch.bool).reshape(-1).expand(z0.shape[0]).cpu()
        phase = self._phase(warm)
        f, solver_precision = float32_solver(f, z0.device.type, self.options.solve_under_autocast)
        propagating = propagation is not None and not self.training and not track_inputs and bool(warm.all())
        with solver_precision:
            if propagating:
                result = self._propagate(f, z0, scope, propagation, contraction, warm)
            else:
                result = self._solve(f, z0, phase, scope, contraction, solver_state, warm)
            if not self.training and self.options.fallback_cold_start:
                failed = warm.to(z0.device) & ~result.stats["converged"]
                if bool(failed.any()):
                    result = self._retry_cold(f, result, scope, failed, contraction)
            self._check(result, phase)
            if self.training and self.jacobian_vectors:
                result = replace(result, jacobian_loss=self._jacobian_loss(f, result, scope))
            if track_inputs and not self.training:
                result = self._attach_implicit_gradient(f, result, scope, adjoint_guess)
        return result

    def set_jacobian_regularisation(self, vectors: int) -> None:
        """Training solves also return the Hutchinson estimate of ||J_f(z*)||_F^2 / dim with
        `vectors` random vectors (0: off), as `result.jacobian_loss`."""
        if not (isinstance(vectors, int) and vectors >= 0):
            raise ValueError(f"Jacobian regularisation vectors must be an int >= 0, got {vectors!r}")
        self.jacobian_vectors = vectors

    def _jacobian_loss(self, f, result: DEQSolveResult, scope) -> torch.Tensor:
        """TorchDEQ's jac_reg at the fixed point: one more evaluation of f with graph (the
        solve's dropout masks), differentiable in f's parameters."""
        z = result.fixed_point.detach().requires_grad_()
        with torch.enable_grad():
            scope.start_iteration()
            return jac_reg(f(z), z, vecs=self.jacobian_vectors, create_graph=True)

    def _attach_implicit_gradient(self, f, result: DEQSolveResult, scope, adjoint_guess=None) -> DEQSolveResult:
        """z_out = f(z*) (one more evaluation, with graph) whose backward solves the adjoint
        fixed point g = J^T g + dL/dz_out to b_tol (`fairchem_deq.models.adjoint`: TorchDEQ's
        IFT, started from `adjoint_guess` when given): the exact derivative of z* with respect
        to f's inputs. The record (statistics, solution) is `result.adjoint` and
        `last_adjoint`, filled when the gradient is taken."""
        record = AdjointRecord(adjoint_guess)
        self.last_adjoint = record

        def untracked(z):
            scope.start_iteration()
            return f(z)

        with torch.enable_grad():
            z_out = attach_adjoint(untracked, result.fixed_point, self._b_solver, self._b_kwargs, record)
        return replace(result, fixed_point=z_out, states=[z_out], adjoint=record)

    def _propagate(self, f, z0, scope, propagation: Propagation, contraction, warm) -> DEQSolveResult:
        """k evaluations from the warm start z0; rows whose error estimate exceeds the guard
        are solved to the eval_warm tolerance from the carried state (`propagated` False,
        `nstep` k + that solve's)."""
        rules = self._rules("eval_warm", warm, z0.device)
        tracked = TrackedFunction(f, z0, rules, scope, prior=contraction)
        scope.start_solve()
        output, carry = propagate(tracked, z0, propagation)
        tracked.recording = False
        stats = tracked.stats(output)
        passed = (stats["error_estimate"] < propagation.guard) & stats["finite"]
        steps = torch.full_like(stats["nstep"], propagation.evaluations)
        stats.update(nstep=steps, converged=passed, propagated=passed.clone())
        if bool(passed.all()):
            return DEQSolveResult(output, [output], stats, carry=carry)
        solved = self._solve(f, torch.nan_to_num(carry.detach()), "eval_warm", scope, contraction, None, warm)
        keep = per_row(passed, z0)
        combined = {
            key: torch.where(passed, value, solved.stats[key])
            for key, value in stats.items()
            if value.dim() == 1 and key in solved.stats
        }
        combined["nstep"] = torch.where(passed, steps, steps + solved.stats["nstep"])
        combined["propagated"] = passed
        combined["nfe"] = stats["nfe"] + solved.stats["nfe"]
        fixed_point = torch.where(keep, output, solved.fixed_point)
        return DEQSolveResult(fixed_point, [fixed_point], combined, carry=torch.where(keep, carry, solved.fixed_point))

    def _phase(self, warm: torch.Tensor) -> str:
        """The solve's phase: train, eval_warm / eval_cold (every row alike) or eval_mixed."""
        if self.training:
            return "train"
        if bool(warm.all()):
            return "eval_warm"
        return "eval_mixed" if bool(warm.any()) else "eval_cold"

    def _rules(self, phase: str, warm: torch.Tensor, device) -> RowRules:
        if phase != "eval_mixed":
            return RowRules.of([self.options.phase(phase)] * len(warm), device)
        cold, hot = self.options.eval_cold, self.options.eval_warm
        return RowRules.of([hot if w else cold for w in warm.tolist()], device)

    def _solve(self, f, z0, phase, scope, contraction=None, solver_state=None, warm=None) -> DEQSolveResult:
        warm = torch.zeros(z0.shape[0], dtype=torch.bool) if warm is None else warm
        rules = self._rules(phase, warm, z0.device)
        evaluating = not self.training
        tracked = TrackedFunction(f, z0, rules, scope, exit_early=evaluating, keep_best=evaluating, prior=contraction)
        scope.start_solve()
        # f_max_iter per call: TorchDEQ's sliced core otherwise keeps the iteration plan it
        # computed at construction, and a changed max_iter (set_phase) would be ignored
        kwargs = dict(self.options.solver_kwargs, f_max_iter=rules.max_iter)
        # a reusable solver state (evaluation only): the solver updates this object in
        # place, so it holds the latest model even if the early exit below ends the solve
        state = None
        if evaluating and self.state_type is not None:
            state = self.state_type.from_rows(z0, solver_state, self.options.solver_kwargs)
            kwargs["state"] = state
        try:
            states, _ = self.cores[f"phase_{phase}"](tracked, z0, solver_kwargs=kwargs)
        except AllConverged:
            pass
        tracked.recording = False
        if evaluating:  # the lowest-residual evaluation, which the statistics describe
            states = [tracked.best]
        states = [s.reshape(z0.shape) for s in states]
        stats = tracked.stats(states[-1])
        if state is None:
            return DEQSolveResult(states[-1], states, stats)
        stats["state_reused"] = state.reused | state.dropped  # started from a handed-in state
        stats["state_dropped"] = state.dropped.clone()  # ... which the solver's safeguard dropped
        return DEQSolveResult(states[-1], states, stats, state.columns(z0.shape[1:]))

    def _retry_cold(self, f, warm: DEQSolveResult, scope, bad: torch.Tensor, contraction=None) -> DEQSolveResult:
        """Re-solves the rows `bad` (warm starts that failed) from zero with the eval_cold
        settings; the other rows start from their solution."""
        z0 = torch.where(per_row(bad, warm.fixed_point), 0.0, warm.fixed_point)
        z0 = torch.nan_to_num(z0.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        # failed structures also restart the solver's own state (converged ones keep theirs)
        state = None
        if warm.solver_state is not None:
            state = tuple(torch.where(per_row(bad, t), 0.0, t) for t in warm.solver_state)
        retry = self._solve(f, z0, "eval_cold", scope, contraction, state)
        stats = dict(retry.stats)
        stats["nstep"] = torch.where(bad, warm.stats["nfe"] + retry.stats["nstep"], warm.stats["nstep"])
        stats["fallback"] = bad
        stats["nfe"] = warm.stats["nfe"] + retry.stats["nfe"]
        for key in ("state_reused", "state_dropped"):
            if key in warm.stats:
                stats[key] = warm.stats[key]
        logging.warning(
            "DEQ warm start failed for %d of %d structures; re-solved from zero",
            int(bad.sum()),
            len(bad),
        )
        return DEQSolveResult(retry.fixed_point, retry.states, stats, retry.solver_state)

    def _check(self, result: DEQSolveResult, phase: str) -> None:
        stats = result.stats
        bad_finite = ~stats["finite"]
        diverged_here = bad_finite.any()
        diverged = diverged_here
        if self.training and self.options.on_diverge == "raise":
            # DDP training runs in lockstep: one rank raising alone would leave the others
            # waiting in the gradient all-reduce forever, so every rank raises together
            diverged = _on_any_rank(diverged_here)
        if bool(diverged):
            idx = torch.nonzero(bad_finite).flatten().tolist()
            where = f"structure(s) {idx} of the batch" if bool(diverged_here) else "a batch of another DDP rank"
            msg = (
                f"DEQ solve ({phase}, solver {self.options.solver}) diverged: non-finite fixed "
                f"point for {where}. Lower the learning rate, use a "
                f"smaller tolerance/iteration cap, or set deq.on_diverge: warn to continue."
            )
            if self.options.on_diverge == "raise":
                raise DEQDivergenceError(msg)
            logging.warning(msg)
        elif not self.training and not bool(stats["converged"].all()):
            n_bad = int((~stats["converged"]).sum())
            settings = self.options.phase("eval_cold" if phase == "eval_mixed" else phase)
            logging.warning(
                "DEQ solve (%s) did not reach tol %.1e (%s) within %d iterations for %d of %d "
                "structures (worst %s %.3e)",
                phase,
                settings.tol,
                settings.stop_mode,
                settings.max_iter,
                n_bad,
                len(stats["converged"]),
                REPORTED[settings.stop_mode],
                float(stats[REPORTED[settings.stop_mode]].max()),
            )
