"""The fixed-point solve, apart from the model it solves for.

- `solver`: `StructureDEQSolver`, TorchDEQ cores per phase (train / eval_cold / eval_warm),
  per-structure convergence, cold retry of a failed warm start, divergence checks;
- `tracker`: the evaluation tracker inside f (stop rules, statistics, contraction estimate);
- `settings`: one phase's `SolveSettings` and the `SolveOptions` the solver reads;
- `state`: the `SolverState` protocol of a solver whose own state is reused between solves;
- `broyden_reuse`: TorchDEQ solver "broyden_reuse" (registered on import), its `BroydenState`;
- `adjoint`: the implicit derivative of z* with a backward solve that can start warm;
- `precision`: the solve in float32 under autocast;
- `propagation`: a fixed number of evaluations per step instead of a converged solve;
- `layout`: one solver row per structure (`PaddedLayout`);
- `scope`: state that lives for one solve (per-solve caches, frozen dropout masks);
- `warm_start`: `WarmStart` in (one batch attribute), `DEQSolution` out (one backbone output).

Where to add: a stateless solver is a TorchDEQ solver function registered with
`torchdeq.solver.register_solver` (one file here, imported below); a solver whose state is
reused also sets `solver.state_type` to a class implementing `state.SolverState`.
"""

from .adjoint import AdjointRecord
from .broyden_reuse import BroydenState, broyden_reuse_solver
from .layout import PaddedLayout
from .propagation import PROPAGATIONS, Propagation
from .scope import SolveScope
from .settings import PHASES, SolveOptions, SolveSettings, registered_solvers
from .solver import DEQDivergenceError, DEQSolveResult, StructureDEQSolver
from .state import SolverState, solver_state_type
from .warm_start import WARM_START_ATTRIBUTE, DEQSolution, WarmStart

__all__ = [
    "PHASES",
    "PROPAGATIONS",
    "WARM_START_ATTRIBUTE",
    "AdjointRecord",
    "BroydenState",
    "DEQDivergenceError",
    "DEQSolution",
    "DEQSolveResult",
    "PaddedLayout",
    "Propagation",
    "SolveOptions",
    "SolveScope",
    "SolveSettings",
    "SolverState",
    "StructureDEQSolver",
    "WarmStart",
    "broyden_reuse_solver",
    "registered_solvers",
    "solver_state_type",
]
