"""IS2RE: a relaxation that needs no step still records its initial frame and energy, and an
empty trajectory is a clear submission error (rc 2), not a StopIteration inside fairchem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write
from ase.io.trajectory import Trajectory
from conftest import DATA

SPLITS = ("id", "ood_ads", "ood_cat", "ood_both")


def is2re_dir(folder: Path, empty: bool) -> Path:
    folder.mkdir()
    atoms = read(DATA / "random1000156.traj", index=-1)
    write(folder / "1000156.traj", atoms)  # keeps its DFT energy
    with Trajectory(str(folder / "1000163.traj"), "w") as traj:  # what fairchem leaves at step 0
        if not empty:
            traj.write(read(DATA / "random1000163.traj", index=-1))
    return folder


def test_empty_trajectory_is_a_submission_error(tmp_path):
    from fairchem_deq.leaderboard import SubmissionError, check_predictions, make_submission

    bad = is2re_dir(tmp_path / "bad", empty=True)
    with pytest.raises(SubmissionError, match="1000163.traj: the trajectory has no frames"):
        check_predictions(bad, "is2re")
    with pytest.raises(SubmissionError, match="no frames"):  # --no-check: caught after fairchem's merge
        make_submission(dict.fromkeys(SPLITS, bad), tmp_path / "sub.npz", task="is2re", check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no (partial) submission file
    good = is2re_dir(tmp_path / "good", empty=False)
    assert check_predictions(good, "is2re") == {"systems": 2, "atoms": 0}
    out = make_submission(dict.fromkeys(SPLITS, good), tmp_path / "sub.npz", task="is2re")
    assert np.all(np.isfinite(np.load(out)["id_energy"]))


def test_submission_cli_reports_the_empty_trajectory_in_one_line(tmp_path):
    bad = is2re_dir(tmp_path / "bad", empty=True)
    args = [a for s in SPLITS for a in (f"--{s.replace('_', '-')}", str(bad))]
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "fairchem-deq"),
            "submission",
            "--task",
            "is2re",
            *args,
            "--out-path",
            str(tmp_path / "sub.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "StopIteration" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "1000163.traj: the trajectory has no frames" in proc.stderr
    assert not (tmp_path / "sub.npz").exists()


@pytest.mark.slow
def test_relaxation_needing_no_step_records_its_initial_frame(tmp_path, trained_checkpoint):
    """fairchem's ml_relax with an fmax every structure already meets: it writes empty
    trajectories; record_initial_frames fills them with the initial frame and its energy."""
    from fairchem.core.common.relaxation.ml_relaxation import ml_relax
    from fairchem.core.datasets import LmdbDataset
    from fairchem.core.datasets.lmdb_dataset import data_list_collater

    from fairchem_deq import DEQCalculator
    from fairchem_deq.data import convert
    from fairchem_deq.trainers.relax_trajectories import empty_trajectories, record_initial_frames

    frames = tmp_path / "frames.npz"
    with np.load(DATA / "md17_ethanol_300.npz") as d:
        np.savez(frames, R=d["R"][:1], z=d["z"], E=d["E"][:1], F=d["F"][:1])
    convert(frames, tmp_path / "lmdb", split="none", progress=False)
    dataset = LmdbDataset({"src": str(tmp_path / "lmdb" / "all")})
    trainer = DEQCalculator(trained_checkpoint).trainer
    traj_dir = tmp_path / "trajs"
    batch = data_list_collater([dataset[0]], otf_graph=True)
    ml_relax(batch=batch, model=trainer, steps=5, fmax=1e6, relax_opt={"traj_dir": traj_dir})
    assert [p.name for p in empty_trajectories(traj_dir)] == ["0.traj"]  # fairchem 1.10

    trainer.relax_dataset = dataset
    trainer.config["task"]["relax_opt"] = {"traj_dir": str(traj_dir)}
    assert [p.name for p in record_initial_frames(trainer)] == ["0.traj"]
    traj = read(traj_dir / "0.traj", index=":")
    assert len(traj) == 1
    shift = traj[0].positions - dataset[0].pos.numpy()  # fairchem wraps into the (50 Å) box
    np.testing.assert_allclose((shift + 25) % 50 - 25, 0, atol=1e-4)
    energy = traj[0].get_potential_energy()
    assert np.isfinite(energy) and abs(energy + 4209) < 20
    assert traj[0].get_forces().shape == (9, 3)
    assert empty_trajectories(traj_dir) == []
    assert record_initial_frames(trainer) == []  # nothing left to fill


@pytest.mark.slow
def test_run_relaxations_records_systems_that_need_no_step(tmp_path, trained_checkpoint, ethanol_lmdb):
    """`fairchem --mode run-relaxations` with an fmax every structure already meets: without
    DEQForcesTrainer.run_relaxations calling record_initial_frames, fairchem 1.10 leaves
    every trajectory empty and the IS2RE submission cannot be made."""
    from cli_helpers import REPO, TINY_OVERRIDES, dataset_overrides, run_cli

    from fairchem_deq.data import convert
    from fairchem_deq.leaderboard import check_predictions

    systems = tmp_path / "systems"  # three one-frame "systems", sids 0, 1, 2 (IS2RE: one sid each)
    systems.mkdir()
    with np.load(DATA / "md17_ethanol_300.npz") as d:
        for i in (0, 100, 200):
            np.savez(systems / f"s{i:03d}.npz", R=d["R"][i : i + 1], z=d["z"], E=d["E"][i : i + 1], F=d["F"][i : i + 1])
    convert(systems, tmp_path / "initial", split="none", progress=False)
    traj_dir = tmp_path / "trajs"
    run_cli(
        [
            "--mode",
            "run-relaxations",
            "--config-yml",
            str(REPO / "configs/md17/ethanol/deq1.yml"),
            "--cpu",
            "--checkpoint",
            str(trained_checkpoint),
            "--run-dir",
            str(tmp_path),
            "--identifier",
            "r",
            "--timestamp-id",
            "r",
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            f"--dataset.relax.src={tmp_path / 'initial' / 'all'}",
            "--dataset.relax.format=lmdb",
            "--task.relaxation_steps=5",
            "--task.relaxation_fmax=1000000.0",
            f"--task.relax_opt={{'traj_dir': '{traj_dir}'}}",
            "--task.num_relaxation_batches=1",
        ],
        cwd=tmp_path,
    )
    trajs = sorted(traj_dir.glob("*.traj"))
    assert [p.name for p in trajs] == ["0.traj", "1.traj", "2.traj"]
    for path in trajs:
        frames = read(path, index=":")
        assert len(frames) == 1 and np.isfinite(frames[0].get_potential_energy()), path
    assert check_predictions(traj_dir, "is2re")["systems"] == len(trajs)
