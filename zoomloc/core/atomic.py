"""Write outputs so that a reader never sees half a file.

Every file zoomloc produces is written under a temporary name in the destination folder and
renamed into place only once complete (``os.replace`` is atomic on one filesystem). An
interrupted run therefore leaves either the old file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from zoomloc.core import interrupts


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary name (``.NAME.PID.XXXX.partial``) starts with ``.`` and ends with ``.partial``
    so that globs such as ``*.h5`` or ``*.csv`` never pick it up. On any exception it is
    removed; a writer killed outright (SIGKILL, power loss) cannot do that, so the next write of
    the same file removes the temporary files of writers whose process is gone.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        interrupts.check()  # a writer interrupted in C code that swallowed the signal commits nothing
        # mkstemp creates the file private (0600); give the result the permissions any new file
        # would get, so a city or pyramid stays readable by the people it is shared with.
        umask = os.umask(0)
        os.umask(umask)
        if tmp.exists():
            tmp.chmod(0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _remove_stale(final: Path) -> None:
    """Delete ``final``'s temporary files whose writer (the PID in their name) no longer runs on this machine."""
    for tmp in final.parent.glob(f".{glob.escape(final.name)}.*.partial"):
        pid = tmp.name[len(final.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
