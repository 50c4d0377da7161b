"""What one fixed-point solve is told: per-phase settings and the options the solver reads.

`SolveSettings` is one phase's forward-solve settings (a `train`, `eval_cold` or
`eval_warm` entry of the config's `model.backbone.deq` block); `SolveOptions` is what
`StructureDEQSolver` reads of the whole block (`fairchem_deq.models.DEQBackboneOptions`
implements it and adds the model's own keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


def registered_solvers() -> list[str]:
    """The solver names TorchDEQ's registry knows now (`torchdeq.solver.register_solver`
    adds one), so a solver registered there is accepted by `deq.solver`."""
    from torchdeq import solver

    return sorted(solver._solvers)  # TorchDEQ 0.1.0 exposes its registry only as this dict


STOP_MODES = ("rel", "abs")  # TorchDEQ's own criteria (also b_stop_mode, the backward solve)
# forward-solve criteria: TorchDEQ's two plus "error" (an estimate of the distance to the
# fixed point, evaluated by StructureDEQSolver; see SolveSettings)
SOLVE_STOP_MODES = (*STOP_MODES, "error")
PHASES = ("train", "eval_cold", "eval_warm")
ON_DIVERGE = ("raise", "warn")


@dataclass
class SolveSettings:
    """One phase's forward-solve settings.

    stop_mode (per structure, on the evaluated state f(z_k) the solve returns):
      * "rel":   ||f(z_k) - z_k|| / ||f(z_k)|| < tol (the paper's rule);
      * "abs":   ||f(z_k) - z_k|| < tol;
      * "error": q/(1-q) * ||f(z_k) - z_k|| / ||f(z_k)|| < tol, the a-posteriori bound of a
        q-contraction on the distance ||f(z_k) - z*|| to the fixed point, relative to
        ||f(z_k)||. The residual alone does not bound that distance when f contracts weakly
        (q near 1: the bound is q/(1-q) times the residual). q is estimated per structure
        during the solve from secant ratios ||f(z_j) - f(z_{j-1})|| / ||z_j - z_{j-1}||
        (the ratio of successive residuals for plain fixed-point steps), the larger of the
        last two, clipped to [0, error_q_max]; before a second evaluation it is the caller's
        estimate from a previous solve of the structure, if handed in, else `error_q0`.
        Evaluation phases only end on this rule; in training the solve stops on TorchDEQ's
        relative residual at `tol` (as "rel") and only the statistics follow the rule.
    """

    max_iter: int = 40
    tol: float = 1e-2
    stop_mode: str = "rel"
    # "error" rule: contraction factor assumed before any secant exists (0.5: the bound
    # equals the relative residual, the "rel" rule), and the cap on the estimate (0.95: the
    # bound is at most 19 x the relative residual)
    error_q0: float = 0.5
    error_q_max: float = 0.95

    def __post_init__(self):
        if self.stop_mode not in SOLVE_STOP_MODES:
            raise ValueError(f"Unknown DEQ stop_mode {self.stop_mode!r}; choose one of {SOLVE_STOP_MODES}")
        if int(self.max_iter) < 1:
            raise ValueError(f"DEQ max_iter must be >= 1, got {self.max_iter}")
        if not float(self.tol) > 0:
            raise ValueError(f"DEQ tol must be > 0, got {self.tol}")
        self.max_iter, self.tol = int(self.max_iter), float(self.tol)
        self.error_q0, self.error_q_max = float(self.error_q0), float(self.error_q_max)
        if not 0.0 < self.error_q_max < 1.0:
            raise ValueError(f"DEQ error_q_max must be in (0, 1), got {self.error_q_max}")
        if not 0.0 <= self.error_q0 <= self.error_q_max:
            raise ValueError(f"DEQ error_q0 must be in [0, error_q_max={self.error_q_max}], got {self.error_q0}")


class SolveOptions(Protocol):
    """The `deq` block as the solver reads it (a dataclass: changes are validated by
    `dataclasses.replace`)."""

    solver: str
    solver_kwargs: dict[str, Any]
    train: SolveSettings
    eval_cold: SolveSettings
    eval_warm: SolveSettings
    grad: str | int
    b_solver: str
    b_tol: float
    b_max_iter: int
    b_stop_mode: str
    n_states: int
    solve_under_autocast: bool
    fallback_cold_start: bool
    on_diverge: str

    def phase(self, name: str) -> SolveSettings: ...

    def check_iterations(self, phase: str, settings: SolveSettings) -> None: ...
