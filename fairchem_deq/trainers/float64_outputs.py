"""Energies in float64: the float32 model output plus large offsets added in float64.

fairchem adds the normaliser's mean and the element references (thousands of eV for a total
energy) to the model's float32 output in float32, so predicted energies move in float32
steps: 2 meV at -17,618 eV (1/512 eV), and an MD log shows the same energy for many steps.
The model stays float32; `denorm_preds` hands fairchem's `_denorm_preds` a float64 copy of
every system-level output that gets an offset, so mean, rmsd and references are applied in
float64 and the calculator, relaxations and MD logs receive float64 energies.

Prediction files: fairchem's `predict` casts every output to float16 (or float32 with
`prediction_dtype`) before it is saved, which for total energies is worse still (float16
steps are 16 eV at -17,618 eV). After `collect(trainer)` (at the start of a predict pass)
`denorm_preds` keeps the float64 values by id ("<sid>_<fid>", fairchem's prediction ids),
and `restore_float64` puts them back into the predictions just before they are saved, then
stops collecting. Forces carry no offset and keep fairchem's prediction dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_STASH = "_float64_outputs"


def offset_targets(trainer) -> list[str]:
    """System-level outputs that fairchem denormalises with an offset (normally `energy`)."""
    return [
        key
        for key, spec in trainer.output_targets.items()
        if spec.get("level", "system") == "system" and (key in trainer.normalizers or key in trainer.elementrefs)
    ]


def _ids(batch) -> list[str] | None:
    sid = getattr(batch, "sid", None)
    if sid is None:
        return None
    sids = sid.tolist() if isinstance(sid, torch.Tensor) else list(sid)
    if "fid" in batch:
        fid = batch.fid
        fids = fid.tolist() if isinstance(fid, torch.Tensor) else list(fid)
        return [f"{s}_{f}" for s, f in zip(sids, fids)]
    return [f"{s}" for s in sids]


def collect(trainer) -> None:
    """Keep the float64 values of the offset targets from now until `restore_float64`."""
    trainer.__dict__[_STASH] = {}


def denorm_preds(trainer, denorm: Callable, target_key: str, prediction: torch.Tensor, batch) -> torch.Tensor:
    """`denorm(target_key, prediction, batch)` (fairchem's _denorm_preds) in float64 for the
    offset targets; while collecting, the values are kept for `restore_float64`."""
    if target_key not in offset_targets(trainer):
        return denorm(target_key, prediction, batch)
    out = denorm(target_key, prediction.double(), batch)
    stash = trainer.__dict__.get(_STASH)
    if stash is not None:
        ids = _ids(batch)
        if ids is not None and len(ids) == out.shape[0]:
            stash.setdefault(target_key, {}).update(zip(ids, out.detach().cpu().numpy()))
    return out


def restore_float64(trainer, predictions: dict) -> dict:
    """Replaces the (float16/float32) per-structure values of the offset targets in fairchem's
    `predictions` by the kept float64 ones, matched by `predictions["ids"]`; then forgets them."""
    stash = trainer.__dict__.pop(_STASH, {})
    ids = predictions.get("ids")
    if ids is None:
        return predictions
    for key, values in stash.items():
        if key in predictions and len(predictions[key]) == len(ids) and all(i in values for i in ids):
            predictions[key] = [values[i] for i in ids]
    return predictions
