"""When a stored fixed point may be reused: the same atoms (count and species, in order) and a
structure close to the one it was solved for (every atom within `max_displacement` Å of its
position then, under the minimum image for periodic cells)."""

from __future__ import annotations

import torch

# MD steps (0.5 fs: <= 0.03 Å) and optimiser steps (fairchem's LBFGS: <= 0.04 Å, ASE's BFGS:
# <= 0.2 Å) pass; unrelated frames of a molecule move atoms by far more (measurements:
# benchmarks/RESULTS.md, "Reuse displacement bound")
DEFAULT_MAX_DISPLACEMENT = 0.25


def same_atoms(entry, atomic_numbers: torch.Tensor) -> bool:
    """Whether `entry` (a cache entry with `atomic_numbers`) exists and holds the same atoms (count and species, in order)."""
    return entry is not None and torch.equal(entry.atomic_numbers, atomic_numbers.to(entry.atomic_numbers.device))


def max_displacement(
    pos: torch.Tensor, ref: torch.Tensor, cell: torch.Tensor | None = None, pbc: torch.Tensor | None = None
) -> float:
    """Largest per-atom |pos - ref| (Å), under the minimum image along periodic cell axes."""
    diff = pos.detach().double() - ref.detach().double().to(pos.device)
    if cell is not None and pbc is not None and bool(torch.as_tensor(pbc).any()):
        cell = cell.detach().double().reshape(3, 3).to(pos.device)
        frac = diff @ torch.linalg.inv(cell)
        periodic = torch.as_tensor(pbc, dtype=torch.bool, device=pos.device).reshape(3)
        frac = torch.where(periodic, frac - torch.round(frac), frac)
        diff = frac @ cell
    return float(diff.norm(dim=1).max()) if len(diff) else 0.0
