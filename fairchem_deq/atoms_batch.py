"""ase.Atoms -> fairchem Batch, the one conversion used by the calculator, tools and tests.

Molecules without a cell get a large box and pbc=False: fairchem's `radius_graph_pbc` (the
graph builder that needs no pyg-lib) honours per-structure pbc flags, so the models run
with `use_pbc: True` for molecules and slabs alike. Frames are built exactly as the LMDB
converter builds them (`fairchem_deq.data.atoms_to_data`), minus energy and forces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from fairchem_deq.data.lmdb_writer import atoms_to_data
from fairchem_deq.data.readers import MOLECULE_CELL


def atoms_to_batch(
    atoms_list: Sequence[Atoms],
    sids: Sequence[int] | None = None,
    fids: Sequence[int] | None = None,
):
    from fairchem.core.datasets import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(r_energy=False, r_forces=False, r_edges=False, r_distances=False,
                        r_pbc=True, r_fixed=True)
    data_list = []
    for i, atoms in enumerate(atoms_list):
        if not atoms.pbc.any() and atoms.cell.rank < 3:
            atoms = atoms.copy()
            atoms.cell = np.eye(3) * MOLECULE_CELL
        sid = i if sids is None else int(sids[i])
        fid = 0 if fids is None else int(fids[i])
        data_list.append(atoms_to_data(atoms, sid, fid, a2g=a2g))
    return data_list_collater(data_list, otf_graph=True)
