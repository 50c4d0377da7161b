"""Runs fairchem's own CLI (and ours) in a subprocess on small real data."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tiny_model import TINY_WIDTH

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent

# the paper's MD config shrunk to a CPU-test size (tiny_model.TINY_WIDTH), as fairchem CLI overrides
TINY_OVERRIDES = [
    *(f"--model.backbone.{key}={value}" for key, value in TINY_WIDTH.items()),
    "--optim.num_workers=0",
    "--optim.batch_size=4",
    "--optim.eval_batch_size=4",
    "--optim.scheduler_params.warmup_epochs=0.1",
]

LOSS = re.compile(r"\bloss: ([-+0-9.e]+)")
STEP = re.compile(r"\bstep: ([-+0-9.e]+)")


def run_cli(
    args: list[str], cwd: Path, timeout: int = 900, program: str = "fairchem", threads: int = 2
) -> subprocess.CompletedProcess:
    """`timeout`: a run still going then (a DDP hang) is killed with all its ranks, and fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    # fairchem's INFO log is what these tests read: a LOGLEVEL left by an in-process command
    # (the md/relax/replicas loaders set WARNING) must not silence it
    env.pop("LOGLEVEL", None)
    command = [str(BIN / program), *args]
    # its own process group: the DDP ranks are the launcher's children, and a hang must not outlive the test
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as child:
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except BaseException as error:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            stdout, stderr = child.communicate()
            if not isinstance(error, subprocess.TimeoutExpired):
                raise
            raise AssertionError(
                f"{program} {' '.join(args)} still running after {timeout} s (killed)\n--- stdout\n"
                f"{stdout[-6000:]}\n--- stderr\n{stderr[-6000:]}"
            ) from None
    proc = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
    if proc.returncode != 0:
        raise AssertionError(
            f"{program} {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def dataset_overrides(data_dir: Path) -> list[str]:
    return [
        f"--dataset.train.src={data_dir / 'train'}",
        f"--dataset.val.src={data_dir / 'val'}",
        f"--dataset.test.src={data_dir / 'test'}",
    ]


def logged_losses(text: str) -> list[float]:
    return [float(m) for m in LOSS.findall(text)]


def logged_steps(text: str) -> list[int]:
    return [int(float(m)) for m in STEP.findall(text)]


def md_args(checkpoint: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """`fairchem-deq md` on the bundled ethanol frames (frame 0), without a progress bar."""
    data = Path(__file__).parent / "data" / "md17_ethanol_300.npz"
    return ["md", "--checkpoint", str(checkpoint), "--structure", str(data), "--steps", str(steps), "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def train_args(config: str, run_dir: Path, data_dir: Path, identifier: str, epochs: int, *extra: str) -> list[str]:
    """fairchem --mode train of a shipped config at the tiny width on `data_dir`'s LMDBs,
    without validation during training, printing every 4 steps."""
    return [
        "--mode",
        "train",
        "--config-yml",
        str(REPO / config),
        "--cpu",
        "--run-dir",
        str(run_dir),
        "--identifier",
        identifier,
        "--timestamp-id",
        identifier,
        "--print-every",
        "4",
        *TINY_OVERRIDES,
        *dataset_overrides(data_dir),
        f"--optim.max_epochs={epochs}",
        "--optim.eval_every=1000000",
        *extra,
    ]
