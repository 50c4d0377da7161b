"""Checks the DEQ blocks of a fairchem config before fairchem builds anything.

fairchem's trainer creates its checkpoint/results/log folders before it builds the model,
so a bad `deq:` key would otherwise fail inside a long traceback and leave empty run
folders behind. `fairchem-deq --mode ...` runs these checks first.
"""

from __future__ import annotations


class DEQConfigError(ValueError):
    """An invalid `model.backbone.deq`, `task.deq` or `optim.deq` block."""


def _is_subclass(cls, base) -> bool:
    return isinstance(cls, type) and issubclass(cls, base)


def check_config(config: dict) -> None:
    """Raises DEQConfigError naming the block when a DEQ block of `config` is invalid."""
    from fairchem.core.common.registry import registry

    from fairchem_deq.config_blocks import parse_options
    from fairchem_deq.models import DEQBackboneOptions, DEQEquiformerV2Backbone
    from fairchem_deq.reuse import ReuseOptions
    from fairchem_deq.trainers import DEQForcesTrainer
    from fairchem_deq.trainers.train_options import DEQTrainOptions

    model = config.get("model") or {}
    backbone = model.get("backbone") if isinstance(model, dict) else None
    if isinstance(backbone, dict) and backbone.get("model"):
        try:
            cls = registry.get_model_class(backbone["model"])
        except Exception:  # noqa: BLE001 - an unknown model is fairchem's to report
            cls = None
        if _is_subclass(cls, DEQEquiformerV2Backbone):
            _check("model.backbone.deq", lambda: DEQBackboneOptions.from_dict(backbone.get("deq")))
    try:
        trainer = registry.get_trainer_class(config.get("trainer", "ocp"))
    except Exception:  # noqa: BLE001
        trainer = None
    if _is_subclass(trainer, DEQForcesTrainer):
        _check("task.deq", lambda: parse_options(ReuseOptions, (config.get("task") or {}).get("deq"), "task.deq"))
        _check("optim.deq", lambda: parse_options(DEQTrainOptions, (config.get("optim") or {}).get("deq"), "optim.deq"))


def check_deq_blocks(args, override_args: list[str]) -> None:
    """`check_config` on the config fairchem's CLI would build from these arguments."""
    from fairchem.core.common.utils import build_config

    try:
        config = build_config(args, override_args)
    except Exception:  # noqa: BLE001 - a config fairchem cannot read is fairchem's to report
        return
    check_config(config)


def _check(where: str, parse) -> None:
    try:
        parse()
    except (ValueError, TypeError) as exc:
        message = str(exc)
        raise DEQConfigError(message if where in message else f"{where}: {message}") from None
