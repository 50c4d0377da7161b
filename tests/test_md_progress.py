"""`run_md(on_step=...)` hands each step's log row over while the run goes on (what
`fairchem-deq md --print-every` prints); ASE's EMT stands in for the model."""

from __future__ import annotations

from ase.calculators.emt import EMT
from conftest import ethanol_atoms

from fairchem_deq.cli.md import _printer
from fairchem_deq.simulate.md import run_md


def test_every_step_is_reported_while_the_run_goes_on(capsys):
    atoms = ethanol_atoms([0])[0]
    calc = EMT()
    seen = []

    def on_step(row):
        # called before the next step moves the atoms: the row describes the current state
        seen.append((row["step"], calc.results["energy"]))

    report = run_md(atoms, calc, steps=6, progress=False, on_step=on_step)
    assert [s for s, _ in seen] == list(range(7)) == [r["step"] for r in report.rows]
    assert [e for _, e in seen] == [r["epot_eV"] for r in report.rows]

    printer = _printer(3)
    for row in report.rows:
        printer(row)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["0", "3", "6"]
    assert _printer(0) is None
