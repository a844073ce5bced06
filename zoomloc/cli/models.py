"""The model commands: train, embed a pyramid's views, evaluate, localize photos.

Each command's parser is built only when that command runs (:mod:`zoomloc.cli.main`), and imports
what it needs then: ``zoomloc localize`` loads no trainer, evaluator or map unless asked for one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zoomloc.cli.options import default_of, setup
from zoomloc.core.errors import ZoomlocError

if TYPE_CHECKING:  # read on the query path only, where it is imported then
    from zoomloc.data.photos import Photo


def _train(args: argparse.Namespace) -> None:
    from zoomloc.training.trainer import RunConfig, load_run_config, train

    if args.config is None and not args.resume:
        raise ZoomlocError("--config is required for a new run (e.g. configs/zoom.yaml)")
    cfg = load_run_config(args.config) if args.config else RunConfig()
    summary = train(args.city_dir, cfg, args.out, resume=args.resume, progress=not args.quiet)
    if summary.out.exists():
        print(summary.describe())


def train_arguments(p: argparse.ArgumentParser) -> None:
    setup(p, _train, "zoomloc train cities/demo --config configs/zoom.yaml --out runs/demo")
    p.add_argument("city_dir", type=Path, help="city directory with split.csv and pyramid.h5")
    p.add_argument("--config", type=Path, default=None, help="run config YAML (model and training)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write (checkpoints, metrics, curve)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")


def _embed(args: argparse.Namespace) -> None:
    from zoomloc.geo.citydir import CityDir
    from zoomloc.inference.localize import Localizer

    pyramid = CityDir(args.city_dir).pyramid_path
    loc = Localizer.load(args.model, pyramid, cache_dir=args.out, progress=not args.quiet)
    g = loc.model.grid
    print(f"embedded {sum(g.n_cells(lv) for lv in range(g.levels + 1))} views of {pyramid} ({loc.model.encoders.num_features} dims)")


def embed_arguments(p: argparse.ArgumentParser) -> None:
    setup(p, _embed, "zoomloc embed cities/demo --model runs/demo")
    p.add_argument("city_dir", type=Path, help="city directory with pyramid.h5")
    p.add_argument("--model", type=Path, required=True, help="run folder or checkpoint")
    p.add_argument("--out", type=Path, default=None, help="cache folder (default CITY_DIR/embeddings)")


def _evaluate(args: argparse.Namespace) -> None:
    from zoomloc.evaluation.evaluate import evaluate_run

    report = evaluate_run(
        args.city_dir,
        args.model,
        split=args.split,
        beam=args.beam,
        out=args.out,
        with_references=not args.no_references,
        progress=not args.quiet,
    )
    print(report.describe())


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from zoomloc.evaluation.evaluate import evaluate_run
    from zoomloc.geo.citydir import SPLITS

    setup(p, _evaluate, "zoomloc evaluate cities/demo --model runs/demo --split test --beam 4 --out runs/demo/test/metrics.json")
    p.add_argument("city_dir", type=Path, help="city directory with split.csv and pyramid.h5")
    p.add_argument("--model", type=Path, required=True, help="run folder or checkpoint")
    p.add_argument("--split", choices=SPLITS, default=default_of(evaluate_run, "split"), help="which photos (default %(default)s)")
    p.add_argument(
        "--beam",
        type=int,
        default=default_of(evaluate_run, "beam"),
        help="beam width of a zoom model (default %(default)s: greedy, as the paper)",
    )
    p.add_argument("--out", type=Path, required=True, help="metrics.json to write; the CDF PNG and per-query CSV go beside it")
    p.add_argument(
        "--no-references",
        action="store_true",
        help="skip the random-cell and nearest-training-photo references (the latter encodes every photo of a "
        "city whose street cache the model did not build)",
    )


def _localize(args: argparse.Namespace) -> None:
    """Photos are decoded once, before the model loads: a call with only unreadable files fails at once."""
    from zoomloc.geo.pyramid import PyramidReader
    from zoomloc.inference.localize import Localizer
    from zoomloc.inference.report import describe

    topk = args.beam if args.topk is None else args.topk
    if args.beam < 1 or topk < 1:
        raise ZoomlocError(f"--beam and --topk must be at least 1, got --beam {args.beam} --topk {topk}")
    photos = _readable_photos(args.photos)
    if not photos:
        raise ZoomlocError(f"none of the {len(args.photos)} photos could be read")
    model, pyramid_path = _model_and_pyramid(args)
    with PyramidReader(pyramid_path) as pyramid:  # opened once: the model's grid is checked on it, the map drawn from it
        loc = Localizer.load(model, pyramid, progress=not args.quiet)
        results = loc.localize(photos, beam=args.beam, topk=topk, truths=[photo.gps for photo in photos])
        for result in results:
            print(json.dumps(result.to_json()) if args.json else describe(result))
        if args.map is not None:  # folium and the imagery warp load only for a map
            from zoomloc.inference.viz import localization_map, save_map

            save_map(localization_map(results, pyramid, photos={str(p.path): p.image for p in photos}), args.map)
    if args.map is not None and not args.json:
        print(f"map: {args.map}")


def localize_arguments(p: argparse.ArgumentParser) -> None:
    from zoomloc.inference.localize import Localizer

    setup(p, _localize, "zoomloc localize photo.jpg --map map.html   (the demo model; or --model runs/NAME --city CITY_DIR)")
    p.add_argument("photos", type=Path, nargs="+", metavar="PHOTO", help="photos to localize; unreadable ones are skipped")
    default = "default: the embedded demo, built by `make demo`"
    p.add_argument("--model", type=Path, default=None, metavar="RUN_DIR", help=f"run folder or checkpoint ({default})")
    p.add_argument("--city", type=Path, default=None, metavar="CITY_DIR", help=f"city directory with pyramid.h5 ({default})")
    p.add_argument("--beam", type=int, default=default_of(Localizer.localize, "beam"), help="beam width (default %(default)s; 1: greedy)")
    p.add_argument(
        "--topk", type=int, default=None, help="candidates to report (default: --beam); more than --beam widens the beam to --topk"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per photo and line on stdout, nothing else")
    p.add_argument("--map", type=Path, default=None, metavar="OUT.html", help="also write an interactive map of the results")


def _model_and_pyramid(args: argparse.Namespace) -> tuple[Path, Path]:
    """``--model`` and ``--city``'s pyramid, or the embedded default's when both are left out."""
    from zoomloc.geo.citydir import CityDir
    from zoomloc.inference.embedded import require_default_demo

    if (args.model is None) != (args.city is None):
        raise ZoomlocError("--model and --city go together: give both, or neither to use the embedded demo model")
    if args.model is None:
        demo = require_default_demo()
        return demo.model, demo.city.pyramid_path
    return args.model, CityDir(args.city).pyramid_path


def _readable_photos(paths: Sequence[Path]) -> list[Photo]:
    """The photos that decode, each read once (pixels and EXIF GPS); each other one is named on stderr,
    so one bad file spoils no batch.

    A single photo that does not decode is the command's error itself: one line, exit code 2.
    """
    from zoomloc.data.photos import Photo

    if len(paths) == 1:
        return [Photo.read(paths[0])]
    readable = []
    for path in paths:
        try:
            readable.append(Photo.read(path))
        except ZoomlocError as exc:
            print(f"zoomloc localize: skipped {exc}", file=sys.stderr)
    return readable


ARGUMENTS = {
    "train": train_arguments,
    "embed": embed_arguments,
    "evaluate": evaluate_arguments,
    "localize": localize_arguments,
}
