"""Checks the package's config blocks before fairchem builds anything.

fairchem's trainer creates its checkpoint/results/log folders before it builds the model,
so a bad key would otherwise fail inside a long traceback and leave empty run folders
behind. `fairchem-deq --mode ...` and the trainers run these checks first.

Which blocks a config has is declared by the classes that read them: a class attribute
`config_blocks` maps a dotted path to the dataclass that parses it (the trainer's paths are
relative to the config, the backbone's to `model.backbone`). The classes are found through
fairchem's registry, as fairchem finds them, so this module imports neither.
"""

from __future__ import annotations

from fairchem_deq.config.blocks import parse_options


class DEQConfigError(ValueError):
    """An invalid block (`model.backbone.deq`, `task.deq`, `optim.deq`, ...)."""


def _registered(kind: str, name) -> type | None:
    from fairchem.core.common.registry import registry

    if not name:
        return None
    try:
        cls = getattr(registry, f"get_{kind}_class")(name)
    except Exception:  # noqa: BLE001 - an unknown class is fairchem's to report
        return None
    return cls if isinstance(cls, type) else None


def _block(config: dict, path: str):
    block = config
    for key in path.split("."):
        block = (block or {}).get(key) if isinstance(block, dict) else None
    return block


def parse_blocks(cls: type | None, config: dict, prefix: str = "") -> dict[str, object]:
    """{path: parsed block} of every block `cls` declares, each parsed once; a bad block is
    a DEQConfigError naming it."""
    parsed = {}
    for path, options in getattr(cls, "config_blocks", {}).items():
        where = f"{prefix}{path}"
        try:
            parsed[path] = parse_options(options, _block(config, path), where)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            raise DEQConfigError(message if where in message else f"{where}: {message}") from None
    return parsed


def check_config(config: dict, trainer: type | None = None) -> dict[str, object]:
    """Parses the blocks of the config's trainer (`trainer`, else the class its "trainer"
    names) and backbone classes (see the module doc); returns {dotted path from the
    config's root: parsed block}."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    backbone = model.get("backbone") if isinstance(model.get("backbone"), dict) else {}
    trainer = trainer or _registered("trainer", config.get("trainer", "ocp"))
    parsed = parse_blocks(trainer, config)
    backbone_blocks = parse_blocks(_registered("model", backbone.get("model")), backbone, "model.backbone.")
    parsed.update({f"model.backbone.{path}": block for path, block in backbone_blocks.items()})
    return parsed


def check_deq_blocks(args, override_args: list[str]) -> None:
    """`check_config` on the config fairchem's CLI would build from these arguments."""
    from fairchem.core.common.utils import build_config

    try:
        config = build_config(args, override_args)
    except Exception:  # noqa: BLE001 - a config fairchem cannot read is fairchem's to report
        return
    check_config(config)
