"""Reference models shipped with the package: inference checkpoints with a model card and a
checksum that is verified before a checkpoint is loaded.

    from fairchem_deq import DEQCalculator
    atoms.calc = DEQCalculator.from_reference("ethanol_deq1")

A reference model is `fairchem_deq/reference_models/<name>.pt` (a fairchem inference
checkpoint: config, normalisers, element references and the EMA weights that fairchem's
validation reports, no optimizer state) beside `<name>.json` (its card: data and split,
config, training command, CPU time, commit, test errors, sha256 of the .pt). They are made
by `python -m benchmarks.reference_models export`, from training runs that resume across
sessions (`benchmarks/reference/training/`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from fairchem_deq.command import CheckpointError

REFERENCE_MODELS = Path(__file__).parent / "reference_models"


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reference_models(folder: Path = REFERENCE_MODELS) -> dict[str, dict]:
    """name -> card of every shipped reference model."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def reference_checkpoint(name: str, folder: Path = REFERENCE_MODELS) -> Path:
    """The verified checkpoint file of reference model `name`: a clear error for an unknown
    name, a missing file, or a file whose sha256 differs from its card's (a truncated
    download, a Git LFS pointer, an edit)."""
    cards = reference_models(folder)
    if name not in cards:
        known = ", ".join(cards) or "none (run python -m benchmarks.reference_models export)"
        raise CheckpointError(f"unknown reference model {name!r}; shipped: {known}")
    path = folder / f"{name}.pt"
    if not path.is_file():
        raise CheckpointError(f"reference model {name!r}: {path} is missing")
    expected, actual = cards[name].get("sha256"), sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"reference model {name!r}: {path} has sha256 {actual}, its card says {expected}; "
            "the file is damaged or not the one the card describes"
        )
    return path


def export_inference_checkpoint(model: torch.nn.Module, checkpoint: dict, out: Path, card: dict) -> dict:
    """Writes `model`'s weights (the ones to ship, e.g. the EMA weights already applied) with
    `checkpoint`'s config, normalisers and element references as an inference checkpoint
    `out` (temp file, then rename), and its card `out.with_suffix('.json')` with the sha256.
    Returns the card."""
    from fairchem_deq.outputs import atomic_file, write_text_atomic

    inference = {
        "state_dict": model.state_dict(),
        "config": checkpoint["config"],
        "normalizers": checkpoint.get("normalizers", {}),
        "elementrefs": checkpoint.get("elementrefs", {}),
        "step": checkpoint.get("step"),
        "epoch": checkpoint.get("epoch"),
        "amp": None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        torch.save(inference, tmp)
    card = {**card, "file": out.name, "bytes": out.stat().st_size, "sha256": sha256(out)}
    write_text_atomic(out.with_suffix(".json"), json.dumps(card, indent=2))
    return card
