"""Trainers: the warm-start-aware DEQForcesTrainer (registered as `deq_forces`) and its DeNS
variant DEQDeNSTrainer (`deq_dens`)."""

from .deq_dens_trainer import DEQDeNSTrainer
from .deq_forces_trainer import DEQForcesTrainer
from .fixed_point_cache import FixedPointCache
from .trajectory_sampler import TrajectoryBatchSampler

__all__ = ["DEQDeNSTrainer", "DEQForcesTrainer", "FixedPointCache", "TrajectoryBatchSampler"]
