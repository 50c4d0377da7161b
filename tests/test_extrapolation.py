"""Extrapolated warm starts: predictor coefficients, per-system histories, calculator, trainer."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from conftest import ethanol_atoms


def _sequence(fn, n):
    """Fixed-point-shaped tensors z_t = fn(t) * ones + t * pattern, t = 0..n-1."""
    pattern = torch.linspace(-1, 1, 24).reshape(2, 4, 3)
    return [torch.full((2, 4, 3), float(fn(t))) + t * pattern for t in range(n)]


def _history(name, points):
    from fairchem_deq.reuse.predictors import FixedPointHistory

    h = FixedPointHistory(name)
    for z in points:
        h.push(z)
    return h


def test_predictors_are_exact_on_the_polynomials_they_claim():
    from fairchem_deq.reuse.predictors import PREDICTORS

    linear, quadratic = _sequence(lambda t: 3 - 2 * t, 6), _sequence(lambda t: 0.5 * t * t - t, 6)
    torch.testing.assert_close(_history("linear", linear[:5]).predict(), linear[5])
    torch.testing.assert_close(_history("quadratic", quadratic[:5]).predict(), quadratic[5])
    torch.testing.assert_close(_history("aspc", linear[:5]).predict(), linear[5])
    # lower orders are not exact on a quadratic, and plain reuse is a copy of the latest
    assert not torch.allclose(_history("linear", quadratic[:5]).predict(), quadratic[5])
    torch.testing.assert_close(_history("last", quadratic[:5]).predict(), quadratic[4])
    for name, p in PREDICTORS.items():
        for n in range(1, p.history + 1):
            assert sum(p.coefficients(n)) == pytest.approx(1.0, abs=1e-12), (name, n)
    # Kolafa's table: k = 1 -> (5/2, -2, 1/2), k = 2 -> (14/5, -14/5, 6/5, -1/5)
    assert PREDICTORS["aspc"].coefficients(3) == pytest.approx([2.5, -2.0, 0.5])
    assert PREDICTORS["aspc"].coefficients(4) == pytest.approx([2.8, -2.8, 1.2, -0.2])
    assert PREDICTORS["quadratic"].coefficients(3) == [3.0, -3.0, 1.0]


def test_history_is_bounded_falls_back_while_short_and_never_extrapolates_across_a_jump():
    from fairchem_deq.reuse.predictors import FixedPointHistory

    z = _sequence(lambda t: t * t, 8)
    h = FixedPointHistory("quadratic")
    assert h.predict() is None
    h.push(z[0], 0)
    torch.testing.assert_close(h.predict(1), z[0])  # one point: plain reuse
    h.push(z[1], 1)
    torch.testing.assert_close(h.predict(2), 2 * z[1] - z[0])  # two points: linear
    for t in range(2, 6):
        h.push(z[t], t)
    assert len(h) == 3  # bounded by what the predictor uses
    torch.testing.assert_close(h.predict(6), z[6])
    torch.testing.assert_close(h.predict(7), z[5])  # frame 6 skipped: other spacing, plain reuse
    h.push(z[7], 7)  # the spacing changed: a new history starts here
    assert len(h) == 1
    h.push(z[3], 3)  # going backwards too
    assert len(h) == 1 and torch.equal(h.predict(), z[3])
    h.clear()
    assert len(h) == 0 and h.latest is None


def test_unknown_predictor_names_list_the_choices():
    from fairchem_deq.reuse import FixedPointCache
    from fairchem_deq.reuse.predictors import FixedPointHistory

    for make in (
        lambda: FixedPointHistory("cubic"),
        lambda: FixedPointCache(warm_start="cubic"),
        lambda: FixedPointCache().use_predictor("cubic"),
    ):
        with pytest.raises(ValueError, match="'cubic'.*last, linear, quadratic, aspc"):
            make()


def test_trainer_config_key_is_accepted_and_an_unknown_value_rejected():
    from fairchem_deq.config.blocks import parse_options
    from fairchem_deq.reuse import ReuseOptions

    assert parse_options(ReuseOptions, None, "task.deq").warm_start == "last"
    assert parse_options(ReuseOptions, {"warm_start": "aspc"}, "task.deq").warm_start == "aspc"
    with pytest.raises(ValueError, match="task.deq.warm_start.*'cubic'.*choices"):
        parse_options(ReuseOptions, {"warm_start": "cubic"}, "task.deq")


def test_cache_extrapolates_per_system_and_restarts_when_the_atoms_change():
    from fairchem_deq.reuse import FixedPointCache

    cache = FixedPointCache(warm_start="linear")
    numbers = torch.arange(1, 10)
    z = _sequence(lambda t: t, 3)
    cache.put("a", 0, z[0], numbers)
    cache.put("a", 1, z[1], numbers)
    cache.put("b", 5, 7 * z[0], numbers)
    torch.testing.assert_close(cache.get("a", numbers).history.predict(2), 2 * z[1] - z[0])
    cache.put("a", 2, z[2], torch.flip(numbers, [0]))  # other species: new history, no extrapolation
    assert len(cache.get("a", torch.flip(numbers, [0])).history) == 1
    assert cache.get("a", numbers) is None
    torch.testing.assert_close(cache.get("b", numbers).history.predict(6), 7 * z[0])


def test_calculator_extrapolates_along_real_frames_matches_cold_and_resets(trained_checkpoint, one_thread):
    from fairchem_deq import DEQCalculator

    # tol 1e-3 (as in test_calculator): warm vs cold compares the start, not two loose solutions
    calc = DEQCalculator(trained_checkpoint, tol=1e-3, warm_start="linear")
    cold = DEQCalculator(trained_checkpoint, tol=1e-3, reuse=False)
    cache = calc.fixed_point_cache
    for atoms in ethanol_atoms(range(5)):
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = calc, cold
        fw, fc = a.get_forces(), b.get_forces()
        assert np.linalg.norm(fw - fc) / np.linalg.norm(fc) < 0.01
        assert calc.last_solver_stats["converged"]
    history = cache.get(0, torch.as_tensor(atoms.numbers)).history
    assert len(history) == 2  # the warm start of the next call is 2 z_4 - z_3
    points = list(history._points)
    torch.testing.assert_close(history.predict(), 2 * points[1] - points[0])
    assert not torch.allclose(history.predict(), points[1])

    swapped = atoms.copy()
    swapped.numbers = swapped.numbers[::-1].copy()  # same count, other species order
    swapped.calc = calc
    hits = cache.hits
    swapped.get_forces()
    assert cache.hits == hits  # solved from zero
    assert len(cache.get(0, torch.as_tensor(swapped.numbers)).history) == 1  # history restarted
    with pytest.raises(ValueError, match="choices"):
        DEQCalculator(trained_checkpoint, warm_start="cubic")


def test_trainer_takes_the_predictor_from_task_deq_and_extrapolates_in_trajectory_order(
    trained_checkpoint, ethanol_trajectory_lmdb, tmp_path, one_thread
):
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator
    from fairchem.core.datasets import data_list_collater
    from fairchem.core.datasets.base_dataset import create_dataset

    from fairchem_deq.simulate.calculator import TRAINER

    def trainer_with(warm_start):
        checkpoint = torch.load(trained_checkpoint, map_location="cpu", weights_only=False)
        checkpoint["config"]["task"].setdefault("deq", {})["warm_start"] = warm_start
        torch.save(checkpoint, tmp_path / f"{warm_start}.pt")
        return OCPCalculator(checkpoint_path=tmp_path / f"{warm_start}.pt", trainer=TRAINER, cpu=True, seed=0).trainer

    with pytest.raises(ValueError, match="task.deq.warm_start.*'cubic'"):
        trainer_with("cubic")
    trainer = trainer_with("quadratic")
    assert trainer.fixed_point_cache.predictor == "quadratic"
    dataset = create_dataset({"format": "lmdb", "src": str(ethanol_trajectory_lmdb)}, "test")  # shuffled
    trainer.collater = partial(data_list_collater, otf_graph=True)  # what fairchem's load_datasets sets
    loader = trainer.get_dataloader(dataset, trainer.get_sampler(dataset, 4, shuffle=False))
    trainer.is_debug = False  # fairchem refuses per-image predictions in debug mode (no file is written)
    cache, histories = trainer.fixed_point_cache, {}
    put = cache.put

    def recording_put(key, fid, *args, **kwargs):
        put(key, fid, *args, **kwargs)
        histories[key] = list(cache._entries[key].history._times)

    cache.put = recording_put
    predictions = trainer.predict(loader, disable_tqdm=True)
    assert len(predictions["energy"]) == 40
    # 4 segments of 10 frames (eval batch 4); the last, frames 30..39, kept its last three in
    # time order, and every segment's history was dropped when the pass ended
    assert histories[(0, 3)] == [37, 38, 39] and len(cache) == 0


def test_md_and_relax_commands_pass_warm_start_to_the_calculator(trained_checkpoint, monkeypatch, one_thread):
    import argparse

    from conftest import DATA

    from fairchem_deq.cli import md as md_cli
    from fairchem_deq.cli import relax as relax_cli
    from fairchem_deq.cli.common import load_calculator_and_structure

    monkeypatch.setenv("LOGLEVEL", "WARNING")  # restored afterwards (the loader sets it)
    for cli in (md_cli, relax_cli):
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        base = [
            "--checkpoint",
            str(trained_checkpoint),
            "--structure",
            str(DATA / "md17_ethanol_300.npz"),
            "--out",
            "x",
        ]
        assert parser.parse_args(base).warm_start is None  # the calculator's default: last
        with pytest.raises(SystemExit):
            parser.parse_args([*base, "--warm-start", "cubic"])
    calc, atoms = load_calculator_and_structure(parser.parse_args([*base, "--warm-start", "aspc"]))
    assert calc.fixed_point_cache.predictor == "aspc" and len(atoms) == 9
    calc, _ = load_calculator_and_structure(parser.parse_args(base))
    assert calc.fixed_point_cache.predictor == "last"
    calc, _ = load_calculator_and_structure(parser.parse_args(base), propagation="two_step")
    assert calc.fixed_point_cache.predictor == "linear"  # two-step propagation extrapolates linearly by default
    calc, _ = load_calculator_and_structure(parser.parse_args(base), propagation="one_step")
    assert calc.fixed_point_cache.predictor == "last"  # a linear one-step history can diverge
