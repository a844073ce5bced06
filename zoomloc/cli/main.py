"""The ``zoomloc`` command line: the commands, and the one place a user's mistake becomes one line.

Every command is a thin layer: parse arguments, call one library function, print its result.
Its arguments live with its group (:mod:`zoomloc.cli.data`, :mod:`~zoomloc.cli.models`,
:mod:`~zoomloc.cli.pipelines`) and are built only when that command runs, so a command loads only
what it uses. User mistakes surface as :class:`~zoomloc.core.errors.ZoomlocError` and are turned
into one line on stderr and exit code 2 here, in :func:`main`, and nowhere else.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence

from zoomloc.core import interrupts
from zoomloc.core.errors import ZoomlocError

EXIT_USER_ERROR = 2

COMMANDS: dict[str, tuple[str, str]] = {  # name: (group module, what it does), in the order a city goes through them
    "synth-city": (
        "data",
        "Generate a synthetic city directory: an orthophoto GeoTIFF and street-level photos of the same 2.5D scene.",
    ),
    "import-photos": ("data", "Import GPS-tagged photos (a folder, or a Mapillary-style CSV/GeoJSON) into a city directory."),
    "import-jzi": (
        "data",
        "Import the Just Zoom In dataset (DC): photos, its train/val split, its tiles and its 10 km zoom region.",
    ),
    "split": (
        "data",
        "Split a city's photos into train/val/test: by photo (the paper's protocol), by sequence (whole captures), "
        "or by area (split.csv, split_areas.geojson).",
    ),
    "build-pyramid": (
        "data",
        "Render the satellite tile pyramid (pyramid.h5) of a city directory from its GeoTIFFs and tile folders.",
    ),
    "train": (
        "models",
        "Train a zoom model (or, with model.kind: retrieval, the retrieval baseline) on a city's train split, "
        "selected by validation Recall@1 within 50 m.",
    ),
    "embed": ("models", "Precompute the embedding of every pyramid view for a model (queries then cost one street pass)."),
    "evaluate": (
        "models",
        "Measure a model on a split: Recall@1/@5 within d metres, errors, latency and memory, beside the random cell "
        "and the nearest training photo (metrics.json).",
    ),
    "localize": ("models", "Tell where street-level photos (JPEG/PNG, any size) were taken: position, certainty, alternatives."),
    "benchmark": (
        "pipelines",
        "Zoom vs contrastive retrieval on one city, same budget, under each split protocol: pyramid, splits, train both, evaluate, report.",
    ),
    "demo": (
        "pipelines",
        "Build the embedded default (demo city, split, pyramid, model), evaluate it and localize held-out photos.",
    ),
}


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser, with the arguments of the command ``argv`` names (the first word that is no option);
    the other commands are listed with what they do, for ``zoomloc --help``."""
    parser = argparse.ArgumentParser(
        prog="zoomloc",
        description="Tell where a street-level photo was taken by zooming into a satellite map.",
        epilog="New here? 'zoomloc demo' builds the embedded default city and model; 'zoomloc localize PHOTO'\n"
        "then uses them. The commands are listed in the order a city goes through them.\n"
        "Run 'zoomloc COMMAND --help' for a command's options and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((word for word in argv if not word.startswith("-")), None)
    for name, (group, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            importlib.import_module(f"zoomloc.cli.{group}").ARGUMENTS[name](p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zoomloc`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _build_parser(argv).parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can it handle signals
    interrupts.forget()
    previous = signal.signal(signal.SIGTERM, interrupts.raise_terminated) if in_main_thread else None
    try:
        with interrupts.unreported_when_swallowed():
            args.handler(args)
        interrupts.check()
    except ZoomlocError as exc:
        print(f"zoomloc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(f"zoomloc {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, interrupts.Terminated) else 130
    except Exception:
        if not interrupts.terminated():
            raise
        print(f"zoomloc {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
