"""Mixed precision: the fixed-point solve runs in float32 whatever autocast the caller set."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def float32_solver(f, device_type: str, f_under_autocast: bool = False):
    """Mixed precision (fairchem's --amp autocasts `_forward`; a user may wrap a model in
    autocast): the solve runs with autocast off, so its arithmetic (residuals, Anderson's
    Gram matrix and mixing, Broyden's products, the tolerance test) is float32. In half
    precision the Gram matrix of residual norms above ~256 overflows, and on the OC20 DEQ1
    width a rel 1e-4 solve never converges (40 evaluations, float32: 12). f runs in float32
    too unless `f_under_autocast` (deq.solve_under_autocast): then f keeps the caller's
    autocast (faster blocks) and returns float32, but its rounding sets a residual floor
    (measured on that width: float16 needs 29 evaluations to rel 1e-4, bfloat16 stalls at
    7e-4). -> (f to hand the solver, the context the solve runs in)."""
    if not torch.is_autocast_enabled(device_type):
        return f, nullcontext()
    if not f_under_autocast:
        return f, torch.autocast(device_type, enabled=False)
    dtype = torch.get_autocast_dtype(device_type)

    def f_autocast(z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            return f(z).float()

    return f_autocast, torch.autocast(device_type, enabled=False)
