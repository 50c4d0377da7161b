"""Energy-conserving forces: -dE/dpos through the DEQ fixed point (real ethanol frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import REPO, TINY_OVERRIDES, dataset_overrides, logged_losses, run_cli
from conftest import TINY_BACKBONE, ethanol_atoms, to_batch

TIGHT = {"max_iter": 300, "tol": 1e-6, "stop_mode": "rel"}
EXACT = {"train": TIGHT, "eval_cold": TIGHT, "eval_warm": TIGHT, "b_tol": 1e-8, "b_stop_mode": "rel", "b_max_iter": 300}


def gradient_model(deq, seed=0, num_layers=1):
    from fairchem.core.models.base import HydraModel

    torch.manual_seed(seed)
    backbone = dict(
        TINY_BACKBONE, model="deq_equiformer_v2_backbone", num_layers=num_layers, deq=deq, direct_forces=False
    )
    return HydraModel(
        backbone=backbone,
        otf_graph=True,
        pass_through_head_outputs=True,
        heads={"energy_and_forces": {"module": "fairchem_deq.models.EnergyGradientForcesHead"}},
    )


def _energy_forces(model, atoms, positions=None, seed=1):
    atoms = atoms.copy()
    if positions is not None:
        atoms.positions = positions
    torch.manual_seed(seed)  # the same random edge frame at every displacement
    out = model(to_batch([atoms]))
    return float(out["energy"].detach()), out["forces"].detach().double().numpy()


def test_forces_match_finite_differences_of_the_energy():
    """Directional derivatives dE/dv (central differences, Richardson-extrapolated; the model
    is float32) along the force and along a random unit direction agree with -F.v to 1e-3
    of |F| (relative to |F|: a direction nearly orthogonal to F has a tiny derivative)."""
    model = gradient_model(dict(EXACT, grad=6)).eval()
    atoms = ethanol_atoms([10])[0]
    _, forces = _energy_forces(model, atoms)
    assert np.linalg.norm(forces) > 1e-3
    assert int(model.backbone.deq_layer.solver.last_backward_stats["nstep"].max()) > 1
    rng = np.random.default_rng(0)
    for v in (forces, rng.normal(size=forces.shape)):
        v = v / np.linalg.norm(v)
        exact = -(forces * v).sum()
        h = 1e-3
        d = {}
        for k in (1, 2):
            ep, _ = _energy_forces(model, atoms, atoms.positions + k * h * v)
            em, _ = _energy_forces(model, atoms, atoms.positions - k * h * v)
            d[k] = (ep - em) / (2 * k * h)
        richardson = (4 * d[1] - d[2]) / 3
        assert abs(richardson - exact) / np.linalg.norm(forces) < 1e-3, (richardson, exact)


def test_phantom_training_forces_approach_the_implicit_forces():
    """Training differentiates through k solver steps from z*; with enough steps the forces
    equal evaluation's implicit ones, and the error shrinks as k grows."""
    atoms = ethanol_atoms([20])[0]
    errors = []
    for k in (1, 20):
        model = gradient_model(dict(EXACT, grad=k))
        _, implicit = _energy_forces(model.eval(), atoms)
        _, phantom = _energy_forces(model.train(), atoms)
        errors.append(np.linalg.norm(phantom - implicit) / np.linalg.norm(implicit))
    assert errors[1] < 1e-3 < errors[0], errors


def test_force_loss_trains_through_the_gradient():
    """A force-only loss reaches the DEQ block's parameters through -dE/dpos (second
    derivatives) and a few AdamW steps lower it on a real frame."""
    model = gradient_model({"grad": 4}).train()
    batch_atoms = ethanol_atoms([0, 50])
    target = torch.tensor(np.concatenate([a.get_forces() for a in batch_atoms]), dtype=torch.float32) / 23.06
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        torch.manual_seed(0)
        out = model(to_batch(batch_atoms))
        loss = (out["forces"] - target).norm(dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        block_grads = [p.grad for n, p in model.named_parameters() if "deq_layer" in n or "blocks.0.blocks" in n]
        assert any(g is not None and g.abs().sum() > 0 for g in block_grads)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


def test_energy_gradient_forces_are_rotation_equivariant():
    from scipy.spatial.transform import Rotation

    model = gradient_model(EXACT | {"grad": 6}).eval()
    atoms = ethanol_atoms([5])[0]
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    e0, f0 = _energy_forces(model, atoms)
    center = atoms.positions.mean(0)
    e1, f1 = _energy_forces(model, atoms, (atoms.positions - center) @ rot.T + center)
    assert abs(e1 - e0) < 1e-4 * max(1.0, abs(e0))
    assert np.linalg.norm(f1 - f0 @ rot.T) / np.linalg.norm(f0) < 1e-2


def test_implicit_training_with_gradient_forces_is_refused():
    with pytest.raises(ValueError, match="phantom gradient"):
        gradient_model({"grad": "ift"})


def test_gradient_head_needs_a_position_graph():
    from fairchem.core.models.base import HydraModel

    backbone = dict(TINY_BACKBONE, model="deq_equiformer_v2_backbone", num_layers=1, deq={"grad": 2})
    with pytest.raises(ValueError, match="direct_forces: False"):
        HydraModel(
            backbone=backbone,
            otf_graph=True,
            pass_through_head_outputs=True,
            heads={"ef": {"module": "fairchem_deq.models.EnergyGradientForcesHead"}},
        )


@pytest.mark.slow
def test_conservative_config_trains_through_fairchem_cli(ethanol_lmdb, tmp_path):
    run_cli(
        [
            "--mode",
            "train",
            "--config-yml",
            str(REPO / "configs/md17/ethanol/deq1_conservative.yml"),
            "--cpu",
            "--run-dir",
            str(tmp_path),
            "--identifier",
            "cons",
            "--timestamp-id",
            "cons",
            "--print-every",
            "4",
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            "--optim.max_epochs=2",
            "--optim.eval_every=1000000",
            "--optim.lr_initial=0.002",
            "--optim.checkpoint_every=-1",
        ],
        cwd=tmp_path,
    )
    checkpoint = tmp_path / "checkpoints" / "cons" / "checkpoint.pt"
    assert checkpoint.is_file()
    # forces are scaled like the energy (fitted separately their rmsds differ several-fold)
    norms = torch.load(checkpoint, map_location="cpu", weights_only=False)["normalizers"]
    assert float(norms["forces"]["mean"]) == 0.0
    assert float(norms["forces"]["rmsd"]) == pytest.approx(float(norms["energy"]["rmsd"]))
    # the calculator's forces are -dE/dpos in eV/Å: the model's normalised energy, finite-
    # differenced along the force and scaled by the energy rmsd, gives the same number (the
    # normalised energy, not the eV total ~ -4200 whose float32 ulp is 5e-4 eV)
    from fairchem_deq import DEQCalculator
    from fairchem_deq.data.atoms_graphs import atoms_to_batch

    atoms = ethanol_atoms([100])[0]
    calc = DEQCalculator(checkpoint, tol=1e-5, max_iter=300, reuse=False)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert forces.shape == (9, 3) and np.isfinite(forces).all()
    model = calc.trainer._unwrapped_model.eval()  # the weights the calculator just used
    rmsd = float(calc.trainer.normalizers["energy"].rmsd)
    v = forces / np.linalg.norm(forces)

    def normalised_energy(positions):
        moved = atoms.copy()
        moved.positions = positions
        torch.manual_seed(0)
        return float(model(atoms_to_batch([moved]))["energy"].detach())

    h = 2e-3
    slope = (normalised_energy(atoms.positions + h * v) - normalised_energy(atoms.positions - h * v)) / (2 * h)
    assert slope * rmsd == pytest.approx(-np.linalg.norm(forces), rel=0.02)

    # along a trajectory the calculator starts each adjoint solve from the previous one
    # (reuse_adjoint, default) or from zero; b_tol overrides the checkpoint's adjoint solve
    frames = ethanol_atoms([100, 101])
    iterations, results = {}, {}
    for reuse_adjoint in (True, False):
        calc = DEQCalculator(
            checkpoint, tol=1e-5, max_iter=300, b_tol=1e-6, b_max_iter=400, reuse_adjoint=reuse_adjoint
        )
        for frame in frames:
            calc.calculate(frame)
        solver = calc.model.backbone.deq_layer.solver
        assert solver.options.b_tol == 1e-6
        iterations[reuse_adjoint] = int(solver.last_backward_stats["nstep"].max())
        results[reuse_adjoint] = calc.results["forces"]
    assert iterations[True] < iterations[False], iterations
    np.testing.assert_allclose(results[True], results[False], atol=1e-4 * np.abs(results[False]).max())


@pytest.mark.slow
def test_fixed_point_correction_loss_with_energy_gradient_heads_and_a_final_checkpoint(ethanol_lmdb, tmp_path):
    """The pass-through head `energy_and_forces` returns {energy, forces}: decoding the
    intermediate states keyed them by head name and fairchem's loss raised KeyError 'energy'.
    Also: a run shorter than checkpoint_every (= eval_every) still ends with a checkpoint."""
    proc = run_cli(
        [
            "--mode",
            "train",
            "--config-yml",
            str(REPO / "configs/md17/ethanol/deq1_conservative.yml"),
            "--cpu",
            "--run-dir",
            str(tmp_path),
            "--identifier",
            "fpc",
            "--timestamp-id",
            "fpc",
            "--print-every",
            "1",
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            "--optim.max_epochs=1",
            "--optim.eval_every=1000000",
            "--optim.lr_initial=0.002",
            "--model.backbone.deq.n_states=2",
            "--model.backbone.deq.train.max_iter=8",
            "--optim.deq.fpc_weight=0.8",
        ],
        cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert len(logged_losses(log)) == 16 and all(np.isfinite(logged_losses(log)))
    checkpoint = tmp_path / "checkpoints" / "fpc" / "checkpoint.pt"
    assert checkpoint.is_file() and f"Final checkpoint (step 16): {checkpoint}" in log
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["step"] == 16
