"""One convention for every `fairchem-deq` command (fairchem_deq.command): user errors are one
line and rc 2, Ctrl-C is rc 130, SIGTERM is rc 143, and neither leaves half-written output.
Signals are sent for real, to a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import md_args
from conftest import DATA

BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
REPO = Path(__file__).resolve().parents[1]


def _default_signals() -> None:
    """A command started from a backgrounded shell (`pytest ... &`, nohup) inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt: give the child the default
    handling a user's terminal gives it, whatever launched the test suite."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "fairchem-deq"), *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,  # noqa: PLW1509 - single-threaded test process, signal reset only
    )


def run(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "fairchem-deq"), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before the signal\n{out[-3000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the process")
        time.sleep(0.05)


def one_line_error(proc, command: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in lines if line.startswith(f"fairchem-deq {command}: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def big_npz(folder: Path, repeats: int = 60) -> Path:
    """The bundled ethanol frames, repeated (with tiny noise) so that a conversion runs for
    several seconds."""
    with np.load(DATA / "md17_ethanol_300.npz") as d:
        R, z, E, F = d["R"], d["z"], d["E"], d["F"]
    rng = np.random.default_rng(0)
    R = np.concatenate([R + 1e-3 * rng.standard_normal(R.shape) for _ in range(repeats)])
    path = folder / "ethanol_big.npz"
    np.savez(path, R=R, z=z, E=np.tile(E, (repeats, 1)), F=np.tile(F, (repeats, 1, 1)))
    return path


@pytest.mark.slow
def test_sigterm_during_convert_leaves_nothing(tmp_path):
    src = big_npz(tmp_path)
    out = tmp_path / "out"
    proc = start("convert", str(src), "--out", str(out), "--split", "none", "--no-progress", cwd=tmp_path)
    tmp = tmp_path / f"out.tmp-{proc.pid}"
    wait_for((tmp / "all" / "data.lmdb").exists, proc)
    time.sleep(0.5)  # inside the LMDB writes
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "terminated" in err and "nothing was written" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.8, 2.0, 3.5])
def test_ctrl_c_while_the_command_starts_is_rc_130_without_traceback(tmp_path, delay):
    """Python is still importing torch and fairchem (about 4 s on 2 cores)."""
    src = big_npz(tmp_path, repeats=5)
    proc = start("convert", str(src), "--out", str(tmp_path / "out"), "--no-progress", cwd=tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


@pytest.mark.slow
def test_sigint_during_md_start_up_is_rc_130_without_traceback(tmp_path, trained_checkpoint):
    out = tmp_path / "md"
    proc = start(*md_args(trained_checkpoint, out, 5), cwd=tmp_path)
    wait_for(out.exists, proc)  # the command has started: checkpoint loading follows
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_during_md_leaves_no_output(tmp_path, trained_checkpoint):
    out = tmp_path / "md"
    proc = start(*md_args(trained_checkpoint, out, 100000), cwd=tmp_path)
    stage = out / f".partial-{proc.pid}"
    wait_for((stage / ".md.traj.partial").exists, proc, timeout=300)
    time.sleep(1.0)  # a few MD steps written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_md_does_not_overwrite_a_previous_run(tmp_path):
    out = tmp_path / "md"
    out.mkdir()
    (out / "report.json").write_text('{"previous": true}')
    proc = run(
        "md",
        "--checkpoint",
        str(tmp_path / "any.pt"),
        "--structure",
        str(DATA / "md17_ethanol_300.npz"),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    line = one_line_error(proc, "md")
    assert "report.json already exists" in line and "--overwrite" in line
    assert (out / "report.json").read_text() == '{"previous": true}'
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["md", "relax"])
def test_bad_structure_and_non_deq_checkpoint_are_one_line_errors(tmp_path, command):
    eqv2 = tmp_path / "eqv2.pt"
    torch.save({"config": {"model": {"name": "hydra", "backbone": {"model": "equiformer_v2_backbone"}}}}, eqv2)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("3\nnot an xyz file\nH 0 0\n")
    out = tmp_path / "out"
    proc = run(command, "--checkpoint", str(eqv2), "--structure", str(garbage), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert str(garbage) in one_line_error(proc, command)
    proc = run(
        command,
        "--checkpoint",
        str(eqv2),
        "--structure",
        str(DATA / "md17_ethanol_300.npz"),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "holds no model weights" in one_line_error(proc, command)  # EquiformerV2 runs, but this has none
    painn = tmp_path / "painn.pt"
    torch.save({"config": {"model": {"name": "hydra", "backbone": {"model": "painn_backbone"}}}}, painn)
    proc = run(command, "--checkpoint", str(painn), "--structure", str(DATA / "md17_ethanol_300.npz"), "--out", str(out),
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert "neither a DEQuiformer nor an EquiformerV2 checkpoint" in one_line_error(proc, command)
    proc = run(
        command,
        "--checkpoint",
        str(eqv2),
        "--structure",
        str(DATA / "md17_ethanol_300.npz"),
        "--frame",
        "300",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "out of range" in one_line_error(proc, command)
    assert not out.exists()


@pytest.mark.slow
def test_unknown_deq_solver_is_one_line_and_creates_no_run_folders(tmp_path):
    proc = run(
        "--mode",
        "train",
        "--config-yml",
        str(REPO / "configs/md17/ethanol/deq1.yml"),
        "--cpu",
        "--run-dir",
        str(tmp_path / "run"),
        "--identifier",
        "x",
        "--model.backbone.deq.solver=newton",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    line = one_line_error(proc, "train")
    assert "newton" in line and "anderson" in line
    assert not (tmp_path / "run").exists()


def test_unknown_deq_solver_through_plain_fairchem_creates_no_run_folders(tmp_path):
    """fairchem's own CLI: the trainer checks the DEQ blocks before fairchem makes its folders."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "fairchem"),
            "--mode",
            "train",
            "--config-yml",
            str(REPO / "configs/md17/ethanol/deq1.yml"),
            "--cpu",
            "--run-dir",
            str(tmp_path / "run"),
            "--identifier",
            "x",
            "--model.backbone.deq.solver=newton",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode != 0
    assert "Unknown DEQ solver 'newton'" in proc.stderr
    assert not list((tmp_path / "run").glob("checkpoints/*")) and not list((tmp_path / "run").glob("results/*"))
