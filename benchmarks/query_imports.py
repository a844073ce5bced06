"""What one query costs cold: `zoomloc localize PHOTO --json` in this fresh process.

Prints the wall time (imports included), the peak memory, how many modules were loaded (the
project's own among them) and which of the pipelines' heavy ones a query should not load. Run it
on an idle machine, once the demo is built (or with --model and --city)::

    .venv/bin/python benchmarks/query_imports.py [PHOTO] [--model RUN --city CITY_DIR]
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402 — timed from the first line
import contextlib  # noqa: E402
import io  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

from zoomloc.cli.main import main  # noqa: E402

HEAVY = (  # packages and modules a query has no use for (any module under them counts)
    "geopandas",
    "matplotlib",
    "folium",
    "data_prep",
    "zoomloc.training",
    "zoomloc.evaluation",
    "zoomloc.pipelines",
    "zoomloc.inference.viz",
)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", nargs="?", help="default: the demo city's first photo")
    parser.add_argument("--model")
    parser.add_argument("--city")
    args = parser.parse_args()
    photo = args.photo
    if photo is None:
        from zoomloc.inference.embedded import require_default_demo

        photo = str(min(require_default_demo().city.images_dir.glob("*.jpg")))
    extra = ["--model", args.model, "--city", args.city] if args.model else []
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["localize", photo, "--json", "--quiet", *extra])
    wall = time.perf_counter() - START
    own = [m for m in sys.modules if m.split(".")[0] in ("zoomloc", "data_prep")]
    files = [m for m in own if not hasattr(sys.modules[m], "__path__")]  # modules, not their packages
    heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"exit {code}: {wall:.1f} s wall, peak {peak:.0f} MB, {len(sys.modules)} modules "
        f"({len(files)} of the project's, plus {len(own) - len(files)} of its packages)"
    )
    print(f"heavy modules loaded: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    run()
