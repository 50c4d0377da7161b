"""The evaluation tracker: per-structure stop rules and statistics measured inside f.

`TrackedFunction` wraps f for one solve: it marks iterations for the solve scope, records
each structure's residuals, keeps the lowest-residual evaluated state (the state an
evaluation solve returns), estimates f's contraction factor per structure and, in
evaluation, ends the solve at the first evaluation where every structure meets its own
rule (`RowRules`: a batch may mix warm rows, judged by eval_warm, with cold ones). The
stop rules ("rel", "abs", "error") are described in `fairchem_deq.solve.settings.SolveSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import per_row
from .scope import SolveScope
from .settings import SolveSettings

EPS = 1e-9
NEVER = 1e-300  # a tolerance TorchDEQ's own stop check never meets
# the statistic each stop_mode tests against tol
REPORTED = {"rel": "rel_residual", "abs": "abs_residual", "error": "error_estimate"}


class AllConverged(Exception):
    """Raised from inside f to end a solve as soon as every structure meets its tolerance
    (the state returned is the tracked lowest-residual one)."""


# secant ratios over which the contraction estimate takes its maximum (the newest ones)
_Q_WINDOW = 2


def torchdeq_stop(phase: str, settings: SolveSettings) -> tuple[float, str]:
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
class RowRules:
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
    def of(cls, rows: list[SolveSettings], device) -> RowRules:
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


class TrackedFunction:
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
        rules: RowRules,
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
                raise AllConverged
        return fz

    @torch.no_grad()
    def _record(self, z, fz) -> torch.Tensor:
        self.nfe += 1
        diff = (fz - z).flatten(1).norm(dim=1)
        rel = diff / (fz.flatten(1).norm(dim=1) + EPS)
        self._update_contraction(z, fz)
        rules = self.rules
        metric = torch.where(rules.by_abs, diff, rel)
        better = metric < self.lowest  # False for NaN: a NaN step never becomes "best"
        self.lowest = torch.where(better, metric, self.lowest)
        self.abs_at_lowest = torch.where(better, diff, self.abs_at_lowest)
        self.rel_at_lowest = torch.where(better, rel, self.rel_at_lowest)
        if self.best is not None:
            rows = per_row(better, self.best)
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
        ratio = fz.diff(dim=1).norm(dim=2) / step.clamp_min(EPS)
        valid = (step > EPS * (z[:, 1:].norm(dim=2) + 1.0)) & torch.isfinite(ratio)
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
