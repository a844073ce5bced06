"""The data commands: a city folder from a synthetic city, photos or the paper's dataset; its split and its pyramid.

The only part of ``zoomloc`` besides the pipelines that imports :mod:`data_prep`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.jzi import import_jzi
from data_prep.photos import import_photos
from data_prep.split import DRAWN_PROTOCOLS, SplitConfig, split_city
from data_prep.synth import SynthCityConfig, synth_city
from zoomloc.cli.options import default_of, setup
from zoomloc.geo.pyramid import DEFAULT_K, DEFAULT_LEVELS, DEFAULT_TERMINAL_M, PyramidSpec, build_pyramid


def _synth_city(args: argparse.Namespace) -> None:
    cfg = SynthCityConfig.from_yaml(args.config) if args.config else SynthCityConfig()
    cfg = cfg.replace(seed=args.seed, size_m=args.size_m, gsd=args.gsd, images=args.images)
    print(synth_city(args.city_dir, cfg, progress=not args.quiet).describe())


def synth_city_arguments(p: argparse.ArgumentParser) -> None:
    setup(p, _synth_city, "zoomloc synth-city /tmp/city --seed 0 --size-m 1000 --images 2000")
    p.add_argument("city_dir", type=Path, help="city directory to create")
    p.add_argument("--config", type=Path, default=None, help="YAML city config (e.g. configs/cities/demo.yaml)")

    def default(name: str) -> str:  # the options below override the config's values, or else the defaults'
        return f"default {default_of(SynthCityConfig, name):g} or the config's"

    p.add_argument("--seed", type=int, default=None, help=f"random seed ({default('seed')})")
    p.add_argument("--size-m", type=float, default=None, help=f"side of the city square in metres ({default('size_m')})")
    p.add_argument("--gsd", type=float, default=None, help=f"orthophoto ground sampling distance, m/px ({default('gsd')})")
    p.add_argument("--images", type=int, default=None, help=f"number of street-level photos ({default('images')})")


def _import_photos(args: argparse.Namespace) -> None:
    print(import_photos(args.src, args.city, link=args.link).describe())


def import_photos_arguments(p: argparse.ArgumentParser) -> None:
    setup(p, _import_photos, "zoomloc import-photos ~/photos --city cities/mytown", progress=False)
    p.add_argument("src", type=Path, help="folder of JPEG/PNG photos, or a CSV/GeoJSON of records beside their images")
    p.add_argument("--city", type=Path, required=True, help="city directory to import into")
    p.add_argument("--link", action="store_true", help="hard-link images instead of copying them")


def _import_jzi(args: argparse.Namespace) -> None:
    print(import_jzi(args.root, args.city, val_fraction=args.val_fraction, seed=args.seed).describe())


def import_jzi_arguments(p: argparse.ArgumentParser) -> None:
    setup(p, _import_jzi, "zoomloc import-jzi ~/justzoomin_data --city cities/jzi_dc", progress=False)
    p.add_argument("root", type=Path, help="the dataset folder: satellite/layout.yaml, streetview/images/, metadata/*.csv")
    p.add_argument("--city", type=Path, required=True, help="city directory to write")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=default_of(import_jzi, "val_fraction"),
        help="share of the train CSV held out to validate (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=default_of(import_jzi, "seed"), help="seed of that hold-out (default %(default)s)")


def _split(args: argparse.Namespace) -> None:
    cfg = SplitConfig(block_m=args.block_m, buffer_m=args.buffer_m, fractions=tuple(args.fractions), seed=args.seed, by=args.by)
    print(split_city(args.city_dir, cfg).describe())


def split_arguments(p: argparse.ArgumentParser) -> None:
    setup(p, _split, "zoomloc split cities/demo --by sequence --fractions 0.8 0.1 0.1 --seed 0", progress=False)
    p.add_argument("city_dir", type=Path, help="city directory with streetview/metadata.csv")
    p.add_argument(
        "--by",
        choices=DRAWN_PROTOCOLS,
        default=default_of(SplitConfig, "by"),
        help="photo: photos at random (the paper's); sequence: whole captures (sequence_id) to one split; "
        "area: blocks of --block-m, --buffer-m apart (default %(default)s)",
    )
    p.add_argument(
        "--block-m",
        type=float,
        default=default_of(SplitConfig, "block_m"),
        help="--by area: side of the square blocks assigned to splits (default %(default)g)",
    )
    p.add_argument(
        "--buffer-m",
        type=float,
        default=default_of(SplitConfig, "buffer_m"),
        help="--by area: minimum distance between photos of different splits (default %(default)g)",
    )
    p.add_argument("--fractions", type=float, nargs=3, default=default_of(SplitConfig, "fractions"), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=default_of(SplitConfig, "seed"))


def _build_pyramid(args: argparse.Namespace) -> None:
    spec = PyramidSpec(
        k=args.grid,
        levels=args.levels,
        terminal_m=args.terminal_m,
        side_m=args.side_m,
        px=args.px,
        context_factor=args.context,
        bbox=tuple(args.bbox) if args.bbox else None,
    )
    print(build_pyramid(args.city_dir, spec, out=args.out, progress=not args.quiet).describe())


def build_pyramid_arguments(p: argparse.ArgumentParser) -> None:
    setup(p, _build_pyramid, "zoomloc build-pyramid cities/demo --grid 4 --levels 3 --terminal-m 39 --px 128")
    p.add_argument(
        "city_dir", type=Path, help="city directory with satellite/*.tif or tile folders (satellite/*/layout.yaml, satellite/xyz/)"
    )
    region = "or the city's region.json"
    p.add_argument("--grid", type=int, default=None, help=f"k: each cell splits into k×k children (default {DEFAULT_K}, {region})")
    p.add_argument("--levels", type=int, default=None, help=f"L: zoom decisions per query (default {DEFAULT_LEVELS}, {region})")
    p.add_argument(
        "--terminal-m", type=float, default=None, help=f"terminal cell side in metres (default {DEFAULT_TERMINAL_M:g}, {region})"
    )
    p.add_argument("--side-m", type=float, default=None, help="region side in metres (overrides --terminal-m)")
    p.add_argument(
        "--px", type=int, default=default_of(PyramidSpec, "px"), help="pixels per side of each stored view (default %(default)s)"
    )
    p.add_argument(
        "--context",
        type=float,
        default=default_of(PyramidSpec, "context_factor"),
        help="terminal context crop side / terminal cell side (default %(default)g)",
    )
    p.add_argument(
        "--bbox", type=float, nargs=4, metavar=("W", "S", "E", "N"), help="centre the region on this lon/lat box (default: the imagery)"
    )
    p.add_argument("--out", type=Path, default=None, help="output file (default CITY_DIR/pyramid.h5)")


ARGUMENTS = {
    "synth-city": synth_city_arguments,
    "import-photos": import_photos_arguments,
    "import-jzi": import_jzi_arguments,
    "split": split_arguments,
    "build-pyramid": build_pyramid_arguments,
}
