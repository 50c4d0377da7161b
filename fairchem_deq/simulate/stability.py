"""MD stability as Fu et al. 2023 measure it ("Forces are not enough: benchmark and critical
evaluation for machine learning force fields with molecular simulations", TMLR 2023).

- Collapse: a simulation has collapsed at the first step where ANY covalent bond's length
  deviates by more than 0.5 Å from that bond's MEAN length over the reference (DFT) data
  (`BondReference.collapsed`). The bonds are the pairs of the FIRST reference frame closer
  than the sum of their ASE covalent radii (`ase.neighborlist.natural_cutoffs`) x `mult`
  (1.2); their mean lengths are averaged over ALL reference frames. Bonds are fixed once
  taken: a bond that breaks during a run is measured as the pair it was, which is what
  makes it count as a collapse.
- Distance histogram error: h(r) is the histogram of all interatomic distances (every pair
  i < j of every frame) in bins of `bin_width` (0.1 Å) from 0 to `r_max` (10 Å), as the
  fraction of all pairs in each bin (it sums to 1 when every distance is below `r_max`);
  the error is the mean over bins of |h(r) - h_ref(r)|, in percent.

Periodic structures (any `pbc`) use minimum-image distances throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from fairchem_deq.command import UserError
from fairchem_deq.outputs import write_text_atomic

BOND_MULT = 1.2  # bonds: closer than (covalent radius_i + covalent radius_j) x 1.2
COLLAPSE_DEVIATION = 0.5  # Å, Fu et al.'s threshold
JSON_FORMAT = "fairchem_deq.BondReference"


class BondReferenceError(ValueError, UserError):
    """A bond reference that cannot be built or read, or a structure it does not describe."""


def covalent_bonds(atoms: Atoms, mult: float = BOND_MULT) -> tuple[np.ndarray, np.ndarray]:
    """Bonded pairs (i < j, each pair once) of a structure by ASE's covalent radii x `mult`,
    and their (minimum-image when periodic) lengths."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=mult))
    keep = i < j
    pairs = np.unique(np.stack([i[keep], j[keep]], axis=1).reshape(-1, 2), axis=0)
    return pairs, bond_lengths(atoms, pairs)


def bond_lengths(atoms: Atoms, pairs: np.ndarray) -> np.ndarray:
    """Lengths (Å) of the atom pairs [m, 2] of `atoms`, minimum image when periodic."""
    if not len(pairs):
        return np.zeros(0)
    diff = atoms.positions[pairs[:, 1]] - atoms.positions[pairs[:, 0]]
    if atoms.pbc.any():
        from ase.geometry import find_mic

        diff, _ = find_mic(diff, atoms.cell, atoms.pbc)
    return np.linalg.norm(diff, axis=1)


def bond_name(atoms: Atoms, i: int, j: int) -> str:
    """'C0-H3': the elements and indices of a pair."""
    return f"{atoms[i].symbol}{i}-{atoms[j].symbol}{j}"


@dataclass(frozen=True, eq=False)
class BondReference:
    """The covalent bonds of a molecule (or structure) and their mean lengths over reference
    frames: Fu et al.'s collapse criterion (module docstring)."""

    pairs: np.ndarray  # int [m, 2], i < j
    mean_lengths: np.ndarray  # float [m], Å
    species: np.ndarray  # atomic numbers of the reference structure
    description: str = ""

    def __post_init__(self) -> None:
        pairs = np.array(self.pairs, dtype=np.int64).reshape(-1, 2)
        means = np.array(self.mean_lengths, dtype=np.float64).reshape(-1)
        species = np.array(self.species, dtype=np.int64).reshape(-1)
        if len(pairs) != len(means):
            raise BondReferenceError(f"{len(pairs)} bonds but {len(means)} mean lengths")
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= len(species) or not (pairs[:, 0] < pairs[:, 1]).all()):
            raise BondReferenceError(f"bond pairs must be atom indices i < j below {len(species)}")
        for name, value in (("pairs", pairs), ("mean_lengths", means), ("species", species)):
            value.flags.writeable = False
            object.__setattr__(self, name, value)

    @classmethod
    def from_frames(cls, frames: Sequence[Atoms], mult: float = BOND_MULT, source: str = "") -> BondReference:
        """Bonds of `frames[0]` (covalent radii x `mult`), mean lengths over all `frames`
        (every frame must hold the same atoms in the same order)."""
        if isinstance(frames, Atoms):
            frames = [frames]
        if len(frames) == 0:
            raise BondReferenceError(f"no reference frames{' in ' + source if source else ''}")
        first = frames[0]
        species = first.get_atomic_numbers()
        pairs, _ = covalent_bonds(first, mult)
        total = np.zeros(len(pairs))
        for k, atoms in enumerate(frames):
            if not np.array_equal(atoms.get_atomic_numbers(), species):
                raise BondReferenceError(
                    f"reference frame {k} ({atoms.get_chemical_formula()}) does not hold the atoms of frame 0 "
                    f"({first.get_chemical_formula()}) in the same order"
                )
            total += bond_lengths(atoms, pairs)
        description = (
            f"{len(pairs)} covalent bonds of {first.get_chemical_formula()} (pairs within ASE covalent radii x "
            f"{mult:g} in the first reference frame), mean lengths over {len(frames)} reference frames"
            + (f" of {source}" if source else "")
        )
        return cls(pairs, total / len(frames), species, description)

    @classmethod
    def from_file(cls, path: str | Path, mult: float = BOND_MULT, index: str = ":") -> BondReference:
        """Reference frames from a file: an sGDML npz (MD17/MD22: keys R, z, through the
        package's dataset readers), any file ASE reads (.xyz, .extxyz, .traj, ...; `index`
        or a `file@index` suffix picks frames, all by default), or a BondReference saved
        with `save` (.json)."""
        path = str(path)
        if not Path(path).exists() and "@" in path:
            path, index = path.rsplit("@", 1)
        if not Path(path).is_file():
            raise BondReferenceError(f"{path}: no such file")
        if path.endswith(".json") and _saved_reference(path) is not None:
            return cls.load(path)
        if path.endswith(".npz"):
            from fairchem_deq.data.readers import READERS

            frames = READERS["npz"].read(path)
            frames = frames[_slice(index, path)] if index != ":" else frames
        else:
            import ase.io

            try:
                frames = ase.io.read(path, index=index)
            except Exception as exc:
                raise BondReferenceError(f"{path}: cannot read frames ({type(exc).__name__}: {exc})") from exc
        return cls.from_frames(frames, mult=mult, source=path)

    def save(self, path: str | Path) -> Path:
        """JSON (atomic write)."""
        data = {
            "format": JSON_FORMAT,
            "version": 1,
            "description": self.description,
            "species": self.species.tolist(),
            "pairs": self.pairs.tolist(),
            "mean_lengths": self.mean_lengths.tolist(),
        }
        return write_text_atomic(path, json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> BondReference:
        data = _saved_reference(path)
        if data is None:
            raise BondReferenceError(f"{path}: not a saved BondReference (JSON with format {JSON_FORMAT!r})")
        try:
            return cls(data["pairs"], data["mean_lengths"], data["species"], data.get("description", ""))
        except (KeyError, TypeError) as exc:
            raise BondReferenceError(f"{path}: incomplete BondReference ({type(exc).__name__}: {exc})") from exc

    def check(self, atoms: Atoms) -> None:
        """Raises BondReferenceError unless `atoms` holds the reference's atoms in its order."""
        numbers = atoms.get_atomic_numbers()
        if not np.array_equal(numbers, self.species):
            ref = Atoms(numbers=self.species).get_chemical_formula()
            raise BondReferenceError(
                f"structure {atoms.get_chemical_formula()} ({len(numbers)} atoms) does not hold the atoms of the "
                f"bond reference {ref} ({len(self.species)} atoms) in the same order"
            )

    def deviations(self, atoms: Atoms) -> np.ndarray:
        """Length - reference mean (Å) of every reference bond in `atoms`, minimum image when periodic."""
        self.check(atoms)
        return bond_lengths(atoms, self.pairs) - self.mean_lengths

    def max_deviation(self, atoms: Atoms) -> float:
        """Largest |length - reference mean| over the reference bonds (Å; 0 without bonds)."""
        deviations = self.deviations(atoms)
        return float(np.abs(deviations).max()) if len(deviations) else 0.0

    def collapsed(self, atoms: Atoms, threshold: float = COLLAPSE_DEVIATION) -> bool:
        """Fu et al.'s collapse: some bond deviates from its reference mean by more than `threshold` Å."""
        return self.max_deviation(atoms) > threshold

    def worst_bond(self, atoms: Atoms) -> tuple[float, str]:
        """(largest |deviation|, a sentence naming that bond, its length and its reference mean)."""
        deviations = self.deviations(atoms)
        if not len(deviations):
            return 0.0, "no reference bonds"
        k = int(np.abs(deviations).argmax())
        i, j = (int(a) for a in self.pairs[k])
        mean = self.mean_lengths[k]
        return float(abs(deviations[k])), (
            f"bond {bond_name(atoms, i, j)} (atoms {i} and {j}) is {mean + deviations[k]:.2f} Å long, "
            f"{deviations[k]:+.2f} Å from its reference mean {mean:.2f} Å"
        )


def _saved_reference(path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == JSON_FORMAT else None


def _slice(index: str, path: str) -> slice | int:
    try:
        parts = [int(p) if p else None for p in index.split(":")]
    except ValueError:
        raise BondReferenceError(f"{path}: cannot read frame index {index!r} (e.g. 0, 10:, ::5)") from None
    return parts[0] if len(parts) == 1 else slice(*parts)


def _as_frames(frames: Atoms | Iterable[Atoms]) -> Iterable[Atoms]:
    return [frames] if isinstance(frames, Atoms) else frames


def distance_histogram(frames: Atoms | Iterable[Atoms], bin_width: float = 0.1, r_max: float = 10.0) -> np.ndarray:
    """h(r): the fraction of all interatomic distances (pairs i < j of every frame, minimum
    image when periodic) in each bin of `bin_width` Å from 0 to `r_max` Å (distances beyond
    `r_max` count in the total, in no bin)."""
    if bin_width <= 0 or r_max <= 0:
        raise ValueError(f"bin_width and r_max must be positive, got {bin_width} and {r_max}")
    n_bins = max(1, round(r_max / bin_width))
    edges = np.linspace(0.0, n_bins * bin_width, n_bins + 1)
    counts, pairs = np.zeros(n_bins), 0
    for atoms in _as_frames(frames):
        upper = np.triu_indices(len(atoms), 1)
        distances = atoms.get_all_distances(mic=bool(atoms.pbc.any()))[upper]
        counts += np.histogram(distances, bins=edges)[0]
        pairs += len(distances)
    if pairs == 0:
        raise ValueError("no interatomic distances: no frames, or frames of fewer than 2 atoms")
    return counts / pairs


def distance_histogram_error(
    frames: Atoms | Iterable[Atoms],
    reference_frames: Atoms | Iterable[Atoms],
    bin_width: float = 0.1,
    r_max: float = 10.0,
) -> float:
    """Fu et al.'s h(r) error: the mean over bins of |h(r) - h_ref(r)| (`distance_histogram`),
    in percent."""
    h = distance_histogram(frames, bin_width, r_max)
    h_ref = distance_histogram(reference_frames, bin_width, r_max)
    return float(np.abs(h - h_ref).mean() * 100.0)
