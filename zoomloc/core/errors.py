"""One root for every problem a user can cause.

The CLI turns any :class:`ZoomlocError` into a single line on stderr and exit code 2, in one
place (``zoomloc.cli.main.main``); anything else is a bug and keeps its traceback. Commands therefore
raise these instead of printing, and never catch them to reformat.
"""

from __future__ import annotations

from os import PathLike


class ZoomlocError(Exception):
    """A problem with the user's input, not with zoomloc; shown as one line."""

    def __init__(self, problem: str, path: str | PathLike | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(ZoomlocError):
    """An input file or value is missing, unreadable or malformed."""


class GeoreferenceError(InputError):
    """A raster cannot be placed on the Earth (no CRS, no transform, GCPs only)."""


class OutsideRegionError(ZoomlocError):
    """A point or area lies outside the zoom grid's region or the imagery."""


class PyramidError(InputError):
    """A pyramid file is truncated, of another format version or built for another grid."""


class ConfigError(InputError):
    """A configuration file has an unknown key, a wrong type or a bad value."""


class CheckpointError(InputError):
    """A model checkpoint is unreadable, of another format version, or unsafe to load."""
