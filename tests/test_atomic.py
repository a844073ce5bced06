"""Atomic writes: all or nothing, with ordinary permissions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from zoomloc.core import interrupts
from zoomloc.core.atomic import atomic_path, write_text


def test_success_replaces_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text(target, "old")
    old_umask = os.umask(0o022)
    try:
        write_text(target, "new")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_next_write_removes_temporaries_of_killed_writers_only(tmp_path):
    """A writer killed outright leaves ``.NAME.PID.*.partial``; the next write of NAME deletes it
    once PID is gone, and leaves those of running writers (here: this process) alone."""
    target = tmp_path / "out[1].txt"  # a glob character in the name must not hide its temporaries
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".{target.name}.{int(gone.stdout)}.abcd.partial"
    running = tmp_path / f".{target.name}.{os.getpid()}.efgh.partial"
    other = tmp_path / f".other.txt.{int(gone.stdout)}.ijkl.partial"
    for p in (stale, running, other):
        p.write_text("half")
    write_text(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, running.name, other.name])


def test_a_termination_swallowed_by_c_code_still_commits_nothing(tmp_path):
    """rasterio's GDAL log handler prints an exception raised in it and carries on: a SIGTERM that lands
    there must still stop the writer before it renames its output into place."""
    try:
        interrupts.raise_terminated(signal.SIGTERM, None)
    except interrupts.Terminated:
        pass  # what that handler does
    try:
        with pytest.raises(interrupts.Terminated):
            write_text(tmp_path / "out.txt", "complete")
        assert list(tmp_path.iterdir()) == []
    finally:
        interrupts.forget()
    write_text(tmp_path / "out.txt", "complete")  # a new command starts afresh
    assert (tmp_path / "out.txt").read_text() == "complete"


def test_a_swallowed_termination_is_not_reported_but_other_errors_are(capsys):
    """Cython callbacks print an exception they swallow (``sys.excepthook``) and report it as unraisable;
    a command's termination is not shown so (it stops the command instead), anything else still is."""
    with interrupts.unreported_when_swallowed():
        sys.excepthook(interrupts.Terminated, interrupts.Terminated(), None)
        sys.excepthook(ValueError, ValueError("a real problem"), None)
    err = capsys.readouterr().err
    assert "Terminated" not in err and "ValueError: a real problem" in err
