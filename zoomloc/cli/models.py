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
    from zoomloc.geo.citydir import CityDir


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
        fuse=args.fuse,
        photos=args.with_photos,
        progress=not args.quiet,
    )
    print(report.describe())


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from zoomloc.evaluation.evaluate import evaluate_run
    from zoomloc.evaluation.tracks import FUSE_CHOICES
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
    p.add_argument(
        "--fuse",
        choices=FUSE_CHOICES,
        default=None,
        help="also localize each capture's photos (sequence_id, ordered by captured_at) as one track and report the fused accuracy",
    )
    p.add_argument(
        "--with-photos",
        action="store_true",
        help="also measure the model with the city's training photos as a second witness (the most similar ones "
        "at their GPS positions), their weight fitted on the val photos (zoomloc.inference.photo_witness)",
    )


def _localize(args: argparse.Namespace) -> None:
    """Photos are decoded (and a track's captures formed) before the model loads: a call with only
    unreadable files, or with captures it cannot order, fails at once."""
    from zoomloc.geo.pyramid import PyramidReader
    from zoomloc.inference.captures import expand_photos, photo_headings
    from zoomloc.inference.localize import Localizer
    from zoomloc.inference.report import describe, describe_track

    topk = args.beam if args.topk is None else args.topk
    if args.beam < 1 or topk < 1 or args.candidates < 1:
        raise ZoomlocError(f"--beam, --topk and --candidates must be at least 1, got {args.beam}, {topk}, {args.candidates}")
    track_only = [
        flag
        for flag, given in (("--records", args.records), ("--interval", args.interval), ("--untimed", args.untimed))
        if given is not None
    ]
    if track_only and not args.track:
        raise ZoomlocError(f"{', '.join(track_only)} only apply with --track")
    paths = expand_photos(args.photos)
    photos = _readable_photos(paths)
    if not photos:
        raise ZoomlocError(f"none of the {len(paths)} photos could be read")
    captures, headings = _captures(photos, args) if args.track else (None, photo_headings(photos))
    model, city = _model_and_city(args)
    with PyramidReader(city.pyramid_path) as pyramid:  # opened once: the model's grid is checked on it, the map drawn from it
        loc = Localizer.load(model, pyramid, progress=not args.quiet)
        if args.with_photos:
            from zoomloc.inference.photo_witness import with_training_photos

            loc, _ = with_training_photos(loc, model, city, beam=args.beam, progress=not args.quiet)
        truths = [photo.gps for photo in photos]
        if captures is None:
            tracks = []
            results = loc.localize(photos, beam=args.beam, topk=topk, truths=truths, headings=headings)
            for result in results:
                print(json.dumps(result.to_json()) if args.json else describe(result))
        else:
            tracks = _tracks(loc, photos, captures, truths, headings, args)
            results = [photo for track in tracks for photo in track.photos]
            for track in tracks:
                print(json.dumps(track.to_json()) if args.json else describe_track(track))
        written = _write_outputs(args, results, tracks, pyramid, photos)
    if not args.json:
        for line in written:
            print(line)


def _captures(photos: Sequence[Photo], args: argparse.Namespace):
    """The photos as captures, in capture order (:mod:`zoomloc.inference.captures`): by the records' sequence
    ids and times, else by EXIF times, else by file order and ``--interval``; and the photos' compass headings
    (the records', else EXIF's)."""
    from zoomloc.inference.captures import group_captures, photo_headings, photo_times, read_records

    records = None if args.records is None else read_records(args.records)
    times, sequences = photo_times(photos, records, args.records)
    captures = group_captures([str(p.path) for p in photos], times, sequences, interval_s=args.interval, untimed=args.untimed or "refuse")
    return captures, photo_headings(photos, records)


def _tracks(loc, photos: Sequence[Photo], captures, truths, headings: list[float], args: argparse.Namespace):
    """Each capture localized as one track; every photo is encoded once, in one pass."""
    from zoomloc.inference.fusion import CAPTURE_SPEEDS_MPS, FusionConfig

    street, clues = loc.embed_photos(photos), loc.clues_of_photos(photos, headings)
    fusion = FusionConfig(speed_mps=CAPTURE_SPEEDS_MPS[args.mode])
    return [
        loc.track_embeddings(
            street[list(c.indices)],
            [str(photos[i].path) for i in c.indices],
            c.times_s,
            capture=c.name,
            candidates=args.candidates,
            truths=[truths[i] for i in c.indices],
            fusion=fusion,
            clues=clues[list(c.indices)],
        )
        for c in captures
    ]


def _write_outputs(args: argparse.Namespace, results, tracks, pyramid, photos: Sequence[Photo]) -> list[str]:
    """The files asked for (GeoJSON, CSV, map), each written atomically; a line naming each."""
    written = []
    if args.geojson is not None or args.csv is not None:
        from zoomloc.inference.export import write_csv, write_geojson

        for path, write, what in ((args.geojson, write_geojson, "GeoJSON"), (args.csv, write_csv, "CSV")):
            if path is not None:
                write(path, results, tracks)
                written.append(f"{what}: {path}")
    if args.map is not None:  # folium and the imagery warp load only for a map
        from zoomloc.inference.viz import localization_map, save_map

        save_map(localization_map(results, pyramid, photos={str(p.path): p.image for p in photos}, tracks=tracks), args.map)
        written.append(f"map: {args.map}")
    return written


def localize_arguments(p: argparse.ArgumentParser) -> None:
    from zoomloc.inference.fusion import CAPTURE_SPEEDS_MPS
    from zoomloc.inference.localize import TRACK_CANDIDATES, Localizer

    setup(
        p,
        _localize,
        "zoomloc localize photo.jpg --map map.html   (the demo model; or --model runs/NAME --city CITY_DIR)\n"
        "  zoomloc localize drive/ --track --geojson drive.geojson   (a folder of one capture, ordered by EXIF times)",
    )
    p.add_argument(
        "photos", type=Path, nargs="+", metavar="PHOTO", help="photos or folders of photos to localize; unreadable ones are skipped"
    )
    default = "default: the embedded demo, built by `make demo`"
    p.add_argument("--model", type=Path, default=None, metavar="RUN_DIR", help=f"run folder or checkpoint ({default})")
    p.add_argument("--city", type=Path, default=None, metavar="CITY_DIR", help=f"city directory with pyramid.h5 ({default})")
    p.add_argument("--beam", type=int, default=default_of(Localizer.localize, "beam"), help="beam width (default %(default)s; 1: greedy)")
    p.add_argument(
        "--topk", type=int, default=None, help="candidates to report (default: --beam); more than --beam widens the beam to --topk"
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object per photo (per capture with --track) and line on stdout, nothing else"
    )
    p.add_argument("--map", type=Path, default=None, metavar="OUT.html", help="also write an interactive map of the results")
    p.add_argument(
        "--geojson", type=Path, default=None, metavar="OUT.geojson", help="also write the answers (and tracks) as GeoJSON, EPSG:4326"
    )
    p.add_argument("--csv", type=Path, default=None, metavar="OUT.csv", help="also write the answers as CSV, a row per photo")
    p.add_argument(
        "--with-photos",
        action="store_true",
        help="the city's training photos most like each photo as a second witness beside the map, weighted as the "
        "city's val photos showed best (zoomloc.inference.photo_witness; the fit is kept for later calls)",
    )
    track = p.add_argument_group("captures (--track): photos of one camera along the streets, localized together; no GPS is used")
    track.add_argument(
        "--track",
        action="store_true",
        help="localize the photos as captures: grouped by sequence_id (--records), ordered by time, fused into tracks",
    )
    track.add_argument(
        "--records",
        type=Path,
        default=None,
        metavar="FILE",
        help="CSV or GeoJSON with image_id (or id), captured_at, sequence_id (or sequence): a city's metadata.csv or a "
        "Mapillary export (its positions are not read); default: each photo's EXIF time (and the Mapillary app's "
        "sequence, where it wrote one), else one capture",
    )
    track.add_argument("--interval", type=float, default=None, metavar="SECONDS", help="seconds between photos of a capture without times")
    track.add_argument(
        "--untimed",
        choices=("refuse", "order"),
        default=None,
        help="a photo without a time in a timed capture: refuse (default), or place it by its order",
    )
    track.add_argument(
        "--mode",
        choices=tuple(CAPTURE_SPEEDS_MPS),
        default="car",
        help="how the capture moves, which bounds its speed: "
        + ", ".join(f"{m} ≤ {v:g} m/s" for m, v in CAPTURE_SPEEDS_MPS.items())
        + " (default %(default)s)",
    )
    track.add_argument(
        "--candidates",
        type=int,
        default=TRACK_CANDIDATES,
        help="cells per photo the fusion chooses among (a zoom model's beam is that wide; default %(default)s)",
    )


def _model_and_city(args: argparse.Namespace) -> tuple[Path, CityDir]:
    """``--model`` and ``--city``, or the embedded default's when both are left out."""
    from zoomloc.geo.citydir import CityDir
    from zoomloc.inference.embedded import require_default_demo

    if (args.model is None) != (args.city is None):
        raise ZoomlocError("--model and --city go together: give both, or neither to use the embedded demo model")
    if args.model is None:
        demo = require_default_demo()
        return demo.model, demo.city
    return args.model, CityDir(args.city)


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
