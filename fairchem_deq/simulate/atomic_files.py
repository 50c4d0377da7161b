"""Output files are written under a hidden `.<name>.partial` sibling and renamed when
complete, so an interrupted run never leaves a file that looks finished."""

from __future__ import annotations

from pathlib import Path


def partial_path(path: str | Path) -> Path:
    """The temporary sibling of `path` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.partial")
