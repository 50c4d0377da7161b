"""Jacobian regularisation (issue 23 item 2): optim.deq.jac_reg_weight adds TorchDEQ's
Hutchinson estimate of ||J_f(z*)||_F^2 / dim to the training loss, so f learns to contract."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import run_cli, train_args
from conftest import ethanol_atoms, make_model, to_batch

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = {"train": {"max_iter": 12, "tol": 1e-3}}


def test_the_option_is_checked():
    from fairchem_deq.trainers.train_options import DEQTrainOptions

    assert DEQTrainOptions().jac_reg_weight == 0.0
    with pytest.raises(ValueError, match="jac_reg_weight must be >= 0"):
        DEQTrainOptions(jac_reg_weight=-1)
    with pytest.raises(ValueError, match="jac_reg_vectors must be an int >= 1"):
        DEQTrainOptions(jac_reg_vectors=0)


def test_training_solves_return_a_differentiable_jacobian_term_only_when_asked():
    model = make_model(TRAIN).train()
    batch = to_batch(ethanol_atoms([0, 1]))
    assert model.backbone(batch)["deq"].jacobian_loss is None
    model.backbone.set_jacobian_regularisation(2)
    term = model.backbone(to_batch(ethanol_atoms([0, 1])))["deq"].jacobian_loss
    assert term.dim() == 0 and float(term) > 0 and term.requires_grad
    term.backward()
    grads = [p.grad for p in model.backbone.deq_layer.blocks.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert model.backbone(to_batch(ethanol_atoms([0])))["deq"].jacobian_loss is None  # training only


def test_minimising_the_term_makes_f_contract_more():
    """A few optimiser steps on the Jacobian term alone lower the solver's own estimate of the
    contraction factor q at the fixed point."""
    torch.manual_seed(0)
    model = make_model(TRAIN).train()
    model.backbone.set_jacobian_regularisation(1)
    frames = ethanol_atoms([0, 1])

    def contraction():
        model.eval()
        with torch.no_grad():
            q = model.backbone(to_batch(frames))["deq"].stats["contraction"]
        model.train()
        return float(q.mean())

    before = contraction()
    optimizer = torch.optim.Adam(model.backbone.deq_layer.blocks.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        model.backbone(to_batch(frames))["deq"].jacobian_loss.backward()
        optimizer.step()
    after = contraction()
    print(f"contraction estimate before {before:.3f} after {after:.3f}")
    assert after < 0.85 * before  # measured 0.556 -> 0.429


def test_fairchem_training_logs_the_term(ethanol_lmdb, tmp_path):
    args = train_args(
        "configs/md17/ethanol/deq1.yml", tmp_path, ethanol_lmdb, "jac", 1, "--optim.deq.jac_reg_weight=0.5"
    )
    proc = run_cli(args, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "deq_jac_reg" in log and "deq_contraction" in log
