"""Trainers: the warm-start-aware DEQForcesTrainer (registered as `deq_forces`)."""

from .deq_forces_trainer import DEQForcesTrainer
from .fixed_point_cache import FixedPointCache
from .trajectory_sampler import TrajectoryBatchSampler

__all__ = ["DEQForcesTrainer", "FixedPointCache", "TrajectoryBatchSampler"]
