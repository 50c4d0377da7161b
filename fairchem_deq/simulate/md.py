"""Molecular dynamics with a (DEQ) ASE calculator: NVE or Langevin NVT, with a log of
energy, temperature and solver iterations per step, and a stability report.

The trajectory and the log are written to temporary files and renamed when the run ends
(also when it stops early because the simulation became unphysical), so an interrupted
run never leaves a complete-looking file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.io.trajectory import Trajectory
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from tqdm import tqdm

from fairchem_deq.outputs import partial_path, write_csv_atomic
from fairchem_deq.simulate.stability import COLLAPSE_DEVIATION, BondReference, bond_lengths, bond_name, covalent_bonds

LOG_FIELDS = [
    "step",
    "time_fs",
    "epot_eV",
    "ekin_eV",
    "etot_eV",
    "temperature_K",
    "solver_iterations",
    "rel_residual",
    "max_force_eVA",
    "min_distance_A",
    "max_bond_deviation_A",  # with a bond reference: largest |bond length - reference mean|
]


@dataclass
class MDReport:
    steps_run: int
    ensemble: str
    timestep_fs: float
    natoms: int
    mean_solver_iterations: float | None
    energy_drift_meV_per_atom_per_ps: float | None  # slope of E_tot(t), NVE only
    unphysical_step: int | None  # first step that broke a threshold, None if stable
    unphysical_reason: str | None
    trajectory: str | None
    log: str | None
    # the thresholds the run was stopped by (max_force_eVA, min_distance_A, max_bond_stretch_A,
    # max_bond_deviation_A and bond_reference: the reference's description, None when off)
    stop_criteria: dict = field(default_factory=dict)
    max_bond_deviation_A: float | None = None  # with a bond reference: the largest over the run
    rows: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("rows")
        return d


def _min_distance(atoms: Atoms) -> float:
    if len(atoms) < 2:
        return float("inf")
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    return float(d[np.triu_indices(len(atoms), 1)].min())


def run_md(
    atoms: Atoms,
    calculator,
    *,
    ensemble: str = "nve",
    timestep_fs: float = 0.5,
    steps: int = 1000,
    temperature_K: float = 300.0,
    friction_per_fs: float = 0.01,
    seed: int = 0,
    trajectory: str | Path | None = None,
    log: str | Path | None = None,
    max_force: float = 50.0,
    min_distance: float = 0.5,
    progress: bool = True,
    init_velocities: bool = True,
    max_bond_stretch: float | None = None,
    bond_reference: BondReference | None = None,
    max_bond_deviation: float = COLLAPSE_DEVIATION,
    on_step: Callable[[dict], None] | None = None,
) -> MDReport:
    """Runs MD; stops early when forces exceed `max_force` (eV/Å), two atoms come closer
    than `min_distance` (Å), energies become non-finite, (with `max_bond_stretch`, Å) a
    covalent bond of the starting structure is longer or shorter than there by more than
    that, or (with `bond_reference`) a reference bond's length deviates from its mean over
    the reference data by more than `max_bond_deviation` Å: Fu et al. 2023's collapse
    criterion (`fairchem_deq.simulate.stability`; the structure must hold the reference's
    atoms in its order, else ValueError before any step).
    `on_step(row)` is called with every step's log row as soon as it exists (e.g. to print
    progress while the run goes on)."""
    if ensemble not in ("nve", "nvt"):
        raise ValueError(f"unknown ensemble {ensemble!r}; choose 'nve' or 'nvt'")
    if bond_reference is not None:
        bond_reference.check(atoms)
    atoms = atoms.copy()
    atoms.calc = calculator
    if init_velocities:
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
        Stationary(atoms)
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep=dt)
    else:
        dyn = Langevin(
            atoms,
            timestep=dt,
            temperature_K=temperature_K,
            friction=friction_per_fs / units.fs,
            rng=np.random.default_rng(seed),
        )

    bonds, bond_ref = covalent_bonds(atoms) if max_bond_stretch is not None else (np.zeros((0, 2), int), None)
    traj_tmp = partial_path(trajectory) if trajectory else None
    traj_writer = Trajectory(str(traj_tmp), "w", atoms) if traj_tmp else None
    rows: list[dict] = []
    unphysical_step, reason = None, None
    bar = tqdm(total=steps, desc=f"MD {ensemble}", disable=not progress, unit="step")
    try:
        for step in range(steps + 1):
            if step > 0:
                dyn.run(1)
                bar.update(1)
            forces = atoms.get_forces()
            epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
            stats = getattr(calculator, "last_solver_stats", {}) or {}
            row = {
                "step": step,
                "time_fs": step * timestep_fs,
                "epot_eV": epot,
                "ekin_eV": ekin,
                "etot_eV": epot + ekin,
                "temperature_K": atoms.get_temperature(),
                "solver_iterations": stats.get("nstep"),
                "rel_residual": stats.get("rel_residual"),
                "max_force_eVA": float(np.linalg.norm(forces, axis=1).max()),
                "min_distance_A": _min_distance(atoms),
                "max_bond_deviation_A": None,
            }
            if bond_reference is not None:
                row["max_bond_deviation_A"], deviated_bond = bond_reference.worst_bond(atoms)
            rows.append(row)
            if on_step is not None:
                on_step(row)
            if traj_writer is not None:
                traj_writer.write(atoms)
            if stats.get("nstep") is not None:
                bar.set_postfix(iters=int(stats["nstep"]), T=f"{row['temperature_K']:.0f}K")
            if not np.isfinite(row["etot_eV"]) or not np.isfinite(forces).all():
                unphysical_step, reason = step, "non-finite energy or forces"
            elif row["max_force_eVA"] > max_force:
                unphysical_step, reason = step, f"max force {row['max_force_eVA']:.1f} eV/Å > {max_force}"
            elif row["min_distance_A"] < min_distance:
                unphysical_step, reason = step, f"atoms {row['min_distance_A']:.2f} Å apart < {min_distance}"
            elif len(bonds):
                stretch = np.abs(bond_lengths(atoms, bonds) - bond_ref)
                worst = int(stretch.argmax())
                if stretch[worst] > max_bond_stretch:
                    unphysical_step, reason = (
                        step,
                        (
                            f"bond {bond_name(atoms, *bonds[worst])} changed by {stretch[worst]:.2f} Å "
                            f"> {max_bond_stretch} from its starting length {bond_ref[worst]:.2f} Å"
                        ),
                    )
            if (
                unphysical_step is None
                and row["max_bond_deviation_A"] is not None
                and row["max_bond_deviation_A"] > max_bond_deviation
            ):
                unphysical_step, reason = step, f"{deviated_bond} (> {max_bond_deviation} Å, Fu et al. 2023)"
            if unphysical_step is not None:
                break
    except BaseException:
        if traj_writer is not None:
            traj_writer.close()
            traj_tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        if traj_writer is not None:
            traj_writer.close()
    if traj_tmp:
        os.replace(traj_tmp, trajectory)
    if log:
        write_csv_atomic(log, rows, LOG_FIELDS)
    iters = [r["solver_iterations"] for r in rows if r["solver_iterations"] is not None]
    drift = energy_drift(rows, len(atoms)) if ensemble == "nve" else None
    deviations = [r["max_bond_deviation_A"] for r in rows if r["max_bond_deviation_A"] is not None]
    return MDReport(
        steps_run=rows[-1]["step"],
        ensemble=ensemble,
        timestep_fs=timestep_fs,
        natoms=len(atoms),
        mean_solver_iterations=float(np.mean(iters)) if iters else None,
        energy_drift_meV_per_atom_per_ps=drift,
        unphysical_step=unphysical_step,
        unphysical_reason=reason,
        trajectory=str(trajectory) if trajectory else None,
        log=str(log) if log else None,
        stop_criteria={
            "max_force_eVA": max_force,
            "min_distance_A": min_distance,
            "max_bond_stretch_A": max_bond_stretch,
            "max_bond_deviation_A": max_bond_deviation if bond_reference is not None else None,
            "bond_reference": bond_reference.description if bond_reference is not None else None,
        },
        max_bond_deviation_A=max(deviations) if deviations else None,
        rows=rows,
    )


def energy_drift(rows: list[dict], natoms: int) -> float | None:
    """Slope of a linear fit of E_tot(t) over MD log rows, in meV/atom/ps (None: too few
    rows or a non-finite energy)."""
    if len(rows) <= 2:
        return None
    t_ps = np.array([r["time_fs"] for r in rows]) / 1000.0
    etot = np.array([r["etot_eV"] for r in rows])
    if not np.isfinite(etot).all():
        return None
    return float(np.polyfit(t_ps, etot, 1)[0] / natoms * 1000.0)
