"""The config a run gets: includes merged and overrides applied by fairchem's own `build_config`.

Configs here are stacks of `includes:`; reading the merged result by hand is error-prone, and
a copy of fairchem's merge rules would drift from them. So the same parser and `build_config`
as fairchem's CLI (fairchem.core._cli.main) build it, and `fairchem-deq config show` prints it.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

from fairchem_deq.command import UserError


class ConfigError(UserError, ValueError):
    """A config fairchem cannot build: a bad include, conflicting includes, bad YAML or override."""


def merged_config(path: str | Path, args: Sequence[str] = ()) -> dict:
    """The dict fairchem's CLI builds from `--config-yml path *args`.

    `args` are what one would add to that command line: overrides (`--optim.batch_size=4`)
    and fairchem's own flags (`--mode train`, `--cpu`, ...), which set the run keys
    (mode, seed, cpu, world_size, ...) that `build_config` adds to the file's content.
    """
    import yaml
    from fairchem.core.common.flags import flags
    from fairchem.core.common.utils import build_config

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such config file", str(path))
    known, overrides = flags.get_parser().parse_known_args(["--config-yml", str(path), *args])
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        raise ConfigError(f"overrides look like --key.sub=value, got {' '.join(bad)}")
    try:
        return build_config(known, overrides)
    except (ValueError, AttributeError, OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_yaml(config: dict) -> str:
    """`config` as YAML, keys in their loaded order (tuples and paths as plain lists/strings)."""
    import yaml

    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=False, allow_unicode=True)


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
