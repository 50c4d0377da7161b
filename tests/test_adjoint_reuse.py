"""The backward (adjoint) solve of energy-gradient forces started from the previous step's
adjoint (fairchem_deq.solve.adjoint, cached by fairchem_deq.reuse): same forces, fewer
backward iterations, dropped with the structure."""

from __future__ import annotations

import numpy as np
import torch
from conftest import ethanol_atoms, make_model, to_batch
from test_conservative_forces import TIGHT, gradient_model

from fairchem_deq.reuse import FixedPointCache, forward_with_reuse

DEQ = {"eval_cold": TIGHT, "eval_warm": TIGHT, "b_tol": 1e-6, "b_stop_mode": "rel", "b_max_iter": 200, "grad": 6}


def _step(model, cache, atoms, fid=0):
    batch = to_batch([atoms])
    batch.fid = torch.tensor([fid])
    torch.manual_seed(1)  # the same random edge frame for every call
    step = forward_with_reuse(model, model.backbone, batch, cache)
    stats = model.backbone.deq_layer.solver.last_backward_stats
    return step, step.outputs["forces"].detach().double().numpy(), int(stats["nstep"].max())


def test_warm_adjoint_gives_the_cold_forces_in_fewer_backward_iterations():
    model = gradient_model(DEQ).eval()
    frames = ethanol_atoms([100, 101])
    cache = FixedPointCache()
    first, _, _ = _step(model, cache, frames[0], 0)
    assert first.solution.adjoint.per_atom() is not None
    entry = cache.get(0, to_batch([frames[0]]).atomic_numbers.long())
    assert entry.adjoint is not None and entry.adjoint.shape == entry.fixed_point.shape
    warm, forces_warm, warm_iters = _step(model, cache, frames[1], 1)
    assert warm.warm_start.adjoint is not None
    _, forces_cold, cold_iters = _step(model, FixedPointCache(), frames[1], 1)
    rel = np.linalg.norm(forces_warm - forces_cold) / np.linalg.norm(forces_cold)
    assert rel < 1e-4, rel
    print(f"backward iterations warm {warm_iters} cold {cold_iters}, force difference {rel:.2e}")
    assert warm_iters < cold_iters, (warm_iters, cold_iters)


def test_adjoint_is_dropped_with_the_structure():
    model = gradient_model(DEQ).eval()
    cache = FixedPointCache()
    ethanol = ethanol_atoms([100])[0]
    _step(model, cache, ethanol, 0)
    smaller = ethanol[:-1]  # another structure under the same key
    step, _, _ = _step(model, cache, smaller, 1)
    assert step.warm_start.adjoint is None and not bool(step.warm_start.warm.any())
    entry = cache.get(0, to_batch([smaller]).atomic_numbers.long())
    assert entry.adjoint is not None and len(entry.adjoint) == len(smaller)


def test_direct_force_models_store_no_adjoint():
    model = make_model({}).eval()
    cache = FixedPointCache()
    batch = to_batch(ethanol_atoms([100]))
    with torch.no_grad():
        step = forward_with_reuse(model, model.backbone, batch, cache)
    assert step.solution.adjoint is None
    assert cache.get(0, batch.atomic_numbers.long()).adjoint is None


def test_backward_settings_and_keep_adjoint():
    import pytest

    model = gradient_model(DEQ).eval()
    frame = ethanol_atoms([100])[0]
    _, tight, tight_iters = _step(model, FixedPointCache(), frame)
    model.backbone.set_backward_settings(b_tol=1e-2)
    _, loose, loose_iters = _step(model, FixedPointCache(), frame)
    assert loose_iters < tight_iters
    assert np.linalg.norm(loose - tight) / np.linalg.norm(tight) < 5e-2
    with pytest.raises(ValueError, match="unknown backward settings"):
        model.backbone.set_backward_settings(tol=1e-3)
    with pytest.raises(ValueError, match="b_stop_mode"):
        model.backbone.set_backward_settings(b_stop_mode="error")
    assert model.backbone.deq_layer.solver.options.b_stop_mode == "rel"  # a refused change changes nothing
    cache = FixedPointCache(keep_adjoint=False)
    _step(model, cache, frame)
    assert cache.get(0, to_batch([frame]).atomic_numbers.long()).adjoint is None


def test_adjoint_history_is_extrapolated_like_the_fixed_points():
    """With warm_start="linear" the next adjoint solve starts from 2 g(t-1) - g(t-2)."""
    model = gradient_model(DEQ).eval()
    frames = ethanol_atoms([100, 101, 102])
    cache = FixedPointCache(warm_start="linear")
    adjoints = []
    for fid, frame in enumerate(frames[:2]):
        step, _, _ = _step(model, cache, frame, fid)
        adjoints.append(step.solution.adjoint.per_atom())
    step, _, _ = _step(model, cache, frames[2], 2)
    torch.testing.assert_close(step.warm_start.adjoint, 2 * adjoints[1] - adjoints[0])
    key_bytes = cache.nbytes
    assert key_bytes >= sum(a.untyped_storage().nbytes() for a in adjoints)  # counted in the bound
