"""Trainers: the warm-start-aware DEQForcesTrainer (registered as `deq_forces`), its DeNS
variant DEQDeNSTrainer (`deq_dens`), and ExplicitEquiformerV2Trainer
(`explicit_equiformer_v2_forces`) for the explicit baselines, trained by the same recipe."""

from .deq_dens_trainer import DEQDeNSTrainer
from .deq_forces_trainer import DEQForcesTrainer
from .explicit_forces_trainer import ExplicitEquiformerV2Trainer
from .trajectory_sampler import TrajectoryBatchSampler

__all__ = [
    "DEQDeNSTrainer",
    "DEQForcesTrainer",
    "ExplicitEquiformerV2Trainer",
    "TrajectoryBatchSampler",
]
