"""One model forward pass that reuses fixed points: the step the trainer and the
DEQCalculator share.

Before the pass the cache assembles the batch's `WarmStart` (each structure's predicted
fixed point, and where used its solver state, adjoint and contraction estimate), handed to
the backbone as the one batch attribute `warm_start`; after it the backbone's
`DEQSolution` is stored as it is. With `compare_cold` every warm-started batch is also
solved from zero first (the Markov check: does reuse change the answer?).

A hydra model returns its heads' outputs only, so the backbone's own output (the
`DEQSolution` under "deq", the graph) is captured while the model runs
(`run_capturing_backbone`): the training path uses that too, without reuse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fairchem_deq.solve import WARM_START_ATTRIBUTE, DEQSolution, Propagation, WarmStart

from .batch_rows import batch_keys
from .cache import FixedPointCache


@dataclass
class ReuseStep:
    outputs: dict  # what `forward(batch)` returned
    backbone_output: dict  # the backbone's output: its "deq" DEQSolution, the graph, embeddings
    warm_start: WarmStart  # where the solve started
    cold_outputs: dict | None = None  # compare_cold: the same batch solved from zero
    cold_backbone_output: dict | None = None

    @property
    def solution(self) -> DEQSolution:
        return self.backbone_output["deq"]

    @property
    def cold_solution(self) -> DEQSolution | None:
        return None if self.cold_backbone_output is None else self.cold_backbone_output["deq"]


def run_capturing_backbone(forward: Callable, backbone: torch.nn.Module, batch) -> tuple[dict, dict]:
    """(`forward(batch)`, the output `backbone` returned inside it), with a forward hook held
    for the call only."""
    captured: dict = {}
    handle = backbone.register_forward_hook(lambda _m, _inputs, output: captured.__setitem__("output", output))
    try:
        outputs = forward(batch)
    finally:
        handle.remove()
    return outputs, captured["output"]


def forward_with_reuse(
    forward: Callable,
    backbone: torch.nn.Module,
    batch,
    cache: FixedPointCache,
    keys: Sequence | None = None,
    *,
    reuse: bool = True,
    compare_cold: bool = False,
    lockstep: bool = False,
    propagation: Propagation | None = None,
) -> ReuseStep:
    """`forward(batch)` (a model call) started from the cache's warm start for `keys`
    (default: the batch's sids). `reuse` False: a cold pass that leaves the cache alone.
    `lockstep`: the batch holds every live system (a trajectory-ordered pass, a relaxation
    batch), so systems absent from it have ended and are dropped. `propagation`: warm-started
    batches take a fixed number of evaluations (`fairchem_deq.solve.propagation`)."""
    _forget_warm_start(batch)
    start = cache.warm_start(batch, keys) if reuse else WarmStart.cold(len(batch.natoms))
    cold_outputs = cold_backbone = None
    if start.any_warm and compare_cold:
        cold_outputs, cold_backbone = run_capturing_backbone(forward, backbone, batch)
    if start.any_warm:
        start.propagation = propagation
        setattr(batch, WARM_START_ATTRIBUTE, start)
    try:
        outputs, backbone_output = run_capturing_backbone(forward, backbone, batch)
    finally:
        _forget_warm_start(batch)  # keep it out of anything that reads the batch later
    if reuse:
        cache.store(batch, backbone_output["deq"], keys)
        if lockstep:
            cache.keep_only(batch_keys(batch, keys))
    return ReuseStep(outputs, backbone_output, start, cold_outputs, cold_backbone)


def _forget_warm_start(batch) -> None:
    if WARM_START_ATTRIBUTE in batch:
        delattr(batch, WARM_START_ATTRIBUTE)


def force_deviation(forces: torch.Tensor, cold_forces: torch.Tensor, natoms: torch.Tensor) -> torch.Tensor:
    """||F_warm - F_cold|| / ||F_cold|| for each structure (the paper's Markov check)."""
    sizes = natoms.tolist()
    return torch.stack(
        [
            (fw - fc).norm() / fc.norm().clamp_min(1e-12)
            for fw, fc in zip(torch.split(forces.detach(), sizes), torch.split(cold_forces.detach(), sizes))
        ]
    )
