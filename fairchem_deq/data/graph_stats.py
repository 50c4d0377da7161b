"""Mean atoms per structure and mean neighbours per atom of a dataset: EquiformerV2's
readout constants (`avg_num_nodes` divides the energy head's per-atom sum, `avg_degree`
scales the edge-degree embedding).

fairchem's defaults are OC20's (77.81 atoms, 23.4 neighbours at 12 Å / 20). A molecule
trained with them (ethanol: 9 atoms, about 8 neighbours at 5 Å) gets an energy readout
shrunk ninefold, and its energy barely learns (benchmarks/RESULTS.md). The graph here is
the one the model builds: fairchem's `radius_graph_pbc` at the model's cutoff and neighbour
cap, honouring each structure's periodicity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

# the MD17/MD22 graph of the paper (cutoff, neighbour cap); OC20's is 12 Å / 20
MOLECULE_GRAPH = (5.0, 1000)
OC20_GRAPH = (12.0, 20)


@dataclass
class GraphStatistics:
    avg_num_nodes: float
    avg_degree: float
    cutoff: float
    max_neighbors: int
    structures: int  # how many structures the means were taken over

    def as_dict(self) -> dict:
        return asdict(self)


def sample_indices(n: int, sample: int | None) -> np.ndarray:
    """Evenly spaced indices: all of them, or `sample` spread over the dataset."""
    if sample is None or sample >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, sample).round().astype(int))


@torch.no_grad()
def graph_statistics(items, cutoff: float, max_neighbors: int, chunk: int = 64) -> GraphStatistics:
    """Means over `items` (fairchem Data objects with pos, cell, natoms, pbc)."""
    from fairchem.core.common.utils import radius_graph_pbc
    from fairchem.core.datasets import data_list_collater

    items = list(items)
    if not items:
        raise ValueError("graph statistics need at least one structure")
    atoms = edges = 0
    for start in range(0, len(items), chunk):
        batch = data_list_collater(items[start : start + chunk], otf_graph=True)
        edge_index, _, _ = radius_graph_pbc(batch, cutoff, max_neighbors, enforce_max_neighbors_strictly=True)
        atoms += int(batch.natoms.sum())
        edges += int(edge_index.shape[1])
    return GraphStatistics(atoms / len(items), edges / atoms, float(cutoff), int(max_neighbors), len(items))


def dataset_graph_statistics(dataset, cutoff: float, max_neighbors: int, sample: int | None = 2000) -> GraphStatistics:
    """`graph_statistics` of a fairchem dataset (any object with len and [i])."""
    return graph_statistics((dataset[int(i)] for i in sample_indices(len(dataset), sample)), cutoff, max_neighbors)
