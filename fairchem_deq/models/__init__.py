"""Models: the DEQuiformer backbone (registered as `deq_equiformer_v2_backbone`), its DeNS
variant, the `deq` config block (`DEQBackboneOptions`), the injections table and the
energy-gradient forces head. The solve itself is `fairchem_deq.solve`."""

from .deq_equiformer_v2 import DEQEquiformerV2Backbone, DEQFixedPointLayer
from .deq_equiformer_v2_dens import DEQEquiformerV2DeNSBackbone
from .deq_options import DEQBackboneOptions
from .gradient_forces_head import EnergyGradientForcesHead

__all__ = [
    "DEQBackboneOptions",
    "DEQEquiformerV2Backbone",
    "DEQEquiformerV2DeNSBackbone",
    "DEQFixedPointLayer",
    "EnergyGradientForcesHead",
]
