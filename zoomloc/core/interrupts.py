"""SIGTERM as an interruption that every layer honours, even where C code swallows it.

A scheduler or ``kill`` stops a job with SIGTERM. The CLI turns it into :class:`Terminated`, raised
like Ctrl-C, so that the stack unwinds and atomic writers delete their temporary files (the default
action would end the process on the spot and leave them behind). Raised inside a C extension's
callback, though, the exception can be re-raised as another one (h5py converting a buffer) or
swallowed whole (rasterio's GDAL log handler prints it and carries on). So a termination is also
recorded: the CLI reads the record whatever reaches it, and :func:`check` — called by every atomic
writer before it commits — stops a command that went on regardless.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C."""


_received: list[int] = []  # SIGTERMs this process received while handling them


def raise_terminated(signum: int, frame: object) -> None:
    """The SIGTERM handler: record, then unwind."""
    _received.append(signum)
    raise Terminated


def forget() -> None:
    """Start a command afresh (a process may run several: a notebook, the tests)."""
    _received.clear()


def terminated() -> bool:
    """Whether this process was asked to stop."""
    return bool(_received)


def check() -> None:
    """Raise :class:`Terminated` if the process was asked to stop (and went on: the signal was swallowed)."""
    if _received:
        raise Terminated


@contextlib.contextmanager
def unreported_when_swallowed() -> Iterator[None]:
    """While a command runs, a termination that C code swallows is not printed: Cython's callbacks print
    it with its traceback (``sys.excepthook``) and report it as unraisable (``sys.unraisablehook``). The
    command still stops, at the next :func:`check`; anything else is reported by the hooks as they were."""
    unraisable, excepthook = sys.unraisablehook, sys.excepthook

    def quiet_unraisable(report: Any) -> None:
        if not isinstance(report.exc_value, Terminated):
            unraisable(report)

    def quiet_excepthook(kind: type[BaseException], value: BaseException, traceback: Any) -> None:
        if not isinstance(value, Terminated):
            excepthook(kind, value, traceback)

    sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = unraisable, excepthook


def _default_sigterm_in_child() -> None:
    """Forked workers (a pool, a data loader) die on SIGTERM as usual instead of unwinding.

    A worker that inherited :func:`raise_terminated` would print a traceback of its own when
    its pool shuts it down, or hang if the signal arrives while it holds a lock.
    """
    if signal.getsignal(signal.SIGTERM) is raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)
