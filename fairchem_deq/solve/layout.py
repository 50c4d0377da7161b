"""One solver row per structure: node features [n_atoms, L, C] <-> solver rows [B, n_max, L, C].

TorchDEQ treats dim 0 as the batch: per row it mixes its own Anderson history and measures
its own residual. Padding each structure to the largest one in the batch makes a row a
structure, so convergence is judged per structure and a structure's iterates do not
depend on what else is in the batch. Padded slots stay exactly zero.
"""

from __future__ import annotations

import torch


class PaddedLayout:
    """Node features [n_atoms, L, C] <-> solver rows [B, n_max, L, C]."""

    def __init__(self, natoms: torch.Tensor):
        natoms = natoms.long()
        self.num_structures = len(natoms)
        self.n_max = int(natoms.max()) if self.num_structures else 0
        self.num_atoms = int(natoms.sum())
        # a single structure needs no padding: pad/unpad are views
        self.trivial = self.num_structures == 1
        if not self.trivial:
            device = natoms.device
            batch = torch.repeat_interleave(torch.arange(self.num_structures, device=device), natoms)
            offsets = torch.cumsum(natoms, 0) - natoms
            local = torch.arange(self.num_atoms, device=device) - offsets[batch]
            self.index = batch * self.n_max + local

    def pad(self, nodes: torch.Tensor) -> torch.Tensor:
        if self.trivial:
            return nodes.unsqueeze(0)
        out = nodes.new_zeros((self.num_structures * self.n_max, *nodes.shape[1:]))
        out = out.index_copy(0, self.index, nodes)
        return out.view(self.num_structures, self.n_max, *nodes.shape[1:])

    def unpad(self, rows: torch.Tensor) -> torch.Tensor:
        if self.trivial:
            return rows.reshape(rows.shape[1:])
        flat = rows.reshape(self.num_structures * self.n_max, *rows.shape[2:])
        return flat.index_select(0, self.index)


def per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row values [B] shaped [B, 1, ...] to broadcast over the solver rows of `like`."""
    return values.view(-1, *([1] * (like.dim() - 1)))
