"""Readers: MD17/MD22 npz, extxyz and ASE .traj files -> validated ase.Atoms frames.

Every reader checks the whole file before returning, so that a malformed input fails with a
`DatasetFormatError` (naming the file and the problem) before anything is written. Frames come
back with a `SinglePointCalculator` holding energy and forces in the requested output unit,
positions in Å, and a cell: molecules (no cell, no periodicity) get a large cubic box with
`pbc=False`, which fairchem's `radius_graph_pbc` honours (non-periodic edges).

Units read: sGDML-style npz in kcal/mol and kcal/mol/Å (or the unit named by its `e_unit` /
`r_unit` keys when present); traj and extxyz in eV and eV/Å (ASE's convention).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from fairchem_deq.command import UserError
from fairchem_deq.data.molecule_box import MOLECULE_CELL, molecule_box, needs_molecule_box

# eV per unit; the keys are the spellings accepted for an npz's `e_unit` (lower-cased).
ENERGY_UNITS_IN_EV: dict[str, float] = {
    "ev": 1.0,
    "kcal/mol": units.kcal / units.mol,  # 0.0433641 eV
    "kj/mol": units.kJ / units.mol,
    "ha": units.Hartree,
    "hartree": units.Hartree,
}
# Output units offered by the converter (what the LMDB stores).
OUTPUT_ENERGY_UNITS = ("ev", "kcal/mol")
LENGTH_UNITS_IN_ANGSTROM: dict[str, float] = {
    "ang": 1.0,
    "angstrom": 1.0,
    "a": 1.0,
    "bohr": units.Bohr,
}
# EquiformerV2 embeds atomic numbers with nn.Embedding(max_num_elements=90): Z must be < 90.
MAX_NUM_ELEMENTS = 90
NPZ_KEYS = ("R", "z", "E", "F")


class DatasetFormatError(ValueError, UserError):
    """An input file cannot be converted; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # keep picklable (e.g. across multiprocessing) despite the 2-arg init
        return type(self), (self.path, self.problem)


def normalize_unit(unit: str) -> str:
    """Canonical spelling of an output energy unit ('ev' or 'kcal/mol'); ValueError otherwise."""
    key = str(unit).strip().lower()
    if key not in OUTPUT_ENERGY_UNITS:
        raise ValueError(f"unknown energy unit {unit!r}; choose one of {OUTPUT_ENERGY_UNITS}")
    return key


def detect_format(path: str | Path) -> str:
    """Format from the file suffix: .npz -> npz, .extxyz/.xyz -> extxyz, .traj -> traj."""
    suffix = Path(path).suffix.lower()
    fmt = next((r.name for r in READERS.values() if suffix in r.suffixes), None)
    if fmt is None:
        raise DatasetFormatError(
            path, f"cannot tell the format from the suffix; pass one of {tuple(READERS)} explicitly"
        )
    return fmt


def system_id_from_name(path: str | Path) -> int | None:
    """The OC20 system id in a `random<sid>.traj`-style file name, or None."""
    match = re.fullmatch(r"random(\d+)", Path(path).stem)
    return int(match.group(1)) if match else None


class NpzFrames(Sequence):
    """Lazy frames of one npz trajectory: builds each ase.Atoms on access (MD17 files are long)."""

    def __init__(self, numbers, positions, energies, forces, cell) -> None:
        self.numbers, self.positions = numbers, positions
        self.energies, self.forces, self.cell = energies, forces, cell

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        atoms = Atoms(numbers=self.numbers, positions=self.positions[index], cell=self.cell, pbc=False)
        atoms.calc = SinglePointCalculator(atoms, energy=float(self.energies[index]), forces=self.forces[index].copy())
        return atoms


def read_frames(
    path: str | Path,
    fmt: str = "auto",
    *,
    units: str = "ev",
    molecule_cell: float = MOLECULE_CELL,
    max_num_elements: int = MAX_NUM_ELEMENTS,
) -> Sequence[Atoms]:
    """Read and validate one trajectory file; `fmt` 'auto' picks the reader by suffix."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; choose 'auto' or one of {tuple(READERS)}")
    return READERS[fmt].read(path, units=units, molecule_cell=molecule_cell, max_num_elements=max_num_elements)


def read_npz(
    path: str | Path,
    *,
    units: str = "ev",
    molecule_cell: float = MOLECULE_CELL,
    max_num_elements: int = MAX_NUM_ELEMENTS,
) -> NpzFrames:
    """sGDML-style npz (MD17/MD22): R (n,N,3) Å, z (N,), E (n,) or (n,1), F (n,N,3).

    E and F are kcal/mol and kcal/mol/Å unless the file says otherwise in `e_unit`/`r_unit`;
    they are converted to `units` ('ev' by default, or 'kcal/mol' to keep them).
    """
    out_unit = normalize_unit(units)
    _require_file(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise DatasetFormatError(path, f"missing key(s) {missing}; an sGDML npz needs {list(NPZ_KEYS)}")
            arrays = {key: np.asarray(npz[key]) for key in NPZ_KEYS}
            e_unit = _unit_string(npz, "e_unit", "kcal/mol")
            r_unit = _unit_string(npz, "r_unit", "Ang")
    except DatasetFormatError:
        raise
    except Exception as exc:  # corrupt zip, not an npz, pickled arrays, ...
        raise DatasetFormatError(path, f"cannot read as npz ({type(exc).__name__}: {exc})") from exc

    if e_unit.lower() not in ENERGY_UNITS_IN_EV:
        raise DatasetFormatError(path, f"unknown energy unit e_unit={e_unit!r}")
    if r_unit.lower() not in LENGTH_UNITS_IN_ANGSTROM:
        raise DatasetFormatError(path, f"unknown length unit r_unit={r_unit!r}")
    energy_factor = ENERGY_UNITS_IN_EV[e_unit.lower()] / ENERGY_UNITS_IN_EV[out_unit]
    length_factor = LENGTH_UNITS_IN_ANGSTROM[r_unit.lower()]

    positions, numbers, energies, forces = (arrays[k] for k in NPZ_KEYS)
    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise DatasetFormatError(path, f"R must have shape (frames, atoms, 3), got {positions.shape}")
    n_frames, n_atoms = positions.shape[:2]
    if numbers.ndim != 1 or len(numbers) != n_atoms:
        raise DatasetFormatError(
            path, f"z must have shape ({n_atoms},) to match R {positions.shape}, got {numbers.shape}"
        )
    if forces.shape != positions.shape:
        raise DatasetFormatError(path, f"F has shape {forces.shape}, R has {positions.shape}")
    if energies.shape not in ((n_frames,), (n_frames, 1)):
        raise DatasetFormatError(
            path, f"E must have shape ({n_frames},) or ({n_frames}, 1) to match R, got {energies.shape}"
        )
    if n_frames == 0:
        raise DatasetFormatError(path, "contains no frames")
    if n_atoms == 0:
        raise DatasetFormatError(path, "frames contain no atoms")
    numbers = _check_numbers(path, numbers, max_num_elements)
    for name, values in (("positions R", positions), ("energies E", energies), ("forces F", forces)):
        _check_finite(path, name, values)

    return NpzFrames(
        numbers,
        positions.astype(np.float64) * length_factor,
        energies.reshape(n_frames).astype(np.float64) * energy_factor,
        forces.astype(np.float64) * (energy_factor / length_factor),
        molecule_box(molecule_cell),
    )


def read_traj(
    path: str | Path,
    *,
    units: str = "ev",
    molecule_cell: float = MOLECULE_CELL,
    max_num_elements: int = MAX_NUM_ELEMENTS,
) -> list[Atoms]:
    """ASE .traj (e.g. an OC20 relaxation): every frame needs energy (eV) and forces (eV/Å)."""
    return _read_ase(path, "traj", units, molecule_cell, max_num_elements)


def read_extxyz(
    path: str | Path,
    *,
    units: str = "ev",
    molecule_cell: float = MOLECULE_CELL,
    max_num_elements: int = MAX_NUM_ELEMENTS,
) -> list[Atoms]:
    """Extended XYZ with per-frame `energy` (eV) and per-atom `forces` (eV/Å)."""
    return _read_ase(path, "extxyz", units, molecule_cell, max_num_elements)


def _read_ase(path, fmt, units, molecule_cell, max_num_elements) -> list[Atoms]:
    import ase.io

    factor = 1.0 / ENERGY_UNITS_IN_EV[normalize_unit(units)]  # files hold eV
    _require_file(path)
    try:
        frames = ase.io.read(path, index=":", format=fmt)
    except Exception as exc:
        raise DatasetFormatError(path, f"cannot read as {fmt} ({type(exc).__name__}: {exc})") from exc
    if isinstance(frames, Atoms):
        frames = [frames]
    if len(frames) == 0:
        raise DatasetFormatError(path, "contains no frames")

    numbers = frames[0].get_atomic_numbers()
    if len(numbers) == 0:
        raise DatasetFormatError(path, "frames contain no atoms")
    energies, forces = [], []
    for fid, atoms in enumerate(frames):
        if len(atoms) != len(numbers):
            raise DatasetFormatError(
                path,
                f"atom count changes within the trajectory: frame 0 has {len(numbers)}, frame {fid} has {len(atoms)}",
            )
        if not np.array_equal(atoms.get_atomic_numbers(), numbers):
            raise DatasetFormatError(
                path,
                f"species change within the trajectory: frame {fid} has "
                f"{atoms.get_chemical_formula()} in a different order or composition than frame 0 "
                f"({frames[0].get_chemical_formula()})",
            )
        energy, frame_forces = _energy_and_forces(path, fid, atoms)
        energies.append(energy)
        forces.append(frame_forces)
        _set_cell(path, fid, atoms, molecule_cell)
        _check_finite(path, f"cell of frame {fid}", np.asarray(atoms.cell), per_frame=False)
    _check_numbers(path, numbers, max_num_elements)
    _check_finite(path, "positions", np.stack([a.positions for a in frames]))
    _check_finite(path, "energies", np.asarray(energies, dtype=np.float64))
    _check_finite(path, "forces", np.stack(forces))

    for atoms, energy, frame_forces in zip(frames, energies, forces):
        atoms.calc = SinglePointCalculator(atoms, energy=float(energy) * factor, forces=frame_forces * factor)
    return frames


@dataclass(frozen=True)
class Reader:
    """A dataset format: its name, the file suffixes it is detected by, and its reader
    (path, *, units, molecule_cell, max_num_elements) -> frames."""

    name: str
    suffixes: tuple[str, ...]
    read: Callable[..., Sequence[Atoms]]


# The one table of formats: the converter and its CLI derive their choices from it; a new
# format is a reader function and one entry here
READERS: dict[str, Reader] = {
    r.name: r
    for r in (
        Reader("npz", (".npz",), read_npz),
        Reader("extxyz", (".extxyz", ".xyz"), read_extxyz),
        Reader("traj", (".traj",), read_traj),
    )
}
FORMATS = tuple(READERS)  # the shipped formats (READERS is what the converter consults)


def known_suffixes() -> list[str]:
    """Every file suffix a reader of `READERS` is detected by."""
    return sorted({suffix for r in READERS.values() for suffix in r.suffixes})


def _unit_string(npz, key: str, default: str) -> str:
    """An sGDML unit entry (0-d str or bytes array) as str; `default` when absent."""
    if key not in npz.files:
        return default
    value = npz[key].item() if npz[key].size == 1 else npz[key]
    return value.decode() if isinstance(value, bytes) else str(value)


def _require_file(path) -> None:
    if not Path(path).is_file():
        raise DatasetFormatError(path, "no such file")


def _energy_and_forces(path, fid, atoms: Atoms) -> tuple[float, np.ndarray]:
    """Energy and raw (unconstrained) forces of one frame, from its calculator or info/arrays."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy"))
    forces = results.get("forces", atoms.arrays.get("forces"))
    if energy is None:
        raise DatasetFormatError(path, f"frame {fid} has no energy")
    if forces is None:
        raise DatasetFormatError(path, f"frame {fid} has no forces")
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (len(atoms), 3):
        raise DatasetFormatError(path, f"frame {fid}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    try:
        energy = float(np.asarray(energy).reshape(()))
    except (TypeError, ValueError) as exc:
        raise DatasetFormatError(path, f"frame {fid}: energy is not a scalar ({energy!r})") from exc
    return energy, forces


def _set_cell(path, fid, atoms: Atoms, molecule_cell: float) -> None:
    """Give a molecule (no pbc, no full cell) a cubic box; refuse periodic frames without a full cell."""
    if needs_molecule_box(atoms):
        atoms.set_cell(molecule_box(molecule_cell))
    elif atoms.pbc.any() and atoms.cell.rank < 3:
        raise DatasetFormatError(path, f"frame {fid} is periodic ({atoms.pbc}) but its cell is degenerate")


def _check_numbers(path, numbers: np.ndarray, max_num_elements: int) -> np.ndarray:
    numbers = np.asarray(numbers)
    if not np.issubdtype(numbers.dtype, np.number) or not np.all(np.isfinite(numbers)):
        raise DatasetFormatError(path, f"atomic numbers are not numeric: {numbers}")
    if not np.all(numbers == np.round(numbers)):
        raise DatasetFormatError(path, f"atomic numbers are not integers: {numbers}")
    numbers = numbers.astype(np.int64)
    bad = numbers[(numbers < 1) | (numbers > 118)]
    if bad.size:
        raise DatasetFormatError(path, f"unknown element(s): atomic number(s) {sorted(set(bad.tolist()))}")
    bad = numbers[numbers >= max_num_elements]
    if bad.size:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in sorted(set(bad.tolist())))
        raise DatasetFormatError(
            path,
            f"unsupported element(s) {names}: EquiformerV2's max_num_elements is "
            f"{max_num_elements}, so atomic numbers must be < {max_num_elements}",
        )
    return numbers


def _check_finite(path, name: str, values: np.ndarray, per_frame: bool = True) -> None:
    """NaN/inf check; with per_frame the first axis is the frame index named in the error."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        bad = tuple(np.argwhere(~finite)[0])
        kind = "NaN" if np.isnan(values[bad]) else "inf"
        where = f" at frame {bad[0]}" if per_frame and bad else ""
        raise DatasetFormatError(path, f"{kind} in {name}{where}")
