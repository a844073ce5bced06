"""How fast ``zoomloc synth-city`` generates a city: scene, orthophoto, street views per second.

Generates the configured city (by default the benchmark city, 6.25 km² and 20 000 photos of
256×128 px) into a temporary folder that is removed afterwards, and prints the time of each
stage and the peak memory::

    .venv/bin/python benchmarks/synth_speed.py                       # the full benchmark city
    .venv/bin/python benchmarks/synth_speed.py --images 2000         # fewer photos, same city
    .venv/bin/python benchmarks/synth_speed.py --workers 1           # one rendering process
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

from data_prep.synth import SynthCityConfig, synth_city

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "cities" / "bench.yaml")
    parser.add_argument("--images", type=int, default=None, help="photos to render (default: the config's)")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: the config's, 0 = all CPUs)")
    args = parser.parse_args(argv)

    cfg = SynthCityConfig.from_yaml(args.config).replace(images=args.images, workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        summary = synth_city(Path(tmp) / "city", cfg, progress=sys.stderr.isatty())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    w, h = summary.image_size
    print(f"config            {args.config} (seed {cfg.seed}, workers {cfg.workers or 'all CPUs'})")
    print(f"city              {summary.size_m:g} m square ({summary.size_m**2 / 1e6:.2f} km²), {summary.pixels}² px at {summary.gsd:g} m")
    print(f"scene build       {summary.scene_s:8.1f} s")
    print(f"orthophoto        {summary.ortho_s:8.1f} s  (surface colours, shadows, GeoTIFF with overviews)")
    print(f"street views      {summary.street_s:8.1f} s  for {summary.images} photos of {w}×{h} px")
    print(f"                  {summary.views_per_s:8.1f} views/s")
    print(f"total             {summary.seconds:8.1f} s")
    print(f"peak memory       {peak_mb:8.0f} MB  (main process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
