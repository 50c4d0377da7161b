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
  `state_type` attribute: "broyden_reuse", `broyden_reuse.py`): in evaluation a caller may
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
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn
from torchdeq import get_deq
from torchdeq.solver import get_solver

from .adjoint import AdjointRecord, attach_adjoint
from .deq_options import DEQBackboneOptions, SolveSettings
from .solve_scope import SolveScope

_EPS = 1e-9
_NEVER = 1e-300  # a tolerance TorchDEQ's own stop check never meets
# the statistic each stop_mode tests against tol
_REPORTED = {"rel": "rel_residual", "abs": "abs_residual", "error": "error_estimate"}


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


class _AllConverged(Exception):
    """Raised from inside f to end a solve as soon as every structure meets its tolerance
    (the state returned is the tracked lowest-residual one)."""


# secant ratios over which the contraction estimate takes its maximum (the newest ones)
_Q_WINDOW = 2


def _torchdeq_stop(phase: str, settings: SolveSettings) -> tuple[float, str]:
    """(f_tol, f_stop_mode) for TorchDEQ's core of one phase. TorchDEQ knows "rel"/"abs"
    only. For "error" in evaluation its own check must never end a solve before the error
    rule holds: relative residuals below tol * (1 - q_max) / q_max satisfy the rule for any
    estimate q <= q_max, so at such an evaluation the tracker inside f (which runs before
    TorchDEQ's check) has already ended the solve; /10 is a margin for rounding. In training
    the solve stops on the relative residual at tol (the tracker never ends training solves)."""
    if settings.stop_mode != "error":
        return settings.tol, settings.stop_mode
    if phase == "train":
        return settings.tol, "rel"
    q_max = settings.error_q_max
    return settings.tol * (1.0 - q_max) / q_max / 10.0, "rel"


@dataclass
class _RowRules:
    """Each solver row's stop rule. A batch may mix warm-started structures (eval_warm
    settings) with cold ones (eval_cold): every row is judged by its own phase's tolerance,
    stop mode and contraction bounds; the solve runs to the larger iteration cap."""

    tol: torch.Tensor  # [rows]
    by_abs: torch.Tensor  # [rows] bool: stop_mode "abs"
    by_error: torch.Tensor  # [rows] bool: stop_mode "error"
    q0: torch.Tensor  # [rows] error_q0
    q_max: torch.Tensor  # [rows] error_q_max
    max_iter: int

    @classmethod
    def of(cls, rows: list[SolveSettings], device) -> _RowRules:
        def column(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(
            tol=column([s.tol for s in rows]),
            by_abs=column([s.stop_mode == "abs" for s in rows], torch.bool),
            by_error=column([s.stop_mode == "error" for s in rows], torch.bool),
            q0=column([s.error_q0 for s in rows]),
            q_max=column([s.error_q_max for s in rows]),
            max_iter=max(s.max_iter for s in rows),
        )


def _bound_factor(q: torch.Tensor) -> torch.Tensor:
    """q / (1 - q): ||f(z) - z*|| <= q/(1-q) ||f(z) - z|| for a q-contraction f."""
    return q / (1.0 - q)


class _TrackedFunction:
    """Wraps f: marks iterations for the solve scope, records per-structure residuals and
    keeps, per structure, the evaluated f(z) with the lowest residual (the state the solve
    returns in evaluation, so that `converged` and the residuals describe exactly it).

    It also estimates, per structure, the contraction factor q of f from consecutive
    evaluations (secant ratio ||f(z_j) - f(z_{j-1})|| / ||z_j - z_{j-1}||; for a plain
    fixed-point step z_j = f(z_{j-1}) this is the ratio of successive residuals), taking the
    largest of the last `_Q_WINDOW` ratios clipped to [0, error_q_max]; with no ratio yet
    (first evaluation) q is the caller's `prior` or `error_q0`. The error estimate of the
    lowest-residual state is q/(1-q) x its relative residual, with the newest q (the best
    state is chosen by relative residual, so it is also the state of lowest estimate). With
    stop_mode "error", that estimate is the convergence test; since a later q may be larger,
    a structure can lose its convergence again (its `nstep` is then the evaluation from which
    the rule held to the end).

    Only the solver's own evaluations count: they run without autograd, whereas the
    gradient rule's evaluations after the solve (TorchDEQ's phantom steps, the IFT's f(z*))
    run with it. In evaluation the solve stops at the first evaluation where every structure
    meets the tolerance (TorchDEQ's Anderson would otherwise spend at least 3 evaluations
    and check only after the third: a warm start could never beat a cold one)."""

    def __init__(
        self,
        f,
        z0: torch.Tensor,
        rules: _RowRules,
        scope: SolveScope,
        exit_early: bool = False,
        keep_best: bool = False,
        prior: torch.Tensor | float | None = None,
    ):
        self.f, self.shape, self.rules, self.scope = f, z0.shape, rules, scope
        self.exit_early = exit_early
        self.recording = True
        self.nfe = 0
        rows, device = z0.shape[0], z0.device
        self.first_converged = torch.zeros(rows, dtype=torch.long, device=device)
        self.lowest = torch.full((rows,), float("inf"), device=device)
        self.abs_at_lowest = torch.full((rows,), float("inf"), device=device)
        self.rel_at_lowest = torch.full((rows,), float("inf"), device=device)
        self.best = z0.detach().clone() if keep_best else None
        # contraction estimate: copies of the newest _Q_WINDOW + 1 evaluations (z, f(z)),
        # whose secant ratios are taken when the estimate is asked for (every evaluation
        # under stop_mode "error", else once for the statistics); the prior stands in until
        # a ratio exists
        self.recent: list[tuple[torch.Tensor, torch.Tensor]] = []
        prior = rules.q0 if prior is None else prior
        prior = torch.as_tensor(prior, dtype=torch.float32, device=device).reshape(-1).expand(rows)
        prior = torch.where(torch.isnan(prior), rules.q0, prior)
        self.prior = torch.minimum(prior.clamp_min(0.0), rules.q_max)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.scope.start_iteration()
        fz = self.f(z.reshape(self.shape)).reshape(z.shape)
        if self.recording and not torch.is_grad_enabled():
            converged_now = self._record(z, fz)
            if self.exit_early and bool(converged_now.all()):
                raise _AllConverged
        return fz

    @torch.no_grad()
    def _record(self, z, fz) -> torch.Tensor:
        self.nfe += 1
        diff = (fz - z).flatten(1).norm(dim=1)
        rel = diff / (fz.flatten(1).norm(dim=1) + _EPS)
        self._update_contraction(z, fz)
        rules = self.rules
        metric = torch.where(rules.by_abs, diff, rel)
        better = metric < self.lowest  # False for NaN: a NaN step never becomes "best"
        self.lowest = torch.where(better, metric, self.lowest)
        self.abs_at_lowest = torch.where(better, diff, self.abs_at_lowest)
        self.rel_at_lowest = torch.where(better, rel, self.rel_at_lowest)
        if self.best is not None:
            rows = better.view(-1, *([1] * (self.best.dim() - 1)))
            self.best = torch.where(rows, fz.detach().reshape(self.shape), self.best)
        met = metric < rules.tol
        newly = (self.first_converged == 0) & met
        first = torch.where(newly, self.nfe, self.first_converged)
        if bool(rules.by_error.any()):
            met_error = self.error_estimate() < rules.tol  # of the best state, newest q
            # the rule must hold from nstep on: a grown q can undo an earlier convergence
            first_error = torch.where(
                met_error, torch.where(self.first_converged == 0, self.nfe, self.first_converged), 0
            )
            met = torch.where(rules.by_error, met_error, met)
            first = torch.where(rules.by_error, first_error, first)
        self.first_converged = first
        return met

    def _update_contraction(self, z, fz) -> None:
        """Keeps copies of this evaluation (solvers reuse their buffers) among the newest."""
        self.recent = [*self.recent[-_Q_WINDOW:], (z.detach().flatten(1).clone(), fz.detach().flatten(1).clone())]

    def secant_ratios(self) -> torch.Tensor:
        """[rows, _Q_WINDOW] secant ratios of the newest evaluations, oldest first (NaN: none;
        a vanishing step ||dz|| ~ 0 gives none)."""
        rows = self.shape[0]
        missing = _Q_WINDOW + 1 - len(self.recent)
        if missing >= _Q_WINDOW:
            return torch.full((rows, _Q_WINDOW), float("nan"), device=self.lowest.device)
        z = torch.stack([z for z, _ in self.recent], dim=1)  # [rows, k, D]
        fz = torch.stack([fz for _, fz in self.recent], dim=1)
        step = z.diff(dim=1).norm(dim=2)
        ratio = fz.diff(dim=1).norm(dim=2) / step.clamp_min(_EPS)
        valid = (step > _EPS * (z[:, 1:].norm(dim=2) + 1.0)) & torch.isfinite(ratio)
        ratio = torch.where(valid, ratio.float(), float("nan"))
        return torch.nn.functional.pad(ratio, (missing, 0), value=float("nan"))

    def contraction(self) -> torch.Tensor:
        """Per-structure estimate of f's contraction factor (see the class docstring)."""
        ratios = self.secant_ratios()
        known = ~torch.isnan(ratios)
        newest = torch.where(known, ratios, -1.0).amax(dim=1)
        q = torch.where(known.any(dim=1), newest, self.prior)
        return torch.minimum(q.clamp_min(0.0), self.rules.q_max)

    def error_estimate(self, q: torch.Tensor | None = None) -> torch.Tensor:
        """q/(1-q) x relative residual of the lowest-residual state: a bound on its relative
        distance ||f(z_k) - z*|| / ||f(z_k)|| to the fixed point if f is a q-contraction
        (q: `contraction()` unless the caller has it already)."""
        return _bound_factor(self.contraction() if q is None else q) * self.rel_at_lowest

    def stats(self, fixed_point: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-structure statistics of the returned state (the lowest-residual evaluation)."""
        q = self.contraction()
        error = self.error_estimate(q)
        converged = torch.where(self.rules.by_error, error, self.lowest) < self.rules.tol
        finite = torch.isfinite(fixed_point.detach().flatten(1)).all(dim=1) & torch.isfinite(self.lowest)
        return {
            "nstep": torch.where(converged, self.first_converged, self.nfe),
            "abs_residual": self.abs_at_lowest,
            "rel_residual": self.rel_at_lowest,
            "error_estimate": error,
            "contraction": q,
            "converged": converged & finite,
            "finite": finite,
            "fallback": torch.zeros_like(converged),
            "nfe": torch.tensor(self.nfe, device=converged.device),
        }


def float32_solver(f, device_type: str, f_under_autocast: bool = False):
    """Mixed precision (fairchem's --amp autocasts `_forward`; a user may wrap a model in
    autocast): the solve runs with autocast off, so its arithmetic (residuals, Anderson's
    Gram matrix and mixing, Broyden's products, the tolerance test) is float32. In half
    precision the Gram matrix of residual norms above ~256 overflows, and on the OC20 DEQ1
    width a rel 1e-4 solve never converges (40 evaluations, float32: 12). f runs in float32
    too unless `f_under_autocast` (deq.solve_under_autocast): then f keeps the caller's
    autocast (faster blocks) and returns float32, but its rounding sets a residual floor
    (measured on that width: float16 needs 29 evaluations to rel 1e-4, bfloat16 stalls at
    7e-4). -> (f to hand the solver, the context the solve runs in)."""
    if not torch.is_autocast_enabled(device_type):
        return f, nullcontext()
    if not f_under_autocast:
        return f, torch.autocast(device_type, enabled=False)
    dtype = torch.get_autocast_dtype(device_type)

    def f_autocast(z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            return f(z).float()

    return f_autocast, torch.autocast(device_type, enabled=False)


def _on_any_rank(flag: torch.Tensor) -> torch.Tensor:
    """Whether `flag` (a bool tensor) is set on any DDP rank (itself outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    value = flag.to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value[0] > 0


def solver_state_type(name: str):
    """The state class of a registered solver whose state can be reused between solves
    (its `state_type` attribute, e.g. BroydenState for "broyden_reuse"), else None."""
    return getattr(get_solver(name), "state_type", None)


class StructureDEQSolver(nn.Module):
    def __init__(self, options: DEQBackboneOptions):
        super().__init__()
        self.options = options
        self._build_cores()

        # evaluation's implicit derivative of z* (energy-gradient forces), b_* settings fixed
        self._b_solver = get_solver(options.b_solver)
        self.last_adjoint: AdjointRecord | None = None
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
                    f_tol=_torchdeq_stop(phase, s)[0],
                    f_stop_mode=_torchdeq_stop(phase, s)[1],
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
                    ("eval_mixed", replace(options.eval_cold, tol=_NEVER)),
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
        core.f_tol, core.f_stop_mode = _torchdeq_stop(phase, settings)
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
        e.g. the previous step's `result.adjoint.solution`."""
        warm = torch.as_tensor(warm_started, dtype=torch.bool).reshape(-1).expand(z0.shape[0]).cpu()
        phase = self._phase(warm)
        f, solver_precision = float32_solver(f, z0.device.type, self.options.solve_under_autocast)
        with solver_precision:
            result = self._solve(f, z0, phase, scope, contraction, solver_state, warm)
            if not self.training and self.options.fallback_cold_start:
                failed = warm.to(z0.device) & ~result.stats["converged"]
                if bool(failed.any()):
                    result = self._retry_cold(f, result, scope, failed, contraction)
            self._check(result, phase)
            if track_inputs and not self.training:
                result = self._attach_implicit_gradient(f, result, scope, adjoint_guess)
        return result

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

    def _phase(self, warm: torch.Tensor) -> str:
        """The solve's phase: train, eval_warm / eval_cold (every row alike) or eval_mixed."""
        if self.training:
            return "train"
        if bool(warm.all()):
            return "eval_warm"
        return "eval_mixed" if bool(warm.any()) else "eval_cold"

    def _rules(self, phase: str, warm: torch.Tensor, device) -> _RowRules:
        if phase != "eval_mixed":
            return _RowRules.of([self.options.phase(phase)] * len(warm), device)
        cold, hot = self.options.eval_cold, self.options.eval_warm
        return _RowRules.of([hot if w else cold for w in warm.tolist()], device)

    def _solve(self, f, z0, phase, scope, contraction=None, solver_state=None, warm=None) -> DEQSolveResult:
        warm = torch.zeros(z0.shape[0], dtype=torch.bool) if warm is None else warm
        rules = self._rules(phase, warm, z0.device)
        evaluating = not self.training
        tracked = _TrackedFunction(f, z0, rules, scope, exit_early=evaluating, keep_best=evaluating, prior=contraction)
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
        except _AllConverged:
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
        z0 = torch.where(bad.view(-1, *([1] * (warm.fixed_point.dim() - 1))), 0.0, warm.fixed_point)
        z0 = torch.nan_to_num(z0.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        # failed structures also restart the solver's own state (converged ones keep theirs)
        state = None
        if warm.solver_state is not None:
            state = tuple(torch.where(bad.view(-1, *([1] * (t.dim() - 1))), 0.0, t) for t in warm.solver_state)
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
                _REPORTED[settings.stop_mode],
                float(stats[_REPORTED[settings.stop_mode]].max()),
            )
