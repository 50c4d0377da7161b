"""One model forward pass that reuses fixed points: the step the trainer and the
DEQCalculator share.

Before the pass the cache predicts each structure's fixed point (the initial guess, handed
to the backbone as the batch attribute `initial_guess`); after it the solved fixed points
are stored. With a solver whose own state is reused (deq.solver: broyden_reuse, evaluation
only) the cached states travel the same way: batch attribute `initial_solver_state` in, the
backbone output's `solver_state` stored beside the fixed points; with energy-gradient forces
the backward solve's adjoint too (`initial_adjoint` in, the output's `adjoint` stored), and
each solve's contraction estimate (`initial_contraction` in, `deq_stats["contraction"]`
stored: the "error" stop rule's prior for a warm start). With
`compare_cold` every warm-started batch is also solved from zero first
(the Markov check: does reuse change the answer?). The backbone's own output (fixed point,
solver statistics, intermediate states) is not part of a hydra model's output, so it is
captured with a forward hook for the duration of the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .cache import FixedPointCache, InitialGuess, batch_keys


@dataclass
class ReuseStep:
    outputs: dict  # what `forward(batch)` returned
    solution: dict  # the backbone's output: fixed_point, deq_stats, graph, (deq_states, solver_state)
    guess: InitialGuess
    cold_outputs: dict | None = None  # compare_cold: the same batch solved from zero
    cold_solution: dict | None = None


@contextmanager
def captured_output(module: torch.nn.Module):
    """Yields a dict that holds `module`'s output (key "output") once it has run."""
    captured: dict = {}
    handle = module.register_forward_hook(lambda _m, _inputs, output: captured.__setitem__("output", output))
    try:
        yield captured
    finally:
        handle.remove()


def _run(forward: Callable, backbone: torch.nn.Module, batch) -> tuple[dict, dict]:
    with captured_output(backbone) as captured:
        outputs = forward(batch)
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
) -> ReuseStep:
    """`forward(batch)` (a model call) started from the cache's predictions for `keys`
    (default: the batch's sids). `reuse` False: a cold pass that leaves the cache alone.
    `lockstep`: the batch holds every live system (a trajectory-ordered pass, a relaxation
    batch), so systems absent from it have ended and are dropped."""
    _forget_guess(batch)
    guess = cache.initial_guess(batch, keys) if reuse else InitialGuess.cold(len(batch.natoms))
    cold_outputs = cold_solution = None
    if guess.z0 is not None and compare_cold:
        cold_outputs, cold_solution = _run(forward, backbone, batch)
    if guess.z0 is not None:
        batch.initial_guess = guess.z0
    if guess.solver_state is not None:
        batch.initial_solver_state = guess.solver_state
    if guess.adjoint is not None:
        batch.initial_adjoint = guess.adjoint
    if guess.contraction is not None:
        batch.initial_contraction = guess.contraction
    try:
        outputs, solution = _run(forward, backbone, batch)
    finally:
        _forget_guess(batch)  # keep it out of anything that reads the batch later
    if reuse:
        adjoint = solution.get("adjoint")
        cache.store(
            batch,
            solution["fixed_point"],
            keys,
            solver_state=solution.get("solver_state"),
            adjoint=None if adjoint is None else adjoint.per_atom(),
            contraction=solution["deq_stats"].get("contraction"),
        )
        if lockstep:
            cache.keep_only(batch_keys(batch, keys))
    return ReuseStep(outputs, solution, guess, cold_outputs, cold_solution)


def _forget_guess(batch) -> None:
    for name in ("initial_guess", "initial_solver_state", "initial_adjoint", "initial_contraction"):
        if name in batch:
            delattr(batch, name)


def force_deviation(forces: torch.Tensor, cold_forces: torch.Tensor, natoms: torch.Tensor) -> torch.Tensor:
    """||F_warm - F_cold|| / ||F_cold|| for each structure (the paper's Markov check)."""
    sizes = natoms.tolist()
    return torch.stack(
        [
            (fw - fc).norm() / fc.norm().clamp_min(1e-12)
            for fw, fc in zip(torch.split(forces.detach(), sizes), torch.split(cold_forces.detach(), sizes))
        ]
    )
