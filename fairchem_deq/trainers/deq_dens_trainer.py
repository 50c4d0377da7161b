"""DEQDeNSTrainer: DEQForcesTrainer + fairchem's DeNS trainer (`equiformerv2_dens`).

Method resolution order: DEQDeNSTrainer -> DEQForcesTrainer -> DeNSPaperLoss ->
DenoisingForcesTrainer -> EquiformerV2ForcesTrainer -> OCPTrainer. So fairchem's DeNS
`train` loop noises a fraction of the training batches, and every call it makes goes
through the DEQ overrides first: `_forward` (fixed-point cache, solver statistics),
`_compute_loss` (the DeNS loss, with fairchem's duplicated force term removed, see
`dens_loss.py`, then the fixed-point-correction term), `_compute_metrics` (DeNS metrics
such as `denoising_pos_mae`, then solver statistics). `validate`, `predict` and `run_relaxations`
are DEQForcesTrainer's (trajectory order, warm starts, statistics) on top of fairchem's
code; their batches come straight from the loaders, never noised, so clean structures
take the normal S2EF path of the backbone and heads.
"""

from __future__ import annotations

from fairchem.core.common.registry import registry
from fairchem.core.models.equiformer_v2.equiformer_v2_dens import DeNSVectorHead, EqV2DeNSBackbone

from .dens_loss import DeNSPaperLoss
from .dens_options import check_dens_options
from .deq_forces_trainer import DEQForcesTrainer


@registry.register_trainer("deq_dens")
class DEQDeNSTrainer(DEQForcesTrainer, DeNSPaperLoss):
    def __init__(self, *args, **kwargs):
        # fairchem's trainers are built with keyword arguments; `optimizer` is the optim block
        optim = kwargs["optimizer"] if "optimizer" in kwargs else args[4]
        check_dens_options(optim)
        super().__init__(*args, **kwargs)
        self._check_dens_model()

    def _check_dens_model(self) -> None:
        """Without a DeNS backbone and vector head, noisy batches would train the force head
        to output noise with no force encoding: fail instead of training silently wrong."""
        backbone = self._backbone
        heads = self._unwrapped_model.output_heads
        if not isinstance(backbone, EqV2DeNSBackbone):
            raise TypeError(
                "DEQDeNSTrainer needs model.backbone.model: "
                "fairchem_deq.models.DEQEquiformerV2DeNSBackbone (the DeNS force encoding)"
            )
        if not any(isinstance(head, DeNSVectorHead) for head in heads.values()):
            raise TypeError(
                "DEQDeNSTrainer needs fairchem's DeNS force head: model.heads.forces.module: "
                "eqV2_DeNS_vector_head (it has the separate noise-prediction block)"
            )
