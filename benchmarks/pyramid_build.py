"""How fast is build-pyramid, next to one plain rasterio read of the same region?

Prints, from one run on one machine: the pyramid build's throughput in Mpx/s of source pixels
read (counted at the resolution actually read, overviews included), the same figure for a
single ``rasterio.warp.reproject`` of the whole region at the pyramid's finest resolution (the
best a reader can do: one warp, no cutting into cells, no HDF5), their ratio (target >= 0.5),
and the process's peak memory after each. Without a path it writes its own test GeoTIFF (tiled,
with averaged overviews) into a temporary folder.

    python benchmarks/pyramid_build.py [GEOTIFF] [--size 4096] [--levels 3] [--px 128]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.windows import Window

from zoomloc.geo.pyramid import PyramidSpec, build_pyramid
from zoomloc.geo.raster import open_source


def write_test_geotiff(path: Path, size: int, gsd: float = 0.5) -> None:
    """A ``size``² RGB uint8 GeoTIFF in UTM 33N: smooth random texture, 512-px tiles, overviews.

    Written strip by strip so that generating it does not count in the peak memory.
    """
    rng = np.random.default_rng(0)
    profile = dict(
        driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(500_000 - size * gsd / 2, 5_000_000, gsd, gsd),
        tiled=True, blockxsize=512, blockysize=512, photometric="RGB",
    )  # fmt: skip
    coarse = rng.integers(0, 256, (3, size // 16 + 1, size // 16 + 1)).astype(np.uint8)
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, size, 512):
            rows = min(512, size - row)
            strip = coarse[:, row // 16 : (row + rows) // 16 + 1].repeat(16, axis=1).repeat(16, axis=2)
            noise = rng.integers(0, 32, (3, rows, size), dtype=np.uint8)
            ds.write(strip[:, :rows, :size] // 2 + noise, window=Window(0, row, size, rows))
        ds.build_overviews([2, 4, 8, 16], Resampling.average)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("geotiff", nargs="?", type=Path, help="source GeoTIFF (default: generate one)")
    parser.add_argument("--size", type=int, default=4096, help="side in px of the generated GeoTIFF (default 4096)")
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--px", type=int, default=128)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="zoomloc-bench-"))
    try:
        (work / "satellite").mkdir()
        tif = work / "satellite" / "source.tif"
        if args.geotiff:
            tif.symlink_to(args.geotiff.resolve())
        else:
            write_test_geotiff(tif, args.size)
        with rasterio.open(tif) as src:
            extent = min(src.width * src.res[0], src.height * src.res[1])
            print(f"source: {tif if not args.geotiff else args.geotiff}, {src.width}x{src.height} px, "
                  f"{src.res[0]:.2f} m, overviews {src.overviews(1)}")  # fmt: skip
        print(f"peak memory before: {peak_mib():.0f} MiB")

        spec = PyramidSpec(k=args.grid, levels=args.levels, terminal_m=None, side_m=0.9 * extent, px=args.px)
        summary = build_pyramid(work, spec, progress=False)
        build_rate = summary.source_mpx / summary.seconds
        build_out = summary.n_views * spec.px**2 / 1e6
        print(summary.describe())
        print(f"pyramid build: {summary.source_mpx:8.1f} Mpx source in {summary.seconds:6.2f} s = {build_rate:6.1f} Mpx/s; "
              f"output {build_out:.1f} Mpx = {build_out / summary.seconds:.1f} Mpx/s; peak memory {peak_mib():.0f} MiB")  # fmt: skip

        # The plain read: the whole region in one warp at the finest resolution the pyramid renders.
        grid = summary.grid
        res = min(grid.cell_size(grid.levels - 1), spec.context_factor * grid.terminal_m) / spec.px
        n = int(round(grid.side_m / res))
        source = open_source(tif)
        with rasterio.open(tif) as src:
            out = np.zeros((len(source.colour_bands), n, n), np.float32)
            started = time.perf_counter()
            reproject(rasterio.band(src, list(source.colour_bands)), out, dst_transform=from_origin(grid.origin_x, grid.origin_y, res, res),
                      dst_crs=grid.crs, resampling=Resampling.average)  # fmt: skip
            seconds = time.perf_counter() - started
        plain_mpx = grid.side_m**2 / (source.footprint(grid.crs).area / (source.width * source.height)) / 1e6
        plain_rate = plain_mpx / seconds
        print(f"plain read:    {plain_mpx:8.1f} Mpx source in {seconds:6.2f} s = {plain_rate:6.1f} Mpx/s; "
              f"output {n * n / 1e6:.1f} Mpx = {n * n / 1e6 / seconds:.1f} Mpx/s ({n}x{n} at {res:.3f} m); "
              f"peak memory {peak_mib():.0f} MiB")  # fmt: skip
        print(
            f"ratio build/plain source throughput: {build_rate / plain_rate:.2f} (target >= 0.5); "
            f"output throughput: {build_out / summary.seconds / (n * n / 1e6 / seconds):.2f}"
        )
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
