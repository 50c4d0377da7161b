"""The package installs, imports, registers its classes and exposes both CLIs."""

from __future__ import annotations

import subprocess

import pytest
from cli_helpers import BIN


def test_fairchem_and_fairchem_deq_import():
    import fairchem.core  # noqa: F401

    import fairchem_deq

    assert fairchem_deq.__version__
    assert fairchem_deq.DEQEquiformerV2Backbone and fairchem_deq.DEQCalculator


@pytest.mark.parametrize(
    ("kind", "short", "dotted"),
    [
        ("model", "deq_equiformer_v2_backbone", "fairchem_deq.models.DEQEquiformerV2Backbone"),
        ("trainer", "deq_forces", "fairchem_deq.trainers.DEQForcesTrainer"),
    ],
)
def test_registered_names_resolve_by_short_name_and_dotted_path(kind, short, dotted):
    from fairchem.core.common.registry import registry

    import fairchem_deq.trainers  # noqa: F401  (registers the short names)

    getter = getattr(registry, f"get_{kind}_class")
    by_short, by_path = getter(short), getter(dotted)
    assert by_short is by_path
    assert f"{by_short.__module__}.{by_short.__name__}".startswith("fairchem_deq.")


def test_dotted_path_resolves_in_a_fresh_interpreter_without_importing_the_package():
    # what the plain `fairchem` CLI relies on: no import hook, just the dotted path
    code = (
        "import sys\n"
        "from fairchem.core.common.registry import registry\n"
        "assert 'fairchem_deq' not in sys.modules\n"
        "cls = registry.get_model_class('fairchem_deq.models.DEQEquiformerV2Backbone')\n"
        "assert registry.get_model_class('deq_equiformer_v2_backbone') is cls\n"
        "print(cls.__name__)\n"
    )
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DEQEquiformerV2Backbone" in out.stdout


@pytest.mark.parametrize("program", ["fairchem", "fairchem-deq"])
def test_cli_help_runs(program):
    out = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--config-yml" in out.stdout
    if program == "fairchem-deq":
        for sub in ("convert", "md", "relax"):
            assert sub in out.stdout
