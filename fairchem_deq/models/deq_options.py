"""`DEQBackboneOptions`: the `model.backbone.deq` block of the config: solver, per-phase settings, gradient rule.

Three phases have their own solver settings, as in the paper: `train`, `eval_cold`
(evaluation from z0 = 0) and `eval_warm` (evaluation started from a previous fixed point;
the paper loosened its tolerance, the default here keeps the cold one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fairchem_deq.config.blocks import parse_options
from fairchem_deq.solve.settings import (
    ON_DIVERGE,
    PHASES,
    STOP_MODES,
    SolveSettings,
    registered_solvers,
)

from .injections import get_injection


@dataclass
class DEQBackboneOptions:
    """Parsed `deq:` block. Unknown keys are an error (a typo must not be silently ignored)."""

    solver: str = "anderson"
    train: SolveSettings = field(default_factory=SolveSettings)
    eval_cold: SolveSettings = field(default_factory=SolveSettings)
    # the paper loosened the warm-start tolerance (1e-1), which moves forces further from
    # the cold solve's; the default keeps the cold tolerance. Note that even rel 1e-2 does
    # not keep warm-vs-cold forces within the paper's 1 % Markov bound on ethanol (2.17 %
    # mean, benchmarks/RESULTS.md); rel 3e-3 does (0.56 %)
    eval_warm: SolveSettings = field(default_factory=SolveSettings)
    # the shipped recipe: an int k >= 1 is a k-step phantom gradient (1: the cheapest
    # training step at equal accuracy per step, benchmarks/RESULTS.md "Training recipe");
    # "ift" is the paper's implicit differentiation (the *_paper.yml configs, with
    # b_tol 1e-6 / b_stop_mode abs)
    grad: str | int = 1
    # the backward (adjoint) solve: of grad "ift" in training, and of energy-gradient
    # forces in evaluation (the shipped *_conservative configs' relative 1e-4)
    b_tol: float = 1e-4
    b_max_iter: int = 40
    b_solver: str = "fixed_point_iter"
    b_stop_mode: str = "rel"
    # number of solver states returned in training (>1 for the fixed-point-correction loss)
    n_states: int = 1
    # extra keyword arguments of the TorchDEQ solver (anderson: m, lam, tau). TorchDEQ's
    # Anderson regulariser lam=1e-4 is absolute: at the residuals a force field needs it
    # swamps the mixing (many more iterations to a tight tolerance), so
    # anderson defaults to lam=1e-8 unless set here.
    solver_kwargs: dict[str, Any] = field(default_factory=dict)
    # scale applied at initialisation to the output projections of each block's residual
    # branches (attention `ga.proj`, FFN `so3_linear_2`): with fairchem's init a random
    # DEQuiformer is not contractive and no solver converges; 0.3 makes it one (1.0 keeps
    # fairchem's initialisation).
    branch_init_scale: float = 0.3
    injection: str = "norm_add"
    # under autocast (--amp): False runs the whole solve, f included, in float32 (the same
    # evaluations as without autocast); True lets f's blocks run in half precision (faster
    # on a GPU, but a residual floor: see fairchem_deq.solve.precision); the solver's own
    # arithmetic is float32 either way
    solve_under_autocast: bool = False
    # a warm-started solve that fails (not converged or non-finite) is redone from zero
    fallback_cold_start: bool = True
    # what to do with NaN/inf fixed points after any fallback
    on_diverge: str = "raise"

    def __post_init__(self):
        solvers = registered_solvers()
        for name in ("solver", "b_solver"):
            if getattr(self, name) not in solvers:
                raise ValueError(
                    f"Unknown DEQ {name} {getattr(self, name)!r}; choose one of {solvers} "
                    "(TorchDEQ's solver registry: torchdeq.solver.register_solver adds one)"
                )
        for phase in PHASES:
            value = getattr(self, phase)
            if isinstance(value, dict):
                setattr(self, phase, parse_options(SolveSettings, value, f"deq.{phase}"))
        if not (self.grad == "ift" or (isinstance(self.grad, int) and self.grad >= 1)):
            raise ValueError(f"DEQ grad must be 'ift' or an int >= 1 (phantom steps), got {self.grad!r}")
        if self.b_stop_mode not in STOP_MODES:
            raise ValueError(f"Unknown DEQ b_stop_mode {self.b_stop_mode!r}; choose one of {STOP_MODES}")
        get_injection(self.injection)  # an unknown name fails with the other deq keys
        if self.on_diverge not in ON_DIVERGE:
            raise ValueError(f"Unknown DEQ on_diverge {self.on_diverge!r}; choose one of {ON_DIVERGE}")
        if self.solver == "anderson":
            self.solver_kwargs = {"lam": 1e-8, **self.solver_kwargs}
        if int(self.n_states) < 1:
            raise ValueError(f"DEQ n_states must be >= 1, got {self.n_states}")
        for phase in PHASES:
            self.check_iterations(phase, self.phase(phase))

    def check_iterations(self, phase: str, settings: SolveSettings) -> None:
        """TorchDEQ's Anderson evaluates f twice before its loop `range(2, max_iter)` and
        returns the initial guess when that loop is empty. In evaluation the solver here
        returns the best evaluated f(z) anyway; in training TorchDEQ's own result is used,
        and the sliced core splits max_iter into n_states solves: each needs >= 3."""
        if self.solver != "anderson" or phase != "train":
            return
        per_solve = settings.max_iter // int(self.n_states)
        if per_solve < 3:
            raise ValueError(
                f"deq.train.max_iter {settings.max_iter} with n_states {self.n_states} gives "
                f"Anderson solves of {per_solve} iteration(s); TorchDEQ's Anderson then returns "
                f"its initial guess unchanged. Use max_iter >= {3 * int(self.n_states)}."
            )

    @classmethod
    def from_dict(cls, cfg: dict | DEQBackboneOptions | None) -> DEQBackboneOptions:
        if isinstance(cfg, DEQBackboneOptions):
            return cfg
        return parse_options(cls, cfg, "deq")

    def phase(self, name: str) -> SolveSettings:
        return getattr(self, name)
