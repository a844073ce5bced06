"""What every command's parser shares: the example in its help, ``--quiet``, defaults read from their one home."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any


def setup(parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], None], example: str, *, progress: bool = True) -> None:
    """Bind ``handler`` and the ``example`` of ``--help``; long-running commands (``progress``) also get ``--quiet``."""
    parser.set_defaults(handler=handler)
    parser.epilog = f"example:\n  {example}"
    if progress:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")


def default_of(owner: Any, name: str) -> Any:
    """The default of a config dataclass's field or of a function's keyword: the option's default is
    read from there rather than written a second time."""
    if dataclasses.is_dataclass(owner):
        field = next(f for f in dataclasses.fields(owner) if f.name == name)
        return field.default_factory() if field.default is dataclasses.MISSING else field.default
    return inspect.signature(owner).parameters[name].default
