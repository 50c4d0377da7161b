"""fairchem's EquiformerV2 forces trainer with what our DEQ trainer adds to a training run:
`auto` readout constants (`readout_constants.py`), EMA warm-up (`ema_warmup.py`), atomic and
final checkpoints (`training_run.py`), so explicit baselines and DEQs share one recipe."""

from __future__ import annotations

from fairchem.core.common.registry import registry
from fairchem.core.models.equiformer_v2.trainers.forces_trainer import EquiformerV2ForcesTrainer

from .ema_warmup import EMAWarmupMixin
from .readout_constants import ReadoutConstantsMixin
from .training_run import TrainingRunMixin


@registry.register_trainer("explicit_equiformer_v2_forces")
class ExplicitEquiformerV2Trainer(TrainingRunMixin, ReadoutConstantsMixin, EMAWarmupMixin, EquiformerV2ForcesTrainer):
    def __init__(self, *args, name: str = "s2ef", **kwargs):
        # fairchem names the task "ocp" for a trainer it does not know (a dotted path)
        super().__init__(*args, name="s2ef" if name == "ocp" else name, **kwargs)
