"""DEQuiformer backbone on real frames (MD17 ethanol, OC20 relaxation)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import ethanol_atoms, make_model, oc20_atoms, to_batch

from fairchem_deq.solve import WarmStart

TIGHT = {"max_iter": 80, "tol": 1e-5, "stop_mode": "rel"}
TIGHT_DEQ = {"solver": "anderson", "train": TIGHT, "eval_cold": TIGHT, "eval_warm": TIGHT}


def _predict(model, batch):
    out = model(batch)
    return out["energy"]["energy"].detach(), out["forces"]["forces"].detach()


def _rotation(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diag(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def test_energy_invariant_forces_equivariant_under_rotation():
    model = make_model(TIGHT_DEQ).eval()
    atoms = ethanol_atoms([0])[0]
    rotated = atoms.copy()
    rot = _rotation(1).numpy()
    center = rotated.positions.mean(axis=0)
    rotated.positions = (rotated.positions - center) @ rot.T + center
    e0, f0 = _predict(model, to_batch([atoms]))
    e1, f1 = _predict(model, to_batch([rotated]))
    f0_rot = f0 @ torch.as_tensor(rot.T, dtype=f0.dtype)
    assert torch.allclose(e0, e1, rtol=1e-4, atol=1e-5)
    assert (f1 - f0_rot).norm() / f0.norm() < 1e-3


def test_fixed_point_residual_within_tolerance_and_warm_start_is_immediate():
    model = make_model(TIGHT_DEQ).eval()
    batch = to_batch(ethanol_atoms([5]))
    backbone = model.backbone
    emb = backbone(batch)
    stats = emb["deq"].stats
    assert bool(stats["converged"].all())
    assert float(stats["rel_residual"].max()) < TIGHT["tol"]
    assert int(stats["nstep"].max()) > 2  # a cold solve really iterates
    e_cold, f_cold = _predict(model, batch)

    warm = to_batch(ethanol_atoms([5]))
    warm.warm_start = WarmStart.at(emb["deq"].fixed_point)
    out = backbone(warm)
    assert int(out["deq"].stats["nstep"].max()) <= 2
    warm2 = to_batch(ethanol_atoms([5]))
    warm2.warm_start = WarmStart.at(emb["deq"].fixed_point)
    e_warm, f_warm = _predict(model, warm2)
    assert torch.allclose(e_warm, e_cold, rtol=1e-4, atol=1e-4)
    assert (f_warm - f_cold).norm() / f_cold.norm() < 1e-3


def test_batched_structures_of_different_sizes_match_single_solves():
    model = make_model(TIGHT_DEQ, max_radius=6.0).eval()
    # fairchem's graph builder needs one periodicity per batch: three slabs of 2 sizes
    frames = [
        oc20_atoms("random1000156.traj", 0),
        oc20_atoms("random1000163.traj", 0),
        oc20_atoms("random1000156.traj", 5),
    ]
    assert len(frames[0]) != len(frames[1])
    e_batch, f_batch = _predict(model, to_batch(frames))
    stats = model.backbone(to_batch(frames))["deq"].stats
    assert stats["nstep"].shape == (3,) and stats["rel_residual"].shape == (3,)
    offset = 0
    for i, atoms in enumerate(frames):
        e, f = _predict(model, to_batch([atoms]))
        n = len(atoms)
        assert torch.allclose(e_batch[i], e[0], rtol=1e-4, atol=1e-4)
        assert (f_batch[offset : offset + n] - f).norm() / f.norm() < 2e-3
        offset += n


def test_implicit_gradient_matches_unrolled_gradient():
    """IFT gradient == gradient through 80 explicit applications of f from z* (float32)."""
    solve = {"max_iter": 200, "tol": 1e-6, "stop_mode": "rel"}
    ift = make_model({"train": solve, "grad": "ift", "b_tol": 1e-9, "b_max_iter": 300})
    unrolled = make_model({"train": solve, "grad": 80})
    unrolled.load_state_dict(ift.state_dict())
    grads = []
    for model in (ift, unrolled):
        model.train()
        torch.manual_seed(0)  # the same random edge frame in both models
        out = model(to_batch(ethanol_atoms([10])))
        loss = out["energy"]["energy"].sum() + (out["forces"]["forces"] ** 2).sum()
        params = [p for n, p in model.named_parameters() if "backbone.blocks.0.blocks" in n]
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    assert grads[0].norm() > 0
    assert (grads[0] - grads[1]).norm() / grads[1].norm() < 1e-3


def test_geometry_only_radial_functions_run_once_per_solve(monkeypatch):
    from fairchem.core.models.equiformer_v2.radial_function import RadialFunction

    calls = []
    original = RadialFunction.forward

    def counting(self, inputs):
        calls.append(id(self))
        return original(self, inputs)

    monkeypatch.setattr(RadialFunction, "forward", counting)
    model = make_model(TIGHT_DEQ, num_layers=2).eval()
    stats = model.backbone(to_batch(ethanol_atoms([3])))["deq"].stats
    inner = {id(m) for m in model.backbone.deq_layer.blocks.modules() if isinstance(m, RadialFunction)}
    inner_calls = [c for c in calls if c in inner]
    assert int(stats["nfe"]) > 5
    assert len(inner_calls) == len(inner)  # once per module, not once per iteration


def test_edge_embeddings_and_wigner_slices_are_computed_once_per_solve(monkeypatch):
    """The element embeddings of the edges and the sliced Wigner-D matrices depend only on
    the geometry: looked up once per solve, not once per iteration, with outputs equal to
    fairchem's per-call computation (a second structure gets its own)."""
    from fairchem.core.models.equiformer_v2.so3 import CoefficientMappingModule
    from torch import nn

    lookups = []
    original_embedding = nn.Embedding.forward
    monkeypatch.setattr(
        nn.Embedding, "forward", lambda self, x: lookups.append(id(self)) or original_embedding(self, x)
    )
    slices = []
    original_idx = CoefficientMappingModule.coefficient_idx
    monkeypatch.setattr(
        CoefficientMappingModule,
        "coefficient_idx",
        lambda self, lmax, mmax: slices.append(1) or original_idx(self, lmax, mmax),
    )
    model = make_model(TIGHT_DEQ).eval()
    inner = {id(m) for m in model.backbone.deq_layer.blocks.modules() if isinstance(m, nn.Embedding)}
    assert len(inner) == 2  # the attention's source and target element embeddings
    slices.clear()  # (building the model slices too)
    with torch.no_grad():
        torch.manual_seed(5)  # the random edge frames: the same in both passes
        out = model.backbone(to_batch(ethanol_atoms([3])))
        inner_lookups = [c for c in lookups if c in inner]
        assert int(out["deq"].stats["nfe"]) > 5
        assert len(inner_lookups) == len(inner)
        cached_slices = len(slices)
        # the cached path gives fairchem's own results: the same solve with the cache off
        reference = model.backbone.deq_layer.scope
        z_cached = out["deq"].fixed_point
        for m in reference.modules:
            m.reset_solve_state(active=False)
        reference.start_solve = lambda: None  # keep every per-solve module inert
        reference.start_iteration = lambda: None
        torch.manual_seed(5)
        plain = model.backbone(to_batch(ethanol_atoms([3])))
    # fairchem slices for rotate and rotate_inv in every evaluation of f; cached: once per solve
    nfe = int(plain["deq"].stats["nfe"])
    assert cached_slices == 3  # the edge-degree embedding's rotate_inv, the solve's rotate and rotate_inv
    assert len(slices) - cached_slices == 1 + 2 * nfe, (cached_slices, len(slices), nfe)
    assert torch.allclose(z_cached, plain["deq"].fixed_point, atol=1e-5, rtol=1e-4)


def test_dropout_masks_are_held_across_iterations():
    deq = {"solver": "fixed_point_iter", "train": {"max_iter": 100, "tol": 1e-4, "stop_mode": "rel"}}
    model = make_model(deq, alpha_drop=0.3, drop_path_rate=0.3, proj_drop=0.3)
    model.train()
    stats = model.backbone(to_batch(ethanol_atoms([0, 1])))["deq"].stats
    # with masks redrawn every iteration f changes each step and no fixed point is reached
    assert bool(stats["converged"].all()), stats


def test_unknown_solver_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Unknown DEQ solver 'newton'.*anderson.*broyden.*fixed_point_iter"):
        make_model({"solver": "newton"})
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['f_tol'\]"):
        make_model({"f_tol": 1e-3})
    # switching solvers after construction: refused the same way, and nothing is changed
    model = make_model({})
    with pytest.raises(ValueError, match=r"Unknown DEQ solver 'newton'"):
        model.backbone.set_solver("newton")
    assert model.backbone.deq_options.solver == "anderson"


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point_iter"])
def test_each_solver_converges(solver):
    cfg = {"max_iter": 60, "tol": 1e-4, "stop_mode": "rel"}
    model = make_model({"solver": solver, "eval_cold": cfg}).eval()
    stats = model.backbone(to_batch(ethanol_atoms([0, 100])))["deq"].stats
    assert bool(stats["converged"].all())


def test_non_finite_solve_raises_and_non_converged_is_reported(caplog):
    from fairchem_deq.solve import DEQDivergenceError

    model = make_model({"eval_cold": {"max_iter": 3, "tol": 1e-12}}).eval()
    with caplog.at_level(logging.WARNING):
        stats = model.backbone(to_batch(ethanol_atoms([0])))["deq"].stats
    assert not bool(stats["converged"].any())
    assert int(stats["nstep"][0]) == 3
    assert "did not reach tol" in caplog.text

    with torch.no_grad():
        model.backbone.deq_layer.blocks[0].ffn.so3_linear_1.weight.fill_(float("nan"))
    with pytest.raises(DEQDivergenceError, match="non-finite"):
        model.backbone(to_batch(ethanol_atoms([0])))


def test_failed_warm_start_falls_back_to_cold_start():
    model = make_model(TIGHT_DEQ).eval()
    batch = to_batch(ethanol_atoms([0]))
    bad = model.backbone(batch)["deq"].fixed_point * float("nan")
    warm = to_batch(ethanol_atoms([0]))
    warm.warm_start = WarmStart.at(bad)
    stats = model.backbone(warm)["deq"].stats
    assert bool(stats["fallback"].all()) and bool(stats["converged"].all())


def test_warm_start_of_wrong_shape_is_rejected():
    model = make_model().eval()
    batch = to_batch(ethanol_atoms([0]))
    batch.warm_start = WarmStart.at(torch.zeros(5, 9, 16))
    with pytest.raises(ValueError, match="initial guess has shape"):
        model.backbone(batch)


def test_switching_solver_keeps_the_block_defaults():
    """set_solver goes through the deq block's checks AND its defaults: Anderson keeps
    lam=1e-8 (TorchDEQ's absolute 1e-4 swamps the mixing at tight tolerances)."""
    model = make_model(TIGHT_DEQ).eval()
    batch = to_batch(ethanol_atoms([3]))
    before = int(model.backbone(batch)["deq"].stats["nstep"][0])
    model.backbone.set_solver("broyden")
    model.backbone.set_solver("anderson")
    assert model.backbone.deq_options.solver_kwargs == {"lam": 1e-8}
    assert int(model.backbone(to_batch(ethanol_atoms([3])))["deq"].stats["nstep"][0]) == before
    model.backbone.set_solver("anderson", {"m": 3, "lam": 1e-6})  # explicit kwargs win
    assert model.backbone.deq_options.solver_kwargs == {"lam": 1e-6, "m": 3}
