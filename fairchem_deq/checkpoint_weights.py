"""Which weights of a fairchem checkpoint to evaluate: the EMA weights validation reports, or
the raw ones.

fairchem's validation (and the best-checkpoint selection) evaluates the exponential moving
average of the weights (`optim.ema_decay`) but `checkpoint.pt` stores the raw weights in
`state_dict` and the average separately, under the "ema" key (fairchem's
`ExponentialMovingAverage.state_dict()`). fairchem's calculators load checkpoints in
inference-only mode, which drops the "ema" entry: they evaluate the raw weights.
`best_checkpoint.pt` is saved without training state and with the EMA weights copied into
`state_dict` (no "ema" key): there the raw weights are not in the file.

`apply_weights(model, checkpoint, "auto")` puts the weights validation reports into a model
that holds the checkpoint's `state_dict`: EMA where the checkpoint holds them, raw otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fairchem_deq.command import CheckpointError

WEIGHTS = ("auto", "ema", "raw")


def check_weights_choice(weights: str) -> str:
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {', '.join(repr(w) for w in WEIGHTS)}")
    return weights


def ema_source(checkpoint: dict) -> str | None:
    """Where a checkpoint keeps EMA weights: "ema" (its "ema" entry, beside the raw
    `state_dict`), "state_dict" (saved without training state by a trainer with an EMA:
    fairchem copied the averages into `state_dict`, the raw weights are not in the file), or
    None (trained without an EMA)."""
    if "ema" in checkpoint:  # saved with training state: "ema" is None without optim.ema_decay
        return "ema" if checkpoint["ema"] else None
    optim = (checkpoint.get("config") or {}).get("optim") or {}
    return "state_dict" if optim.get("ema_decay") else None  # fairchem's own EMA condition


def resolve_weights(checkpoint: dict, weights: str = "auto", path: str | Path | None = None) -> str:
    """The weights `apply_weights` will give a model, "ema" or "raw", or a clear error:
    "auto": the EMA weights where the checkpoint has them (what fairchem's validation
    reports), else the raw ones; "ema": the EMA weights, an error if the checkpoint has none;
    "raw": the `state_dict` as trained, an error if the file holds only the EMA weights."""
    check_weights_choice(weights)
    where = f" {path}" if path else ""
    source = ema_source(checkpoint)
    if weights == "raw":
        if source == "state_dict":
            raise CheckpointError(
                f"checkpoint{where} holds only EMA weights (saved without training state, e.g. "
                "best_checkpoint.pt, with the averages in its state_dict): its raw weights are in "
                "the run's checkpoint.pt"
            )
        return "raw"
    if source is None:
        if weights == "ema":
            raise CheckpointError(
                f"checkpoint{where} holds no EMA weights (trained without optim.ema_decay); use weights='raw' or 'auto'"
            )
        return "raw"
    return "ema"


def apply_weights(model: torch.nn.Module, checkpoint: dict | str | Path, weights: str = "auto") -> str:
    """Makes `model`, which holds the checkpoint's `state_dict` (as fairchem loads it), hold the
    weights asked for (see `resolve_weights`) and returns which it holds: "ema" or "raw"."""
    path = None
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    used = resolve_weights(checkpoint, weights, path)
    if used == "ema" and ema_source(checkpoint) == "ema":
        _copy_ema(model, checkpoint["ema"], f" {path}" if path else "")
    return used


def _copy_ema(model: torch.nn.Module, state: dict, where: str) -> None:
    """fairchem's `ExponentialMovingAverage.copy_to`, after checking that the shadow
    parameters fit the model's trainable parameters one by one (zip would silently pair
    mismatched lists)."""
    from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

    params = [p for p in model.parameters() if p.requires_grad]
    shadow = state.get("shadow_params") or []
    shapes = [tuple(p.shape) for p in params], [tuple(s.shape) for s in shadow]
    if shapes[0] != shapes[1]:
        raise CheckpointError(
            f"the EMA weights of checkpoint{where} do not fit the model: {len(shadow)} averaged "
            f"tensors for {len(params)} trainable parameters"
            + ("" if len(shadow) != len(params) else " (shapes differ)")
        )
    ema = ExponentialMovingAverage(params, decay=float(state["decay"]))
    ema.load_state_dict(state)
    ema.copy_to(params)
