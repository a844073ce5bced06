"""The ``zoomloc`` command line.

Every command is a thin layer: parse arguments, call one library function, print its result.
User mistakes surface as :class:`~zoomloc.core.errors.ZoomlocError` and are turned into one line on
stderr and exit code 2 here, in :func:`main`, and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from zoomloc.core.errors import ZoomlocError

EXIT_USER_ERROR = 2


def _cmd_build_pyramid(args: argparse.Namespace) -> None:
    from zoomloc.geo.pyramid import PyramidSpec, build_pyramid

    spec = PyramidSpec(
        k=args.grid,
        levels=args.levels,
        terminal_m=args.terminal_m,
        side_m=args.side_m,
        px=args.px,
        context_factor=args.context,
        bbox=tuple(args.bbox) if args.bbox else None,
    )
    summary = build_pyramid(args.city_dir, spec, out=args.out, progress=not args.quiet)
    print(summary.describe())


def _cmd_synth_city(args: argparse.Namespace) -> None:
    from data_prep.synth import SynthCityConfig, synth_city

    cfg = SynthCityConfig.from_yaml(args.config) if args.config else SynthCityConfig()
    cfg = cfg.replace(seed=args.seed, size_m=args.size_m, gsd=args.gsd, images=args.images)
    summary = synth_city(args.city_dir, cfg, progress=not args.quiet)
    print(summary.describe())


def _cmd_split(args: argparse.Namespace) -> None:
    from data_prep.split import SplitConfig, split_city

    cfg = SplitConfig(block_m=args.block_m, buffer_m=args.buffer_m, fractions=tuple(args.fractions), seed=args.seed, by=args.by)
    summary = split_city(args.city_dir, cfg)
    print(summary.describe())


def _cmd_import_photos(args: argparse.Namespace) -> None:
    from data_prep.photos import import_photos

    summary = import_photos(args.src, args.city, link=args.link)
    print(summary.describe())


def _cmd_import_jzi(args: argparse.Namespace) -> None:
    from data_prep.jzi import import_jzi

    print(import_jzi(args.root, args.city, val_fraction=args.val_fraction, seed=args.seed).describe())


def _cmd_train(args: argparse.Namespace) -> None:
    from zoomloc.training.trainer import RunConfig, load_run_config, train

    if args.config is None and not args.resume:
        raise ZoomlocError("--config is required for a new run (e.g. configs/zoom.yaml)")
    cfg = load_run_config(args.config) if args.config else RunConfig()
    summary = train(args.city_dir, cfg, args.out, resume=args.resume, progress=not args.quiet)
    if summary.out.exists():
        print(summary.describe())


def _cmd_embed(args: argparse.Namespace) -> None:
    from zoomloc.geo.citydir import CityDir
    from zoomloc.inference.localize import Localizer

    pyramid = CityDir(args.city_dir).pyramid_path
    loc = Localizer.load(args.model, pyramid, cache_dir=args.out, progress=not args.quiet)
    g = loc.model.grid
    print(f"embedded {sum(g.n_cells(lv) for lv in range(g.levels + 1))} views of {pyramid} ({loc.model.encoders.num_features} dims)")


def _cmd_evaluate(args: argparse.Namespace) -> None:
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


def _cmd_localize(args: argparse.Namespace) -> None:
    """Photos are read before the model loads: a call with only unreadable files fails at once."""
    import json

    from zoomloc.inference.localize import Localizer
    from zoomloc.inference.report import describe

    topk = args.beam if args.topk is None else args.topk
    if args.beam < 1 or topk < 1:
        raise ZoomlocError(f"--beam and --topk must be at least 1, got --beam {args.beam} --topk {topk}")
    photos = _readable_photos(args.photos)
    if not photos:
        raise ZoomlocError(f"none of the {len(args.photos)} photos could be read")
    model, pyramid = _model_and_pyramid(args)
    loc = Localizer.load(model, pyramid, progress=not args.quiet)
    truths = [_exif_position(path) for path in photos]
    results = loc.localize(photos, beam=args.beam, topk=topk, truths=truths)
    for result in results:
        print(json.dumps(result.to_json()) if args.json else describe(result))
    if args.map is not None:  # folium and the imagery warp load only for a map
        from zoomloc.geo.pyramid import PyramidReader
        from zoomloc.inference.viz import localization_map, save_map

        with PyramidReader(pyramid) as pyr:
            save_map(localization_map(results, pyr), args.map)
        if not args.json:
            print(f"map: {args.map}")


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


def _readable_photos(paths: Sequence[Path]) -> list[Path]:
    """The photos that decode; each other one is named on stderr, so one bad file spoils no batch.

    A single photo that does not decode is the command's error itself: one line, exit code 2.
    """
    from zoomloc.data.photos import load_photo

    if len(paths) == 1:
        load_photo(paths[0])
        return list(paths)
    readable = []
    for path in paths:
        try:
            load_photo(path)
        except ZoomlocError as exc:
            print(f"zoomloc localize: skipped {exc}", file=sys.stderr)
        else:
            readable.append(path)
    return readable


def _exif_position(path: Path) -> tuple[float, float] | None:
    """The photo's (lon, lat) from EXIF GPS, or None: a photo without a usable fix is still localized."""
    from PIL import Image

    from zoomloc.core.exif import CorruptExifError, NoGpsError, read_gps

    with Image.open(path) as img:
        try:
            fix = read_gps(img)
        except (NoGpsError, CorruptExifError):
            return None
    return fix.lon, fix.lat


def _cmd_benchmark(args: argparse.Namespace) -> None:
    from zoomloc.pipelines.benchmark import run_benchmark

    print(run_benchmark(args.config, args.out, args.city, progress=not args.quiet).describe())


def _cmd_demo(args: argparse.Namespace) -> None:
    from zoomloc.pipelines.demo import run_demo

    for line in run_demo(args.out, args.config, progress=not args.quiet):
        print(line)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoomloc",
        description="Tell where a street-level photo was taken by zooming into a satellite map.",
        epilog="New here? 'zoomloc demo' builds the embedded default city and model; 'zoomloc localize PHOTO'\n"
        "then uses them. The commands are listed in the order a city goes through them.\n"
        "Run 'zoomloc COMMAND --help' for a command's options and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable, help: str, example: str, progress: bool = True) -> argparse.ArgumentParser:
        """A subcommand with its --help example; long-running ones (``progress``) also get --quiet."""
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(handler=handler)
        if progress:
            p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    p = command(
        "synth-city",
        _cmd_synth_city,
        "Generate a synthetic city directory: an orthophoto GeoTIFF and street-level photos of the same 2.5D scene.",
        "zoomloc synth-city /tmp/city --seed 0 --size-m 1000 --images 2000",
    )
    p.add_argument("city_dir", type=Path, help="city directory to create")
    p.add_argument("--config", type=Path, default=None, help="YAML city config (e.g. configs/cities/demo.yaml)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0 or the config's)")
    p.add_argument("--size-m", type=float, default=None, help="side of the city square in metres (default 2500)")
    p.add_argument("--gsd", type=float, default=None, help="orthophoto ground sampling distance, m/px (default 0.5)")
    p.add_argument("--images", type=int, default=None, help="number of street-level photos (default 20000)")

    p = command(
        "import-photos",
        _cmd_import_photos,
        "Import GPS-tagged photos (a folder, or a Mapillary-style CSV/GeoJSON) into a city directory.",
        "zoomloc import-photos ~/photos --city cities/mytown",
        progress=False,
    )
    p.add_argument("src", type=Path, help="folder of JPEG/PNG photos, or a CSV/GeoJSON of records beside their images")
    p.add_argument("--city", type=Path, required=True, help="city directory to import into")
    p.add_argument("--link", action="store_true", help="hard-link images instead of copying them")

    p = command(
        "import-jzi",
        _cmd_import_jzi,
        "Import the Just Zoom In dataset (DC): photos, its train/val split, its tiles and its 10 km zoom region.",
        "zoomloc import-jzi ~/justzoomin_data --city cities/jzi_dc",
        progress=False,
    )
    p.add_argument("root", type=Path, help="the dataset folder: satellite/layout.yaml, streetview/images/, metadata/*.csv")
    p.add_argument("--city", type=Path, required=True, help="city directory to write")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of the train CSV held out to validate (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of that hold-out (default 0)")

    p = command(
        "split",
        _cmd_split,
        "Split a city's photos into train/val/test: by photo (the paper's protocol), by sequence (whole captures), "
        "or by area (split.csv, split_areas.geojson).",
        "zoomloc split cities/demo --by sequence --fractions 0.8 0.1 0.1 --seed 0",
        progress=False,
    )
    p.add_argument("city_dir", type=Path, help="city directory with streetview/metadata.csv")
    p.add_argument(
        "--by",
        choices=("photo", "sequence", "area"),
        default="area",
        help="photo: photos at random (the paper's); sequence: whole captures (sequence_id) to one split; "
        "area: blocks of --block-m, --buffer-m apart (default area)",
    )
    p.add_argument("--block-m", type=float, default=200.0, help="--by area: side of the square blocks assigned to splits (default 200)")
    p.add_argument(
        "--buffer-m", type=float, default=50.0, help="--by area: minimum distance between photos of different splits (default 50)"
    )
    p.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)

    p = command(
        "build-pyramid",
        _cmd_build_pyramid,
        "Render the satellite tile pyramid (pyramid.h5) of a city directory from its GeoTIFFs and tile folders.",
        "zoomloc build-pyramid cities/demo --grid 4 --levels 3 --terminal-m 39 --px 128",
    )
    p.add_argument(
        "city_dir", type=Path, help="city directory with satellite/*.tif or tile folders (satellite/*/layout.yaml, satellite/xyz/)"
    )
    p.add_argument("--grid", type=int, default=None, help="k: each cell splits into k×k children (default 4, or the city's region.json)")
    p.add_argument("--levels", type=int, default=None, help="L: zoom decisions per query (default 3, or the city's region.json)")
    p.add_argument("--terminal-m", type=float, default=39.0, help="terminal cell side in metres (default 39)")
    p.add_argument("--side-m", type=float, default=None, help="region side in metres (overrides --terminal-m)")
    p.add_argument("--px", type=int, default=128, help="pixels per side of each stored view (default 128)")
    p.add_argument("--context", type=float, default=3.0, help="terminal context crop side / terminal cell side (default 3)")
    p.add_argument(
        "--bbox", type=float, nargs=4, metavar=("W", "S", "E", "N"), help="centre the region on this lon/lat box (default: the imagery)"
    )
    p.add_argument("--out", type=Path, default=None, help="output file (default CITY_DIR/pyramid.h5)")

    p = command(
        "train",
        _cmd_train,
        "Train a zoom model (or, with model.kind: retrieval, the retrieval baseline) on a city's train split, "
        "selected by validation Recall@1 within 50 m.",
        "zoomloc train cities/demo --config configs/zoom.yaml --out runs/demo",
    )
    p.add_argument("city_dir", type=Path, help="city directory with split.csv and pyramid.h5")
    p.add_argument("--config", type=Path, default=None, help="run config YAML (model and training)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write (checkpoints, metrics, curve)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")

    p = command(
        "embed",
        _cmd_embed,
        "Precompute the embedding of every pyramid view for a model (queries then cost one street pass).",
        "zoomloc embed cities/demo --model runs/demo",
    )
    p.add_argument("city_dir", type=Path, help="city directory with pyramid.h5")
    p.add_argument("--model", type=Path, required=True, help="run folder or checkpoint")
    p.add_argument("--out", type=Path, default=None, help="cache folder (default CITY_DIR/embeddings)")

    p = command(
        "evaluate",
        _cmd_evaluate,
        "Measure a model on a split: Recall@1/@5 within d metres, errors, latency and memory, beside the random cell "
        "and the nearest training photo (metrics.json).",
        "zoomloc evaluate cities/demo --model runs/demo --split test --beam 4 --out runs/demo/test/metrics.json",
    )
    p.add_argument("city_dir", type=Path, help="city directory with split.csv and pyramid.h5")
    p.add_argument("--model", type=Path, required=True, help="run folder or checkpoint")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="which photos (default test)")
    p.add_argument("--beam", type=int, default=1, help="beam width of a zoom model (1: greedy, as the paper)")
    p.add_argument("--out", type=Path, required=True, help="metrics.json to write; the CDF PNG and per-query CSV go beside it")
    p.add_argument(
        "--no-references",
        action="store_true",
        help="skip the random-cell and nearest-training-photo references (the latter encodes every photo of a "
        "city whose street cache the model did not build)",
    )

    p = command(
        "localize",
        _cmd_localize,
        "Tell where street-level photos (JPEG/PNG, any size) were taken: position, certainty, alternatives.",
        "zoomloc localize photo.jpg --map map.html   (the demo model; or --model runs/NAME --city CITY_DIR)",
    )
    p.add_argument("photos", type=Path, nargs="+", metavar="PHOTO", help="photos to localize; unreadable ones are skipped")
    default = "default: the embedded demo, built by `make demo`"
    p.add_argument("--model", type=Path, default=None, metavar="RUN_DIR", help=f"run folder or checkpoint ({default})")
    p.add_argument("--city", type=Path, default=None, metavar="CITY_DIR", help=f"city directory with pyramid.h5 ({default})")
    p.add_argument("--beam", type=int, default=4, help="beam width (default 4; 1: greedy)")
    p.add_argument(
        "--topk", type=int, default=None, help="candidates to report (default: --beam); more than --beam widens the beam to --topk"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per photo and line on stdout, nothing else")
    p.add_argument("--map", type=Path, default=None, metavar="OUT.html", help="also write an interactive map of the results")

    p = command(
        "benchmark",
        _cmd_benchmark,
        "Zoom vs contrastive retrieval on one city, same budget, under each split protocol: pyramid, splits, train both, evaluate, report.",
        "zoomloc benchmark --config configs/bench.yaml --out benchmarks/results/bench",
    )
    p.add_argument("--config", type=Path, required=True, help="benchmark config (configs/bench.yaml; configs/bench_quick.yaml: minutes)")
    p.add_argument(
        "--city",
        type=Path,
        default=None,
        metavar="CITY_DIR",
        help="an existing city directory (default: generate the config's synthetic city under OUT/city)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder: OUT/<protocol>/ (city folder, runs), results.json, report.md, error_cdf.png"
    )

    p = command(
        "demo",
        _cmd_demo,
        "Build the embedded default (demo city, split, pyramid, model), evaluate it and localize held-out photos.",
        "zoomloc demo --out out/demo",
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--config", type=Path, default=None, help="demo config (default: the repository's configs/demo.yaml)")

    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or ``kill`` stopping a job), raised like Ctrl-C.

    Unwinding as an exception is what lets atomic writers delete their temporary files; the
    default action of SIGTERM would end the process on the spot and leave them behind.
    """


_terminations: list[int] = []  # SIGTERMs received by this process's command


def _raise_terminated(signum: int, frame: object) -> None:
    """Unwind on SIGTERM. Recorded too: raised inside a C extension's callback (h5py converting a
    buffer), the interrupt can reach :func:`main` re-raised as another exception."""
    _terminations.append(signum)
    raise _Terminated


def _default_sigterm_in_child() -> None:
    """Forked workers (a pool, a data loader) die on SIGTERM as usual instead of unwinding.

    A worker that inherited :func:`_raise_terminated` would print a traceback of its own when
    its pool shuts it down, or hang if the signal arrives while it holds a lock.
    """
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zoomloc`` console script."""
    args = _build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can it handle signals
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        args.handler(args)
    except ZoomlocError as exc:
        print(f"zoomloc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(f"zoomloc {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, _Terminated) else 130
    except Exception:
        if not _terminations:
            raise
        print(f"zoomloc {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
