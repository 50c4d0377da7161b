"""Packing per-structure pieces into batch tensors and back: the batch's structures by atom
range, their cache keys and frame ids, and the warm-start tensors of a batch assembled from
each structure's cached pieces (zeros, or NaN for scalars, where a structure has none)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stack_rows(parts: list, sizes: list[int]) -> torch.Tensor | None:
    """Per-structure tensors [n, ...] (None: none) as one batch tensor, zeros for the
    structures without one; None if no structure has one."""
    template = next((p for p in parts if p is not None), None)
    if template is None:
        return None
    return torch.cat(
        [p if p is not None else template.new_zeros((n, *template.shape[1:])) for p, n in zip(parts, sizes)]
    )


def stack_scalars(values: list) -> torch.Tensor | None:
    """Per-structure 0-d tensors (None: none) as one [n_structures] tensor, NaN for the
    structures without one; None if no structure has one."""
    template = next((v for v in values if v is not None), None)
    if template is None:
        return None
    return torch.stack([v if v is not None else torch.full_like(template, float("nan")) for v in values])


def stack_states(states: list, sizes: list[int]) -> tuple[torch.Tensor, ...] | None:
    """Per-structure solver states (None: none) as batch tensors [n_atoms, ..., m], ranks
    padded with zero columns in front (the oldest end) and zeros for structures without
    one; None if no structure has one."""
    template = next((s for s in states if s is not None), None)
    if template is None:
        return None
    rank = max(s[0].shape[-1] for s in states if s is not None)
    out = []
    for k, t in enumerate(template):
        parts = []
        for state, n in zip(states, sizes):
            part = t.new_zeros((n, *t.shape[1:-1], rank))
            if state is not None:
                part[..., rank - state[k].shape[-1] :] = state[k]
            parts.append(part)
        out.append(torch.cat(parts))
    return tuple(out)


def used_columns(state: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...] | None:
    """A copy of one structure's solver state without its all-zero (unused) columns (the
    last dimension), in order; None if it has no used column."""
    if state is None:
        return None
    used = torch.stack([(t.detach() != 0).flatten(0, -2).any(dim=0) for t in state]).any(dim=0)
    if not bool(used.any()):
        return None
    return tuple(t.detach()[..., used].clone() for t in state)


def cell_pbc(batch, i: int):
    cell = batch.cell[i] if "cell" in batch else None
    pbc = batch.pbc[i] if "pbc" in batch and batch.pbc is not None else None
    return cell, pbc


def atom_ranges(natoms: torch.Tensor):
    start = 0
    for n in natoms.tolist():
        yield start, n
        start += n


def frame_ids(batch) -> list | None:
    return _as_list(batch.fid) if "fid" in batch else None


def frame_id(fid) -> int | None:
    return None if fid is None or int(fid) < 0 else int(fid)


def batch_keys(batch, keys: Sequence | None = None) -> list:
    """The cache keys of a batch's structures: `keys` if given, else the batch's sids."""
    return _as_list(batch.sid) if keys is None else list(keys)


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)
