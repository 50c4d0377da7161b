"""Parsing of the package's config blocks into dataclasses, one rule for all of them: a key
the dataclass does not have is an error naming the block (a typo must not be silently
ignored)."""

from __future__ import annotations

import dataclasses


def parse_options(cls, values: dict | None, where: str):
    """`cls(**values)` for a config block; unknown keys are an error naming `where`."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in `{where}`; known keys: {sorted(known)}")
    return cls(**values)
