"""ase.Atoms -> fairchem Batch, the one conversion used by the calculator, tools and tests.

Molecules without a cell get a large box and pbc=False: fairchem's `radius_graph_pbc` (the
graph builder that needs no pyg-lib) honours per-structure pbc flags, so the models run
with `use_pbc: True` for molecules and slabs alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

MOLECULE_BOX = 50.0  # Å; only used when a structure has no cell and no periodicity


def atoms_to_batch(
    atoms_list: Sequence[Atoms],
    sids: Sequence[int] | None = None,
    fids: Sequence[int] | None = None,
):
    from fairchem.core.datasets import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(r_energy=False, r_forces=False, r_edges=False, r_pbc=True, r_fixed=True)
    data_list = []
    for i, atoms in enumerate(atoms_list):
        if not atoms.pbc.any() and atoms.cell.rank < 3:
            atoms = atoms.copy()
            atoms.cell = np.eye(3) * MOLECULE_BOX
        data = a2g.convert(atoms)
        data.sid = torch.LongTensor([i if sids is None else int(sids[i])])
        data.fid = torch.LongTensor([0 if fids is None else int(fids[i])])
        tags = atoms.get_tags() if atoms.has("tags") else np.zeros(len(atoms), dtype=int)
        data.tags = torch.as_tensor(tags, dtype=torch.long)
        data_list.append(data)
    return data_list_collater(data_list, otf_graph=True)
