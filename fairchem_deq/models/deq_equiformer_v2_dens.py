"""DEQuiformer with DeNS (denoising non-equilibrium structures, Liao et al. 2024).

Multiple inheritance, no copied code: `DEQEquiformerV2Backbone` comes first in the MRO, so
its constructor wraps the blocks into the fixed-point layer and its `forward` prepares the
solve; fairchem's `EqV2DeNSBackbone` builds the force-encoding module and its `forward`
adds the encoded forces (noisy structures only) to the node embedding BEFORE the block
loop. That sum is what the fixed-point layer receives as its injection x, so the fixed
point of a noisy structure sees the forces. On clean structures the encoding is zero (plus
the encoder's constant bias) and the model is a plain DEQuiformer.

Use with fairchem's DeNS heads (`eqV2_DeNS_scalar_head`, `eqV2_DeNS_vector_head`) and
`fairchem_deq.trainers.DEQDeNSTrainer`.
"""

from __future__ import annotations

from fairchem.core.common.registry import registry
from fairchem.core.models.equiformer_v2.equiformer_v2_dens import EqV2DeNSBackbone

from .deq_equiformer_v2 import DEQEquiformerV2Backbone


@registry.register_model("deq_equiformer_v2_dens_backbone")
class DEQEquiformerV2DeNSBackbone(DEQEquiformerV2Backbone, EqV2DeNSBackbone):
    """`DEQEquiformerV2Backbone`'s arguments plus DeNS's `use_force_encoding` and
    `use_noise_schedule_sigma_encoding` (see fairchem's `EqV2DeNSBackbone`)."""

    def __init__(self, *args, direct_forces: bool = True, **kwargs):
        if not direct_forces:
            raise ValueError(
                "DeNS needs direct forces: its vector head predicts the added noise on noisy "
                "structures, which is not an energy gradient; drop direct_forces: False"
            )
        super().__init__(*args, direct_forces=True, **kwargs)
