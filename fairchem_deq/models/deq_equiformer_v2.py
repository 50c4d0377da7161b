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

from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from fairchem.core.common import gp_utils
from fairchem.core.common.registry import registry
from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone
from fairchem.core.models.equiformer_v2.so3 import SO3_Embedding
from torch import nn

from fairchem_deq.solve import (
    WARM_START_ATTRIBUTE,
    DEQSolution,
    DEQSolveResult,
    PaddedLayout,
    SolveScope,
    StructureDEQSolver,
    WarmStart,
)

from .deq_options import PHASES, DEQBackboneOptions
from .edge_frames import edge_frames, replay_random
from .injections import get_injection
from .per_solve_modules import attach_per_solve_modules


class DEQFixedPointLayer(nn.Module):
    """Stands where EquiformerV2's block loop calls `blocks[i](x, ...)`; returns z*.

    The loop passes only node features and graph tensors, so what else one solve needs (the
    structure sizes, the warm start) and what it returns besides z* (statistics, states)
    travel in a `_Solve` record that `DEQEquiformerV2Backbone.forward` opens around the
    parent's forward (`solving`) and closes after it."""

    def __init__(self, blocks: nn.ModuleList, options: DEQBackboneOptions):
        super().__init__()
        self.blocks = blocks
        self.injection = get_injection(options.injection)
        self.solver = StructureDEQSolver(options)
        self.scope = SolveScope(attach_per_solve_modules(self.blocks))
        self._solve: _Solve | None = None

    @contextmanager
    def solving(self, natoms: torch.Tensor, warm_start: WarmStart | None):
        """The record of the one solve that runs inside this context."""
        self._solve = _Solve(PaddedLayout(natoms), warm_start or WarmStart.cold(len(natoms)))
        try:
            yield self._solve
        finally:
            self._solve = None

    def forward(self, x, atomic_numbers, edge_distance, edge_index, batch, node_offset=0):
        solve = self._solve
        if solve is None:
            raise RuntimeError("DEQFixedPointLayer runs inside DEQEquiformerV2Backbone.forward (solving())")
        layout, start = solve.layout, solve.warm_start
        guess = start.fixed_point
        # under autocast the embeddings may arrive in half precision: the solve is float32
        x_inj = x.embedding.float() if x.embedding.dtype in (torch.float16, torch.bfloat16) else x.embedding
        if guess is not None:
            _check_shape("initial guess", guess, x_inj)

        def f(z_rows: torch.Tensor) -> torch.Tensor:
            z = self.injection(layout.unpad(z_rows), x_inj)
            emb = SO3_Embedding(0, x.lmax_list.copy(), x.num_channels, z.device, z.dtype)
            emb.set_embedding(z)
            for block in self.blocks:
                emb = block(
                    emb,
                    atomic_numbers,
                    edge_distance,
                    edge_index,
                    batch=batch,
                    node_offset=node_offset,
                )
            return layout.pad(emb.embedding)

        if guess is not None:
            z0 = layout.pad(guess.detach().to(x_inj.dtype))
            # rows left at zero are cold starts: each row keeps its own phase's settings
            warm_started = (z0.flatten(1) != 0).any(dim=1)
        else:
            z0 = x_inj.new_zeros((layout.num_structures, layout.n_max, *x_inj.shape[1:]))
            warm_started = False
        # energy-gradient forces: z* must carry the positions' graph (edge distances)
        track = not self.training and torch.is_grad_enabled() and edge_distance.requires_grad
        adjoint_guess = None
        if track and start.adjoint is not None:
            _check_shape("initial adjoint", start.adjoint, x_inj)
            adjoint_guess = layout.pad(start.adjoint.detach().to(x_inj.dtype))
        solve.result = self.solver(
            f,
            z0,
            warm_started,
            self.scope,
            track_inputs=track,
            contraction=start.contraction,
            solver_state=self._padded_state(solve, x_inj),
            adjoint_guess=adjoint_guess,
            propagation=start.propagation,
        )
        if solve.result.adjoint is not None:
            solve.result.adjoint.unpad = layout.unpad
        out = SO3_Embedding(0, x.lmax_list.copy(), x.num_channels, x_inj.device, x_inj.dtype)
        out.set_embedding(layout.unpad(solve.result.fixed_point))
        return out

    def _padded_state(self, solve: _Solve, x_inj: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The solver's state handed in per atom ([n_atoms, (lmax+1)^2, C, m] each, zeros for
        structures without one) as solver rows [B, n_max, (lmax+1)^2, C, m]; None when there
        is none or the solver keeps no state (a state of another solver is ignored)."""
        state = solve.warm_start.solver_state
        if state is None or self.training or self.solver.state_type is None:
            return None
        for t in state:
            if t.shape[:-1] != x_inj.shape:
                raise ValueError(
                    f"solver state has shape {tuple(t.shape)}, expected {tuple(x_inj.shape)} + (rank,); "
                    "the structure or the model changed since it was computed"
                )
        return tuple(solve.layout.pad(t.detach().to(x_inj.dtype)) for t in state)


@registry.register_model("deq_equiformer_v2_backbone")
class DEQEquiformerV2Backbone(EquiformerV2Backbone):
    """EquiformerV2Backbone's arguments plus `deq` (see `DEQBackboneOptions`).

    Reads one optional batch attribute, `warm_start` (a `fairchem_deq.solve.WarmStart`, set
    by fairchem_deq.reuse; absent: every structure starts cold): the predicted fixed point
    (zero rows start cold), and where used the solver's own state (deq.solver:
    broyden_reuse, evaluation), the backward solve's adjoint (energy-gradient forces,
    evaluation) and the previous contraction estimate (the "error" stop rule's prior).
    Adds one entry to the backbone output, `deq`: a `fairchem_deq.solve.DEQSolution` (the
    fixed point, detached; per-structure statistics; the solver state; the adjoint record,
    whose `per_atom()` exists once the forces were taken; in training with
    deq.n_states > 1 the intermediate states as normed SO3_Embeddings for the
    fixed-point-correction loss).
    """

    # the config block it reads, relative to model.backbone (checked before a run starts)
    config_blocks: ClassVar[dict] = {"deq": DEQBackboneOptions}

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
            raise ValueError(
                "activation_checkpoint is meaningless for a DEQ backbone: "
                "implicit gradients store no solver activations"
            )
        self.deq_options = DEQBackboneOptions.from_dict(deq)
        if not direct_forces and self.deq_options.grad == "ift":
            raise ValueError(
                "energy-gradient forces (direct_forces: False) train through a k-step phantom "
                "gradient of the fixed point (a force loss needs second derivatives, which "
                "TorchDEQ's implicit backward does not provide): set deq.grad to an int, e.g. 6. "
                "Evaluation still differentiates z* implicitly (exact to deq.b_tol)."
            )
        _scale_branch_outputs(self.blocks, self.deq_options.branch_init_scale)
        self.blocks_in_f = num_layers  # TransBlockV2 blocks evaluated once per iteration of f
        self.blocks = nn.ModuleList([DEQFixedPointLayer(self.blocks, self.deq_options)])
        # fairchem's block loop runs `num_layers` times: it calls the fixed-point layer once
        self.num_layers = 1

    def _init_edge_rot_mat(self, data, edge_index, edge_distance_vec):
        """fairchem's random edge frames; where the edge vectors carry the positions' gradient
        (energy-gradient forces) the frames carry it too (fairchem detaches them, and
        -dE/dpos then missed the derivative through the frames: `edge_frames`)."""
        if not (torch.is_grad_enabled() and edge_distance_vec.requires_grad):
            return super()._init_edge_rot_mat(data, edge_index, edge_distance_vec)
        frames, raw = replay_random(
            edge_distance_vec,
            lambda: super(DEQEquiformerV2Backbone, self)._init_edge_rot_mat(data, edge_index, edge_distance_vec),
        )
        return edge_frames(edge_distance_vec, raw, frames)

    def set_solver(self, name: str, solver_kwargs: dict | None = None) -> None:
        """E.g. set_solver("broyden_reuse", {"memory": 20}): the forward solver of every phase."""
        self.deq_layer.solver.set_solver(name, solver_kwargs)

    def set_solver_settings(self, phase: str, **changes) -> None:
        """E.g. set_solver_settings("eval_warm", tol=1e-3): phases train/eval_cold/eval_warm."""
        if phase not in PHASES:
            raise ValueError(f"Unknown DEQ phase {phase!r}; choose one of {PHASES}")
        self.deq_layer.solver.set_phase(phase, **changes)

    def set_jacobian_regularisation(self, vectors: int) -> None:
        """Training solves return the Jacobian regularisation term (out["deq"].jacobian_loss)
        estimated with `vectors` random vectors; 0 turns it off (optim.deq.jac_reg_weight)."""
        self.deq_layer.solver.set_jacobian_regularisation(vectors)

    def set_backward_settings(self, **changes) -> None:
        """E.g. set_backward_settings(b_tol=1e-2, b_stop_mode="rel"): the adjoint solve of
        energy-gradient forces in evaluation."""
        self.deq_layer.solver.set_backward(**changes)

    @property
    def deq_layer(self) -> DEQFixedPointLayer:
        return self.blocks[0]

    def forward(self, data) -> dict:
        if gp_utils.initialized():
            raise NotImplementedError("graph parallelism is not supported by the DEQ backbone")
        if self.regress_forces and not self.direct_forces and not data.pos.requires_grad:
            data.pos.requires_grad_(True)  # forces = -dE/dpos: the graph must start here
        with self.deq_layer.solving(data.natoms, getattr(data, WARM_START_ATTRIBUTE, None)) as solve:
            out = super().forward(data)
        layout, result = solve.layout, solve.result
        out["deq"] = DEQSolution(
            fixed_point=layout.unpad(result.fixed_point).detach(),
            stats=result.stats,
            solver_state=None
            if result.solver_state is None
            else tuple(layout.unpad(t).detach() for t in result.solver_state),
            adjoint=result.adjoint,
            states=[self._normed(layout.unpad(s)) for s in result.states[:-1]] if self.training else [],
            carry=None if result.carry is None else layout.unpad(result.carry).detach(),
            jacobian_loss=result.jacobian_loss,
        )
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


# ---- the solve record -------------------------------------------------------------
@dataclass
class _Solve:
    layout: PaddedLayout
    warm_start: WarmStart
    result: DEQSolveResult | None = None


def _check_shape(what: str, tensor: torch.Tensor, x_inj: torch.Tensor) -> None:
    if tensor.shape != x_inj.shape:
        raise ValueError(
            f"{what} has shape {tuple(tensor.shape)}, expected "
            f"{tuple(x_inj.shape)} ([n_atoms, (lmax+1)^2, sphere_channels]); the structure "
            "or the model changed since it was computed"
        )
