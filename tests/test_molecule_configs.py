"""The committed MD17/MD22 configs are exactly what configs/make_molecule_configs.py writes:
a hand edit of a generated file, or a generator changed without regenerating, fails here."""

from __future__ import annotations

import subprocess
import sys

from cli_helpers import REPO

CONFIGS = REPO / "configs"
SUITES = ("md17", "md22")


def _files(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for suite in SUITES for p in (root / suite).rglob("*") if p.is_file()
    }


def test_committed_molecule_configs_are_the_generators_output(tmp_path):
    subprocess.run(
        [sys.executable, str(CONFIGS / "make_molecule_configs.py"), "--out", str(tmp_path)], check=True, cwd=tmp_path
    )
    generated, committed = _files(tmp_path), _files(CONFIGS)
    assert len(generated) > 100
    fix = "run `python configs/make_molecule_configs.py` (and edit the generator, not its output)"
    assert sorted(set(committed) - set(generated)) == [], f"not written by the generator: {fix}"
    assert sorted(set(generated) - set(committed)) == [], f"generated but not committed: {fix}"
    stale = sorted(name for name in generated if generated[name] != committed[name])
    assert stale == [], f"differ from the generator's output: {fix}"
