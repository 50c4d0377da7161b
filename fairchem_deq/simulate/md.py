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


def covalent_bonds(atoms: Atoms, mult: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Bonded pairs (i < j) of a structure by ASE's covalent radii x `mult`, and their lengths."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j, d = neighbor_list("ijd", atoms, natural_cutoffs(atoms, mult=mult))
    keep = i < j
    return np.stack([i[keep], j[keep]], axis=1), d[keep]


def _bond_lengths(atoms: Atoms, pairs: np.ndarray) -> np.ndarray:
    if not len(pairs):
        return np.zeros(0)
    diff = atoms.positions[pairs[:, 1]] - atoms.positions[pairs[:, 0]]
    if atoms.pbc.any():
        from ase.geometry import find_mic

        diff, _ = find_mic(diff, atoms.cell, atoms.pbc)
    return np.linalg.norm(diff, axis=1)


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
    on_step: Callable[[dict], None] | None = None,
) -> MDReport:
    """Runs MD; stops early when forces exceed `max_force` (eV/Å), two atoms come closer
    than `min_distance` (Å), energies become non-finite, or (with `max_bond_stretch`, Å) a
    covalent bond of the starting structure is longer or shorter than there by more than
    that: the usual stability test of MD force fields (start from an equilibrium frame).
    `on_step(row)` is called with every step's log row as soon as it exists (e.g. to print
    progress while the run goes on)."""
    if ensemble not in ("nve", "nvt"):
        raise ValueError(f"unknown ensemble {ensemble!r}; choose 'nve' or 'nvt'")
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
            }
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
                stretch = np.abs(_bond_lengths(atoms, bonds) - bond_ref)
                worst = int(stretch.argmax())
                if stretch[worst] > max_bond_stretch:
                    a, b = bonds[worst]
                    unphysical_step, reason = (
                        step,
                        (
                            f"bond {atoms[a].symbol}{a}-{atoms[b].symbol}{b} changed by {stretch[worst]:.2f} Å "
                            f"> {max_bond_stretch} from its starting length {bond_ref[worst]:.2f} Å"
                        ),
                    )
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
