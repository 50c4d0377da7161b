"""One convention for every `fairchem-deq` subcommand: errors, interrupts, termination.

    rc 0    done
    rc 2    a user error (bad input file, impossible option, output exists, non-DEQ
            checkpoint, ...): ONE line on stderr, `fairchem-deq <command>: error: <why>`
    rc 130  interrupted (SIGINT, Ctrl-C), also during start-up
    rc 143  terminated (SIGTERM, as Slurm and process managers send it)

SIGTERM is turned into `Terminated`, a KeyboardInterrupt, for the duration of a command, so
every clean-up written for Ctrl-C (temporary files and folders removed, nothing
half-written left) runs for SIGTERM too. A second signal during that clean-up is ignored.
`signals_deferred` holds SIGINT/SIGTERM back while a finished output is moved into place.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

RC_USER_ERROR, RC_INTERRUPTED, RC_TERMINATED = 2, 130, 143


class UserError(Exception):
    """A problem the user can fix from the message alone (reported in one line, rc 2)."""


class OutputExistsError(FileExistsError):
    """An output that must not be overwritten silently; `flag` names the option that allows it."""

    def __init__(self, path, flag: str = "overwrite=True") -> None:
        self.path, self.flag = path, flag
        super().__init__(f"{path} already exists (pass {flag} to replace it)")

    def for_flag(self, flag: str) -> OutputExistsError:
        return OutputExistsError(self.path, flag)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C's KeyboardInterrupt."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, unreadable or not a DEQuiformer's."""


# what a command reports in one line: the package's own input errors subclass UserError
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileExistsError, FileNotFoundError)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated`; later SIGTERMs (during the clean-up
    that the first one started) are ignored. Restores the previous handler on exit."""
    if not _on_main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (for the renames that publish an
    output: they must all happen or none)."""
    if not _on_main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def console_script_start_up() -> Iterator[None]:
    """Around the package's own (seconds-long: torch, fairchem) imports: when they run because
    the `fairchem-deq` console script is starting, Ctrl-C or SIGTERM there ends it with rc
    130/143 and one line, like anywhere later in a command. A no-op for library imports."""
    import os

    if os.path.basename(sys.argv[0] if sys.argv else "") != "fairchem-deq" or not _on_main_thread():
        yield
        return
    try:
        with sigterm_as_interrupt():
            yield
    except Terminated:
        print("fairchem-deq: terminated (SIGTERM) while starting", file=sys.stderr)
        raise SystemExit(RC_TERMINATED) from None
    except KeyboardInterrupt:
        print("fairchem-deq: interrupted while starting", file=sys.stderr)
        raise SystemExit(RC_INTERRUPTED) from None


def report_error(command: str, message: str) -> None:
    print(f"fairchem-deq {command}: error: {message}", file=sys.stderr)


def run_command(command: str, func: Callable[[], int | None], overwrite_flag: str | None = "--overwrite") -> int:
    """Runs one subcommand under the convention above; returns its exit status."""
    try:
        with sigterm_as_interrupt():
            try:
                return int(func() or 0)
            except OutputExistsError as exc:
                report_error(command, str(exc.for_flag(overwrite_flag) if overwrite_flag else exc))
                return RC_USER_ERROR
            except USER_ERRORS as exc:
                report_error(command, _one_line(exc))
                return RC_USER_ERROR
    except Terminated:
        print(f"fairchem-deq {command}: terminated (SIGTERM); nothing was written", file=sys.stderr)
        return RC_TERMINATED
    except KeyboardInterrupt:
        print(f"fairchem-deq {command}: interrupted; nothing was written", file=sys.stderr)
        return RC_INTERRUPTED


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return " ".join(text.split())
