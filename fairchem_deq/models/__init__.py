"""Models: the DEQuiformer backbone (registered as `deq_equiformer_v2_backbone`) and the
TorchDEQ solver "broyden_reuse" (registered on import)."""

from .broyden_reuse import BroydenState, broyden_reuse_solver
from .deq_equiformer_v2 import DEQEquiformerV2Backbone, DEQFixedPointLayer
from .deq_equiformer_v2_dens import DEQEquiformerV2DeNSBackbone
from .deq_options import DEQBackboneOptions, SolveSettings
from .deq_solver import DEQDivergenceError, StructureDEQSolver
from .gradient_forces_head import EnergyGradientForcesHead

__all__ = [
    "BroydenState",
    "DEQBackboneOptions",
    "DEQDivergenceError",
    "DEQEquiformerV2Backbone",
    "DEQEquiformerV2DeNSBackbone",
    "DEQFixedPointLayer",
    "EnergyGradientForcesHead",
    "SolveSettings",
    "StructureDEQSolver",
    "broyden_reuse_solver",
]
