"""Input injections: how x (the embeddings computed once per structure) enters f(z, x).

A new injection is one function in `INJECTIONS`; `deq.injection` names it (checked with
the rest of the `deq` block before a run starts)."""

from __future__ import annotations

from collections.abc import Callable

import torch

_EPS = 1e-8


def norm_preserving_add(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(z + x) rescaled per atom to the norm of x: the paper's best injection.

    The per-atom norm over all (l, m, channel) coefficients is rotation invariant, so the
    rescaling keeps equivariance, and it keeps |z| bounded whatever the iterate does.
    """
    y = z + x
    x_norm = x.norm(dim=(1, 2), keepdim=True)
    return y * (x_norm / (y.norm(dim=(1, 2), keepdim=True) + _EPS))


def add(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Plain sum z + x."""
    return z + x


INJECTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "norm_add": norm_preserving_add,
    "add": add,
}


def get_injection(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return INJECTIONS[name]
    except KeyError:
        raise ValueError(f"Unknown DEQ injection {name!r}; choose one of {sorted(INJECTIONS)}") from None
