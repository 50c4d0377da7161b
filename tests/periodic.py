"""Position comparisons that hold on any CPU: periodic positions under the minimum image.

fairchem wraps positions into the cell; an atom on a cell face (fractional coordinate ~0)
lands at 0 or at 1 depending on float rounding, so a raw Cartesian difference can be a whole
lattice vector on one machine and zero on another.
"""

from __future__ import annotations

import numpy as np
from ase.geometry import find_mic


def mic_displacements(a, b, cell, pbc=True) -> np.ndarray:
    """Per-atom |a - b| (Å) under the minimum-image convention of `cell` / `pbc`."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool).reshape(-1), (3,))
    _, lengths = find_mic(diff, np.asarray(cell, dtype=float).reshape(3, 3), pbc)
    return np.asarray(lengths)
