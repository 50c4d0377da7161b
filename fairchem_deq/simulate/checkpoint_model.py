"""A DEQuiformer or explicit EquiformerV2 checkpoint loaded for evaluation: what the ASE
`DEQCalculator` and the torch-sim `DEQTorchSimModel` share, so both evaluate the same model
the same way.

`load_checkpoint_model` checks the checkpoint (a DEQuiformer or an EquiformerV2, the weights
asked for exist, solver options only for a DEQ) before anything is built, has fairchem's
trainer built by the caller (`build_trainer(trainer_name)`: an OCPCalculator's
`__init__` loads model, normalisers and element references), puts in the weights
(`checkpoint_weights.apply_weights`: EMA where the checkpoint holds them, as fairchem's
validation reports) and applies the solver overrides. The result (`CheckpointModel`) makes
the fixed-point cache the checkpoint's `task.deq` block configures and turns model outputs
into physical units: normaliser and element references, in float64 for the energy (offsets
of thousands of eV would otherwise round to float32's steps, 2 meV at -17,618 eV).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fairchem.core.common.registry import registry
from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone
from fairchem.core.models.equiformer_v2.trainers.forces_trainer import EquiformerV2ForcesTrainer

from fairchem_deq.checkpoint_weights import apply_weights, check_weights_choice, resolve_weights
from fairchem_deq.command import CheckpointError
from fairchem_deq.models import DEQEquiformerV2Backbone, EnergyGradientForcesHead
from fairchem_deq.reuse import FixedPointCache, get_predictor
from fairchem_deq.solve import Propagation

TRAINER = "fairchem_deq.trainers.DEQForcesTrainer"


def check_deq_checkpoint(checkpoint_path: str | Path) -> dict:
    """Loads a checkpoint's config and fails clearly unless it holds a DEQuiformer."""
    checkpoint, backbone, cls = _load_checkpoint(checkpoint_path)
    if cls is None or not issubclass(cls, DEQEquiformerV2Backbone):
        raise CheckpointError(
            f"{checkpoint_path} is not a DEQuiformer checkpoint: its model backbone is "
            f"{backbone!r}, expected fairchem_deq.models.DEQEquiformerV2Backbone. "
            "Use fairchem's OCPCalculator for it."
        )
    return checkpoint


def check_calculator_checkpoint(checkpoint_path: str | Path) -> tuple[dict, bool]:
    """(checkpoint, is_deq) of a DEQuiformer or an explicit EquiformerV2 checkpoint; a clear
    error for anything else."""
    checkpoint, backbone, cls = _load_checkpoint(checkpoint_path)
    if cls is not None and issubclass(cls, EquiformerV2Backbone):  # DEQEquiformerV2Backbone included
        if not isinstance(checkpoint.get("state_dict"), dict):
            raise CheckpointError(
                f"{checkpoint_path} holds no model weights ('state_dict'): not a complete fairchem checkpoint"
            )
        return checkpoint, issubclass(cls, DEQEquiformerV2Backbone)
    raise CheckpointError(
        f"{checkpoint_path} is neither a DEQuiformer nor an EquiformerV2 checkpoint: its model backbone "
        f"is {backbone!r}. Use fairchem's OCPCalculator for it."
    )


def _load_checkpoint(checkpoint_path: str | Path) -> tuple[dict, str | None, type | None]:
    """The checkpoint, the name of its backbone and the class fairchem's registry gives it."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{path} is not a fairchem checkpoint (no 'config' with a model)")
    backbone = (config["model"].get("backbone") or {}).get("model") if isinstance(config["model"], dict) else None
    try:
        cls = registry.get_model_class(backbone) if backbone else None
    except RuntimeError:  # a name fairchem's registry does not know
        cls = None
    return checkpoint, backbone or config["model"].get("name"), cls


def _explicit_trainer(config: dict) -> str:
    """The trainer that trained an explicit checkpoint when it is an EquiformerV2 forces
    trainer (ours records its dotted path), else fairchem's."""
    name = config.get("trainer")
    cls = registry.get_trainer_class(name) if isinstance(name, str) and "." in name else None
    return name if isinstance(cls, type) and issubclass(cls, EquiformerV2ForcesTrainer) else "equiformerv2_forces"


@dataclass
class CheckpointModel:
    """A loaded checkpoint: fairchem's trainer (normalisers, element references, device,
    `reuse_options`), its model in eval mode with the chosen weights, whether it is a DEQ,
    which weights ("ema"/"raw") and the fixed-budget propagation (None: converged solves)."""

    trainer: Any
    model: torch.nn.Module
    is_deq: bool
    weights: str
    propagation: Propagation | None = None

    def make_cache(
        self, warm_start: str, reuse_max_displacement: float | str | None = "checkpoint", reuse_adjoint: bool = True
    ) -> FixedPointCache | None:
        """The fixed-point cache the checkpoint's task.deq block configures
        (`reuse_max_displacement` "checkpoint": its bound); an explicit model has none."""
        if not self.is_deq:
            return None
        options = self.trainer.reuse_options
        return FixedPointCache(
            options.cache_size,
            warm_start,
            options.cache_mb,
            options.reuse_max_displacement if reuse_max_displacement == "checkpoint" else reuse_max_displacement,
            keep_adjoint=reuse_adjoint,
        )

    def physical(self, target: str, outputs: dict, batch) -> torch.Tensor:
        """A model output in physical units: fairchem's normaliser and element references,
        applied in float64 to the energy (offsets of thousands of eV)."""
        value = self.target(target, outputs)
        value = value.double() if target == "energy" else value
        if target in self.trainer.normalizers:
            value = self.trainer.normalizers[target](value)
        if target in self.trainer.elementrefs:
            # fairchem's LinearReferences add [n_atoms, 1] per-atom references by structure:
            # the per-structure values go in as [n_structures, 1] (as fairchem's trainer has them)
            refs = self.trainer.elementrefs[target]
            value = refs(value.reshape(len(batch.natoms), -1), batch).reshape(value.shape)
        return value

    def target(self, target: str, outputs: dict) -> torch.Tensor:
        """The tensor of `target` in hydra's outputs (a head may return a dict of properties)."""
        value = outputs[target]
        return value if torch.is_tensor(value) else value[self.trainer.output_targets[target]["property"]]


# the default predictor of each propagation: a linear extrapolation of one-evaluation states
# z_p = 2 f(z_p') - f(z_p'') is unstable where f's Jacobian has eigenvalues of negative real
# part (|root| > 1 at lambda = -0.46); on the reference DEQ1 (q 0.46) its force error grew to
# 60 % mean within 60 frames, while "last" stays at 1.9 % mean (benchmarks.solving, issue 23)
PROPAGATION_PREDICTORS = {None: "last", "one_step": "last", "two_step": "linear"}


def _without_autograd(model) -> None:
    """fairchem's EquiformerV2Backbone turns autograd on in every forward unless the backbone
    says `direct_forces` (its conditional_grad decorator); with force heads that are not energy
    gradients (fairchem's equiformerV2 heads) that only costs time, so an explicit baseline
    runs without it, as the DEQ backbone does (a fair comparison through one path)."""
    if not any(isinstance(head, EnergyGradientForcesHead) for head in model.output_heads.values()):
        model.backbone.direct_forces = True


def predictor_for(warm_start: str | None, propagation: str | None) -> str:
    """The warm-start predictor: `warm_start`, by default "last" (one_step: "last"; two_step:
    "linear")."""
    return warm_start or PROPAGATION_PREDICTORS[propagation]


def load_checkpoint_model(
    checkpoint_path: str | Path,
    build_trainer: Callable[[str], Any],
    *,
    weights: str = "auto",
    warm_start: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    solver: str | None = None,
    solver_kwargs: dict | None = None,
    b_tol: float | None = None,
    b_max_iter: int | None = None,
    propagation: str | None = None,
    propagation_guard: float = 0.05,
) -> CheckpointModel:
    """Checks, then loads `checkpoint_path` for evaluation (options as DEQCalculator's).
    `build_trainer(name)` builds fairchem's trainer `name` with the checkpoint loaded (an
    OCPCalculator's __init__ does) and returns it; fairchem drops the EMA weights in that
    inference-only load, so they are put in here."""
    propagating = None if propagation is None else Propagation.named(propagation, guard=propagation_guard)
    get_predictor(predictor_for(warm_start, propagation))  # an unknown name fails before the checkpoint is loaded
    check_weights_choice(weights)
    checkpoint, is_deq = check_calculator_checkpoint(checkpoint_path)
    resolve_weights(checkpoint, weights, checkpoint_path)  # no EMA to use: fail before loading
    solve_options = {"tol": tol, "max_iter": max_iter, "solver": solver, "b_tol": b_tol, "b_max_iter": b_max_iter}
    solve_options["propagation"] = propagation
    if not is_deq and any(v is not None for v in solve_options.values()):
        given = ", ".join(k for k, v in solve_options.items() if v is not None)
        raise ValueError(f"{checkpoint_path} is an explicit EquiformerV2: it has no fixed-point solve to set ({given})")
    trainer = build_trainer(TRAINER if is_deq else _explicit_trainer(checkpoint["config"]))
    chosen = apply_weights(trainer._unwrapped_model, checkpoint, weights)
    del checkpoint
    model = trainer.model.eval()
    if not is_deq:
        _without_autograd(model)
    if propagating is not None and not model.backbone.direct_forces:
        raise ValueError(
            "propagation needs direct forces: energy-gradient forces differentiate a converged fixed point"
        )
    changes = {k: v for k, v in (("tol", tol), ("max_iter", max_iter)) if v is not None}
    for phase in ("eval_cold", "eval_warm") if changes else ():
        model.backbone.set_solver_settings(phase, **changes)
    if solver is not None:
        model.backbone.set_solver(solver, solver_kwargs)
    backward = {k: v for k, v in (("b_tol", b_tol), ("b_max_iter", b_max_iter)) if v is not None}
    if backward:
        model.backbone.set_backward_settings(**backward)
    return CheckpointModel(trainer, model, is_deq, chosen, propagating)
