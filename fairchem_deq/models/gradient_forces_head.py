"""Energy head whose forces are minus the energy gradient (energy-conserving forces).

fairchem 1.10's EquiformerV2 predicts forces with a direct head only, so MD with it (and
with the paper's DEQuiformer) does not conserve energy. This head reuses fairchem's
`EqV2ScalarHead` for the energy and differentiates it with respect to the positions.
Through a DEQ backbone the derivative runs through the fixed point: implicit
differentiation in evaluation, the k-step phantom gradient in training (see
`DEQEquiformerV2Backbone`). In training the graph is kept (`create_graph`), so a force
loss trains the model through the gradient.

Use with `pass_through_head_outputs: True` and a backbone with `direct_forces: False`.
"""

from __future__ import annotations

import torch
from fairchem.core.common.registry import registry
from fairchem.core.models.equiformer_v2.heads.scalar import EqV2ScalarHead


@registry.register_model("deq_energy_gradient_forces_head")
class EnergyGradientForcesHead(EqV2ScalarHead):
    """Returns {"energy": E, "forces": -dE/dpos}."""

    def __init__(self, backbone, reduce: str = "sum"):
        super().__init__(backbone, output_name="energy", reduce=reduce)
        if getattr(backbone, "direct_forces", True):
            raise ValueError(
                "deq_energy_gradient_forces_head needs the backbone to build a graph from the "
                "positions: set model.backbone.direct_forces: False"
            )

    def forward(self, data, emb) -> dict[str, torch.Tensor]:
        if not data.pos.requires_grad:
            raise RuntimeError(
                "positions do not require grad: the backbone did not run with "
                "direct_forces: False, so forces cannot be taken as -dE/dpos"
            )
        with torch.enable_grad():
            energy = super().forward(data, emb)["energy"]
            (grad,) = torch.autograd.grad(energy.sum(), data.pos, create_graph=self.training)
        return {"energy": energy if self.training else energy.detach(), "forces": -grad}
