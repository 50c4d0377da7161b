"""EMA with fairchem's warm-up (`optim.ema_warmup: True`).

fairchem builds its `ExponentialMovingAverage` without `use_num_updates`: at decay 0.999 the
evaluated weights still carry 0.999^n of the initial weights after n steps (24 % after
1,420), so a short run is judged on weights it has barely moved, and of two runs of equal
CPU time the one with fewer (costlier) steps is penalised. With the warm-up the decay is
min(decay, (1 + n) / (10 + n)): the average forgets the initialisation within a few steps.
"""

from __future__ import annotations

from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage


def initial_weight_share(decay: float, steps: int, warmup: bool) -> float:
    """Weight of the initial parameters in the EMA after `steps` updates."""
    share = 1.0
    for n in range(steps):
        share *= min(decay, (1 + n) / (10 + n)) if warmup else decay
    return share


class EMAWarmupMixin:
    def load_extras(self) -> None:
        super().load_extras()
        if getattr(self, "ema", None) is not None and self.config["optim"].get("ema_warmup", False):
            self.ema = ExponentialMovingAverage(self.model.parameters(), self.ema_decay, use_num_updates=True)
