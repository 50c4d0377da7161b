"""ase.Atoms -> fairchem Data (one frame, as the LMDB converter stores it) and Batch (the
calculator, tools and tests): one conversion for both.

Molecules without a cell get a large box and pbc=False: fairchem's `radius_graph_pbc` (the
graph builder that needs no pyg-lib) honours per-structure pbc flags, so the models run
with `use_pbc: True` for molecules and slabs alike. Frames are built exactly as the LMDB
converter builds them (`fairchem_deq.data.atoms_to_data`), minus energy and forces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase import Atoms

from fairchem_deq.data.molecule_box import with_molecule_box


def make_atoms_to_graphs():
    """fairchem's AtomsToGraphs with energy, forces, fixed and pbc, no precomputed edges."""
    from fairchem.core.preprocessing import AtomsToGraphs

    return AtomsToGraphs(r_energy=True, r_forces=True, r_fixed=True, r_edges=False, r_distances=False, r_pbc=True)


def atoms_to_data(atoms: Atoms, sid: int, fid: int, a2g=None):
    """One frame -> torch_geometric Data with sid/fid LongTensors [1], pbc as bool [1, 3] and
    `id` "<sid>_<fid>" (the S2EF naming; fairchem's LmdbDataset keeps it when `src` is the
    data.lmdb file and replaces it by "<file index>_<entry index>" when `src` is a folder).

    pbc is stored [1, 3] (like cell [1, 3, 3]) so that a batch holds [B, 3], which is what
    fairchem's `radius_graph_pbc` indexes; AtomsToGraphs alone would give [3].
    """
    data = (a2g or make_atoms_to_graphs()).convert(atoms)
    data.sid = torch.tensor([sid], dtype=torch.long)
    data.fid = torch.tensor([fid], dtype=torch.long)
    data.pbc = data.pbc.view(1, 3)
    data.id = f"{sid}_{fid}"
    return data


def atoms_to_batch(
    atoms_list: Sequence[Atoms],
    sids: Sequence[int] | None = None,
    fids: Sequence[int] | None = None,
):
    from fairchem.core.datasets import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(r_energy=False, r_forces=False, r_edges=False, r_distances=False, r_pbc=True, r_fixed=True)
    data_list = []
    for i, atoms in enumerate(atoms_list):
        atoms = with_molecule_box(atoms)
        sid = i if sids is None else int(sids[i])
        fid = 0 if fids is None else int(fids[i])
        data_list.append(atoms_to_data(atoms, sid, fid, a2g=a2g))
    return data_list_collater(data_list, otf_graph=True)
