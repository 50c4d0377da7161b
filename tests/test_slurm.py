"""The sweep launcher (fairchem_deq.launch, fairchem-deq sweep) without a cluster: submitit renders the
sbatch script of the array job (dry run), and its LocalExecutor runs a real tiny training
through fairchem's Runner, including a preemption that requeues it via Runner.checkpoint.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import REPO, TINY_OVERRIDES, logged_steps
from conftest import DATA

from fairchem_deq import launch as sweep
from fairchem_deq.cli import sweep as sweep_cli

MD22 = REPO / "configs" / "md22"


def _dry_run(capsys, *args) -> tuple[str, str]:
    assert sweep_cli.main([*map(str, args), "--dry-run"]) == 0
    out = capsys.readouterr().out
    listing, _, script = out.partition("# sbatch script (submitit, not submitted):")
    return listing, script


def _sbatch(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, flags=re.M))


def test_md22_sweep_is_one_array_job(capsys, tmp_path):
    listing, script = _dry_run(
        capsys,
        MD22,
        "--variants",
        "deq1",
        "deq2",
        "eqv2_4l",
        "--partition",
        "gpu-long",
        "--account",
        "chem",
        "--num-gpus",
        "1",
        "--timeout-h",
        "48",
        "--array-parallelism",
        "8",
        "--run-dir",
        tmp_path / "runs",
        "--logdir",
        tmp_path / "logs",
        "--setup",
        "source .venv/bin/activate",
        "--sbatch",
        "mail-type=END",
    )
    assert "21 runs (train)" in listing
    for molecule in (
        "ac_ala3_nhme",
        "dha",
        "stachyose",
        "at_at",
        "at_at_cg_cg",
        "buckyball_catcher",
        "double_walled_nanotube",
    ):
        for variant in ("deq1", "deq2", "eqv2_4l"):
            assert f"md22-{molecule}-{variant}  <- " in listing
    assert "eqv2_8l" not in listing
    flags = _sbatch(script)
    assert flags["array"] == "0-20%8"  # one array job, 21 tasks, 8 at a time
    assert flags["partition"] == "gpu-long" and flags["account"] == "chem"
    assert flags["gpus-per-node"] == "1" and flags["ntasks-per-node"] == "1" and flags["nodes"] == "1"
    assert flags["cpus-per-task"] == "3"  # optim.num_workers (2) + 1, fairchem's choice
    assert flags["time"] == str(48 * 60)
    assert flags["signal"] == "USR2@120"  # -> submitit -> Runner.checkpoint -> requeue
    assert "requeue" in flags and flags["mail-type"] == "END"
    assert flags["open-mode"] == "append"  # requeued tasks append to their logs
    assert "%A_%a" in flags["output"]  # one log per array task
    assert "source .venv/bin/activate" in script
    assert re.search(r"^srun .* -m submitit\.core\._submit .*%j$", script, flags=re.M)


def test_multi_node_job_and_fairchem_configs(tmp_path, capsys):
    paths = sweep.expand_configs([REPO / "configs/oc20/s2ef/2M/deq1.yml"])
    plan = sweep.plan_sweep(
        paths,
        logdir=tmp_path / "logs",
        num_gpus=4,
        num_nodes=2,
        run_dir=tmp_path,
        overrides=["optim.max_epochs=5", "--optim.eval_every=100"],
        slurm=dict(partition="gpu", timeout_h=72, constraint="a100"),
    )
    (config,) = plan.configs
    # fairchem's build_config: identifier/timestamp, distributed settings, overrides
    assert config["identifier"] == config["timestamp_id"] == "oc20-s2ef-2M-deq1"
    assert config["world_size"] == 8 and config["submit"] is True and config["mode"] == "train"
    assert config["optim"]["max_epochs"] == 5 and config["optim"]["eval_every"] == 100
    assert config["run_dir"] == str(tmp_path)
    assert config["slurm"]["folder"].endswith("/%j") and config["slurm"]["nodes"] == 2
    flags = _sbatch(sweep.sbatch_script(plan))
    assert "array" not in flags  # a single run is a plain job
    assert (flags["nodes"], flags["ntasks-per-node"], flags["gpus-per-node"]) == ("2", "4", "4")
    assert flags["constraint"] == "a100" and flags["cpus-per-task"] == "9"
    # predicting with each run's own checkpoint
    plan = sweep.plan_sweep(paths, logdir=tmp_path / "logs", run_dir=tmp_path, mode="predict", checkpoint="best")
    assert plan.configs[0]["checkpoint"] == str(tmp_path / "checkpoints/oc20-s2ef-2M-deq1/best_checkpoint.pt")


def test_config_selection_errors(tmp_path, capsys):
    assert [p.stem for p in sweep.expand_configs([MD22 / "dha"])] == [
        "deq1",
        "deq1_conservative",
        "deq1_paper",
        "deq2",
        "deq2_paper",
        "eqv2_4l",
        "eqv2_8l",
    ]
    # includes/ folders are never runs
    assert not [p for p in sweep.expand_configs([REPO / "configs"]) if "includes" in p.parts]
    with pytest.raises(ValueError, match="deq3"):
        sweep.expand_configs([MD22], ["deq3"])
    assert sweep_cli.main([str(tmp_path / "missing"), "--dry-run"]) == 2
    assert "no such config" in capsys.readouterr().err
    with pytest.raises(ValueError, match="same identifier"):
        sweep.build_run_configs([MD22 / "dha/deq1.yml", MD22 / "dha/deq1.yml"])


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory):
    from fairchem_deq.data import convert

    out = tmp_path_factory.mktemp("sweep") / "ethanol"
    convert(DATA / "md17_ethanol_300.npz", out, n_train=40, n_val=4, seed=0, progress=False)
    return out


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _read_logs(job) -> str:
    text = ""
    for path in (job.paths.stdout, job.paths.stderr):
        if path.exists():
            text += path.read_text(errors="replace")
    return text


@pytest.mark.slow
def test_local_executor_trains_and_requeues_after_preemption(ethanol, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the task's subprocess inherits this
    overrides = [o[2:] for o in TINY_OVERRIDES] + [
        f"dataset.train.src={ethanol / 'train'}",
        f"dataset.val.src={ethanol / 'val'}",
        f"dataset.test.src={ethanol / 'test'}",
        "optim.max_epochs=2",
        "optim.eval_every=1000000",
        "optim.checkpoint_every=-1",
    ]
    paths = sweep.expand_configs([REPO / "configs/md17/ethanol/deq1.yml"])
    plan = sweep.plan_sweep(
        paths,
        executor="local",
        logdir=tmp_path / "logs",
        run_dir=tmp_path / "runs",
        overrides=overrides,
        cpu=True,
        print_every=1,
    )
    assert plan.configs[0]["submit"] is False and plan.configs[0]["world_size"] == 1
    (job,) = sweep.submit(plan, "local", wait=False)
    # the submitted callable is fairchem's Runner: submitit calls Runner.checkpoint on USR2
    from fairchem.core._cli import Runner
    from submitit.local.local import LocalJobEnvironment

    assert isinstance(job.submission().function, Runner)
    deadline = time.time() + 120
    while "step: " not in _read_logs(job):  # training has started: preempt it
        assert time.time() < deadline and not job.done(), _read_logs(job)[-3000:]
        time.sleep(0.2)
    # preempt: USR2 to the task process, as Slurm signals the tasks of the job step
    # (submitit's LocalJob._interrupt only signals its controller, which does not forward it)
    (task,) = _children(job._process.pid)
    os.kill(task, LocalJobEnvironment._usr_sig())
    job.result()  # the requeued task ran to the end (raises if it failed)
    log = _read_logs(job)
    assert "this job is preempted" in log and "Checkpointing callback is triggered" in log, log[-3000:]
    assert "Requeued job" in log and "load user specified checkpoint" in log, log[-3000:]
    before, _, after = log.partition("Requeued job")
    steps_before, steps_after = logged_steps(before), logged_steps(after)
    assert steps_before and steps_after, log[-3000:]
    # the requeued attempt carries on from the checkpoint instead of starting again
    assert steps_before[-1] < steps_after[0] <= steps_before[-1] + 2, (steps_before, steps_after)
    assert steps_after[-1] == 20
    checkpoint = tmp_path / "runs" / "checkpoints" / "md17-ethanol-deq1" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    assert state["step"] == 2 * 40 // 4  # both epochs of 10 steps, across both attempts
    assert (tmp_path / "runs" / "logs" / "tensorboard" / "md17-ethanol-deq1").is_dir()


def test_example_scripts_are_valid_and_name_existing_configs(tmp_path):
    import subprocess

    scripts = sorted((REPO / "slurm").glob("*.sh"))
    assert {s.name for s in scripts} >= {"submit_oc20_200k.sh", "submit_oc20_2M_multinode.sh", "sweep_md22.sh"}
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
        text = script.read_text()
        for config in re.findall(r"configs/[\w/.{}$-]+\.yml", text):
            if "$" not in config:
                assert (REPO / config).is_file(), f"{script.name}: {config}"
        for size in re.findall(r"configs/oc20/s2ef/(\w+)/\$\{variant\}\.yml", text):
            loop = re.search(r"for variant in ([\w ]+);", text)
            for name in loop.group(1).split():
                assert (REPO / f"configs/oc20/s2ef/{size}/{name}.yml").is_file(), (script.name, name)


def test_cpu_tasks_on_slurm_take_one_rank(tmp_path):
    paths = sweep.expand_configs([MD22 / "dha/deq1.yml"])
    plan = sweep.plan_sweep(paths, logdir=tmp_path, cpu=True, slurm=dict(partition="cpu"))
    assert plan.configs[0]["submit"] is False and "gpus_per_node" not in plan.slurm_parameters
    with pytest.raises(ValueError, match="one rank"):
        sweep.plan_sweep(paths, logdir=tmp_path, cpu=True, num_gpus=2)
