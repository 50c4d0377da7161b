"""`fairchem-deq config show`: the config fairchem builds (includes merged, overrides applied),
as YAML on stdout; problems are one-line errors with rc 2."""

from __future__ import annotations

import subprocess

import yaml
from cli_helpers import BIN, REPO

ETHANOL = REPO / "configs" / "md17" / "ethanol" / "deq1.yml"


def show(capsys, *args: str) -> tuple[int, str, str]:
    from fairchem_deq.cli import main

    rc = main(["config", "show", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_console_script_prints_the_merged_config():
    proc = subprocess.run(
        [str(BIN / "fairchem-deq"), "config", "show", str(ETHANOL)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = yaml.safe_load(proc.stdout)  # stdout is nothing but the YAML
    assert "includes" not in config
    assert config["model"]["backbone"]["deq"]  # from includes/md/deq1.yml
    assert config["optim"]["batch_size"]
    assert config["dataset"]["train"]["src"] == "data/md17/ethanol/train"
    assert config["mode"] is None  # the run keys fairchem's build_config adds
    assert config["cpu"] is False


def test_overrides_and_fairchem_flags_change_the_config(capsys):
    rc, out, _ = show(capsys, str(ETHANOL))
    assert rc == 0
    default = yaml.safe_load(out)["optim"]["batch_size"]
    rc, out, err = show(
        capsys,
        str(ETHANOL),
        f"--optim.batch_size={default + 3}",
        "--model.backbone.deq.solver=broyden",
        "--mode",
        "train",
        "--cpu",
    )
    assert rc == 0, err
    config = yaml.safe_load(out)
    assert config["optim"]["batch_size"] == default + 3
    assert config["model"]["backbone"]["deq"]["solver"] == "broyden"
    assert config["mode"] == "train"
    assert config["cpu"] is True
    assert config["distributed_backend"] == "gloo"


def test_missing_file_and_bad_override_are_one_line_errors(capsys, tmp_path):
    missing = tmp_path / "nope.yml"
    rc, out, err = show(capsys, str(missing))
    assert rc == 2
    assert out == ""
    assert err.strip() == f"fairchem-deq config: error: {missing}: no such config file"
    rc, out, err = show(capsys, str(ETHANOL), "optim.batch_size=4")
    assert rc == 2
    assert out == ""
    assert err.startswith("fairchem-deq config: error: overrides look like --key.sub=value")


def test_conflicting_and_missing_includes_are_errors(capsys, tmp_path):
    (tmp_path / "a.yml").write_text("optim:\n  batch_size: 2\n")
    (tmp_path / "b.yml").write_text("optim:\n  batch_size: 3\n")
    both = tmp_path / "both.yml"
    both.write_text("includes:\n  - a.yml\n  - b.yml\n")
    rc, out, err = show(capsys, str(both))
    assert rc == 2
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"fairchem-deq config: error: {both}: Conflicting")
    assert "optim.batch_size" in line
    lost = tmp_path / "lost.yml"
    lost.write_text("includes:\n  - gone.yml\n")
    rc, _, err = show(capsys, str(lost))
    assert rc == 2
    assert "gone.yml" in err
