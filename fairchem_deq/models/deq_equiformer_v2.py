"""DEQuiformer: fairchem's EquiformerV2 backbone with its block stack replaced by a
fixed-point solve z* = f(z*, x).

Composition, not a copy: `DEQEquiformerV2Backbone` runs `EquiformerV2Backbone.forward`
unchanged. Its constructor builds fairchem's `num_layers` TransBlockV2 blocks (1 = DEQ1,
2 = DEQ2) and puts them inside one `DEQFixedPointLayer`, which becomes the only entry of
`self.blocks`. So the parent computes, once per structure, the graph, the random edge
frame and Wigner-D matrices (fixed for the whole solve), the atom and edge-degree
embeddings (their sum is the injection x), calls our layer, which solves for the fixed
point, and applies its final norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fairchem.core.common import gp_utils
from fairchem.core.common.registry import registry
from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone
from fairchem.core.models.equiformer_v2.so3 import SO3_Embedding
from torch import nn

from .deq_config import PHASES, DEQConfig
from .deq_solver import DEQSolveResult, StructureDEQSolver
from .injection import get_injection
from .padded_layout import PaddedLayout
from .solve_scope import SolveScope, attach_solve_scope


@dataclass
class _SolveInputs:
    natoms: torch.Tensor
    warm_start: torch.Tensor | None


class DEQFixedPointLayer(nn.Module):
    """Stands where EquiformerV2's block loop calls `blocks[i](x, ...)`; returns z*."""

    def __init__(self, blocks: nn.ModuleList, config: DEQConfig):
        super().__init__()
        self.blocks = blocks
        self.injection = get_injection(config.injection)
        self.solver = StructureDEQSolver(config)
        self.scope = SolveScope(attach_solve_scope(self.blocks))
        self._inputs: _SolveInputs | None = None
        self.last_layout: PaddedLayout | None = None
        self.last_result: DEQSolveResult | None = None

    def prepare(self, natoms: torch.Tensor, warm_start: torch.Tensor | None) -> None:
        self._inputs = _SolveInputs(natoms, warm_start)

    def forward(self, x, atomic_numbers, edge_distance, edge_index, batch, node_offset=0):
        if self._inputs is None:
            raise RuntimeError("DEQFixedPointLayer.prepare() must be called before forward")
        inputs, self._inputs = self._inputs, None
        layout = PaddedLayout(inputs.natoms)
        x_inj = x.embedding
        if inputs.warm_start is not None and inputs.warm_start.shape != x_inj.shape:
            raise ValueError(
                f"fixed_point warm start has shape {tuple(inputs.warm_start.shape)}, expected "
                f"{tuple(x_inj.shape)} ([n_atoms, (lmax+1)^2, sphere_channels]); the structure "
                "or the model changed since it was computed"
            )

        def f(z_rows: torch.Tensor) -> torch.Tensor:
            z = self.injection(layout.unpad(z_rows), x_inj)
            emb = SO3_Embedding(0, x.lmax_list.copy(), x.num_channels, z.device, z.dtype)
            emb.set_embedding(z)
            for block in self.blocks:
                emb = block(
                    emb, atomic_numbers, edge_distance, edge_index,
                    batch=batch, node_offset=node_offset,
                )
            return layout.pad(emb.embedding)

        warm = inputs.warm_start is not None
        if warm:
            z0 = layout.pad(inputs.warm_start.detach().to(x_inj.dtype))
            # rows left at zero are cold starts: the batch then keeps the cold tolerance
            warm = bool((z0.flatten(1) != 0).any(dim=1).all())
        else:
            z0 = x_inj.new_zeros((layout.num_structures, layout.n_max, *x_inj.shape[1:]))
        # energy-gradient forces: z* must carry the positions' graph (edge distances)
        track = not self.training and torch.is_grad_enabled() and edge_distance.requires_grad
        result = self.solver(f, z0, warm, self.scope, track_inputs=track)
        self.last_layout, self.last_result = layout, result
        out = SO3_Embedding(0, x.lmax_list.copy(), x.num_channels, x_inj.device, x_inj.dtype)
        out.set_embedding(layout.unpad(result.fixed_point))
        return out


@registry.register_model("deq_equiformer_v2_backbone")
class DEQEquiformerV2Backbone(EquiformerV2Backbone):
    """EquiformerV2Backbone's arguments plus `deq` (see `DEQConfig`).

    Reads an optional batch attribute `fixed_point` [n_atoms, (lmax+1)^2, C] as the initial
    guess (warm start). Adds to the backbone output: `fixed_point` (detached, same shape),
    `deq_stats` (per-structure tensors nstep, abs_residual, rel_residual, converged, finite,
    fallback; scalar nfe) and, in training with deq.n_states > 1, `deq_states`: the
    intermediate solver states as normed SO3_Embeddings for the fixed-point-correction loss.
    """

    def __init__(
        self,
        *args,
        num_layers: int = 1,
        deq: dict | None = None,
        direct_forces: bool = True,
        **kwargs,
    ):
        super().__init__(*args, num_layers=num_layers, **kwargs)
        # fairchem's EquiformerV2Backbone forces autograd on in forward (its
        # conditional_grad sees no `direct_forces`); with forces from a head that only costs
        # time at inference, so it is off unless forces are taken as energy gradients
        # (direct_forces: False, with fairchem_deq's deq_energy_gradient_forces_head).
        self.direct_forces = direct_forces
        if self.num_resolutions != 1:
            raise ValueError("DEQEquiformerV2Backbone supports a single resolution (one lmax)")
        if self.activation_checkpoint:
            raise ValueError("activation_checkpoint is meaningless for a DEQ backbone: "
                             "implicit gradients store no solver activations")
        self.deq_config = DEQConfig.from_dict(deq)
        if not direct_forces and self.deq_config.grad == "ift":
            raise ValueError(
                "energy-gradient forces (direct_forces: False) train through a k-step phantom "
                "gradient of the fixed point (a force loss needs second derivatives, which "
                "TorchDEQ's implicit backward does not provide): set deq.grad to an int, e.g. 6. "
                "Evaluation still differentiates z* implicitly (exact to deq.b_tol)."
            )
        _scale_branch_outputs(self.blocks, self.deq_config.branch_init_scale)
        self.blocks = nn.ModuleList([DEQFixedPointLayer(self.blocks, self.deq_config)])
        self.num_layers = 1  # the parent's block loop calls the fixed-point layer once

    def set_solver_settings(self, phase: str, **changes) -> None:
        """E.g. set_solver_settings("eval_warm", tol=1e-3): phases train/eval_cold/eval_warm."""
        if phase not in PHASES:
            raise ValueError(f"Unknown DEQ phase {phase!r}; choose one of {PHASES}")
        self.deq_layer.solver.set_phase(phase, **changes)

    @property
    def deq_layer(self) -> DEQFixedPointLayer:
        return self.blocks[0]

    def forward(self, data) -> dict:
        if gp_utils.initialized():
            raise NotImplementedError("graph parallelism is not supported by the DEQ backbone")
        warm_start = getattr(data, "fixed_point", None)
        if self.regress_forces and not self.direct_forces and not data.pos.requires_grad:
            data.pos.requires_grad_(True)  # forces = -dE/dpos: the graph must start here
        self.deq_layer.prepare(data.natoms, warm_start)
        out = super().forward(data)
        layer = self.deq_layer
        layout, result = layer.last_layout, layer.last_result
        out["fixed_point"] = layout.unpad(result.fixed_point).detach()
        out["deq_stats"] = result.stats
        if self.training and len(result.states) > 1:
            out["deq_states"] = [self._normed(layout.unpad(s)) for s in result.states[:-1]]
        self.last_output = out  # read by DEQForcesTrainer (hydra returns head outputs only)
        return out

    def _normed(self, z: torch.Tensor) -> SO3_Embedding:
        emb = SO3_Embedding(0, self.lmax_list.copy(), self.sphere_channels, z.device, z.dtype)
        emb.set_embedding(self.norm(z))
        return emb


@torch.no_grad()
def _scale_branch_outputs(blocks: nn.ModuleList, scale: float) -> None:
    """Shrinks each residual branch's last projection so that f starts contractive."""
    if scale == 1.0:
        return
    for block in blocks:
        for linear in (block.ga.proj, block.ffn.so3_linear_2):
            linear.weight.mul_(scale)
            if linear.bias is not None:
                linear.bias.mul_(scale)
