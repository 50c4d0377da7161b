"""ase.Atoms -> fairchem Data (one frame, as the LMDB converter stores it) and Batch (the
calculator, tools and tests): one conversion for both; `systems_to_batch` builds the same
Batch from tensors (a batched simulation state, fairchem_deq.simulate.torchsim).

Molecules without a cell get a large box and pbc=False: fairchem's `radius_graph_pbc` (the
graph builder that needs no pyg-lib) honours per-structure pbc flags, so the models run
with `use_pbc: True` for molecules and slabs alike. Frames are built exactly as the LMDB
converter builds them (`fairchem_deq.data.atoms_to_data`), minus energy and forces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase import Atoms

from fairchem_deq.data.molecule_box import MOLECULE_CELL, with_molecule_box


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


def systems_to_batch(
    positions: torch.Tensor,
    cells: torch.Tensor,
    pbc,
    atomic_numbers: torch.Tensor,
    natoms: torch.Tensor,
    sids: Sequence[int] | torch.Tensor | None = None,
    fids: Sequence[int] | torch.Tensor | None = None,
):
    """Many structures held as tensors (a batched simulation state) -> the fairchem Batch that
    `atoms_to_batch` builds from the same structures as ASE Atoms, without a Python object
    per structure: positions [n_atoms, 3] (Å), cells [n, 3, 3] (rows are the lattice
    vectors, as ASE's), pbc (one bool, [3] or [n, 3]), atomic numbers [n_atoms], natoms [n].
    As there: a structure with no periodic axis and no full cell gets the molecule box,
    positions are wrapped into the cell along periodic axes (in float64, then float32, as
    fairchem's AtomsToGraphs does), tags and fixed are zeros; sids default to 0..n-1, fids
    to 0."""
    from torch_geometric.data import Batch

    device = positions.device
    natoms = torch.as_tensor(natoms, device=device).long().reshape(-1)
    n = len(natoms)
    system = torch.repeat_interleave(torch.arange(n, device=device), natoms)
    cells = cells.detach().to(device, torch.float64).reshape(n, 3, 3)
    pbc = torch.as_tensor(pbc, dtype=torch.bool, device=device)
    pbc = (pbc.reshape(1, -1) if pbc.dim() < 2 else pbc).expand(n, 3).clone()
    molecule = ~pbc.any(dim=1) & ((cells.norm(dim=2) != 0).sum(dim=1) < 3)
    box = torch.eye(3, dtype=torch.float64, device=device) * MOLECULE_CELL
    cells = torch.where(molecule.view(-1, 1, 1), box, cells)
    pos = positions.detach().to(torch.float64)
    frac = torch.linalg.solve(cells.transpose(1, 2)[system], pos.unsqueeze(-1)).squeeze(-1)
    frac = torch.where(pbc[system], torch.remainder(frac, 1.0), frac)
    pos = torch.einsum("ai,aij->aj", frac, cells[system])
    zeros = torch.zeros(len(pos), dtype=torch.int, device=device)
    sids = torch.arange(n) if sids is None else torch.as_tensor(sids).long()
    fids = torch.zeros(n, dtype=torch.long) if fids is None else torch.as_tensor(fids).long().expand(n)
    return Batch(
        pos=pos.float(),
        cell=cells.float(),
        atomic_numbers=atomic_numbers.detach().to(device, torch.uint8).reshape(-1),
        natoms=natoms,
        tags=zeros,
        fixed=zeros.clone(),
        pbc=pbc,
        sid=sids.to(device),
        fid=fids.to(device),
        id=[f"{s}_{f}" for s, f in zip(sids.tolist(), fids.tolist())],
        batch=system,
        ptr=torch.cat([natoms.new_zeros(1), natoms.cumsum(0)]),
    )
