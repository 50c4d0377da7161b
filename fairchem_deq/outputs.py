"""Outputs that appear complete or not at all.

Every writer of the package writes under a temporary name and renames when done, so an
error, Ctrl-C or SIGTERM (see fairchem_deq.command) never leaves a file or folder that looks
finished:
  partial_path      one file: `.<name>.partial` beside it (`partial_name`), the one temporary
                    name of every file the package writes; `atomic_file` renames it when done
  atomic_directory  a whole folder (`fairchem-deq convert`): `<out>.tmp-<pid>`, renamed at the end
  staged_outputs    named files in an output folder that may hold other things (md, relax):
                    written in `<out>/.partial-<pid>/`, moved in together at the end
The final renames run with SIGINT/SIGTERM held back, so a signal cannot split them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from fairchem_deq.command import OutputExistsError, signals_deferred


def partial_name(name: str) -> str:
    """The temporary name of a file `name` being written: hidden, and never named like the
    output, so a crash never leaves something that a reader would take for the real file."""
    return f".{name}.partial"


def partial_path(path: str | Path) -> Path:
    """The temporary sibling of `path` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(partial_name(path.name))


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield `partial_path(path)` to write; it becomes `path` in one rename when the body
    succeeds and is removed when it fails (KeyboardInterrupt and SIGTERM included)."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _missing_parents(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if not p.exists()]


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling `<out>.tmp-<pid>`; rename it to `out` only if the body succeeds.

    On any exception (KeyboardInterrupt and SIGTERM included) the temporary directory and any
    parent directories created for it are removed and `out` is left untouched. An existing
    `out` is refused (OutputExistsError) unless overwrite=True, in which case it is replaced
    only at the end.
    """
    out = Path(out).absolute()
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExistsError(out)
    created_parents = _missing_parents(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        yield tmp
        with signals_deferred():
            if out.exists() or out.is_symlink():
                old = out.with_name(f"{out.name}.old-{os.getpid()}")
                out.rename(old)
                tmp.rename(out)
                _remove(old)
            else:
                tmp.rename(out)
    except BaseException:
        _remove(tmp)
        _remove_empty(created_parents)
        raise


@contextmanager
def staged_outputs(out_dir: str | Path, names: Sequence[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden staging folder inside `out_dir`; the files `names` written there are
    moved into `out_dir` together when the body succeeds (files not written are skipped).

    Refuses (OutputExistsError) when any of `names` exists in `out_dir` unless overwrite.
    On failure nothing in `out_dir` changes, and `out_dir` itself (with parents) is removed
    again if this call created it.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(out_dir)
    existing = [out_dir / n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            existing[0] if len(existing) == 1 else f"{out_dir} (with {', '.join(p.name for p in existing)})"
        )
    created = _missing_parents(out_dir / "x")
    stage = out_dir / f".partial-{os.getpid()}"
    try:
        stage.mkdir(parents=True, exist_ok=True)
        yield stage
        with signals_deferred():
            for name in names:
                if (stage / name).exists():
                    os.replace(stage / name, out_dir / name)
    except BaseException:
        _remove(stage)
        _remove_empty(created)
        raise
    _remove(stage)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes `text` to `path` through a partial file and a rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv_atomic(path: str | Path, rows: Sequence[dict], fields: Sequence[str]) -> Path:
    """A CSV of `rows` (header `fields`) written through a partial file and a rename."""
    import csv
    import io

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())
