"""Draw ``docs/track_vs_photos.png``: one capture's photos localized one by one, beside the same capture fused.

Left, each photo's own answer (red) with a thin grey line to where it was taken; right, the
fused track (:meth:`~zoomloc.inference.localize.Localizer.localize_track`: the capture as a
whole, from its images and times alone) with the same lines; the true path in green on both,
over the pyramid's imagery around the capture. The capture is by default the longest one among
the city's test photos, its frames in the order of their ``captured_at``. Run after ``make demo``::

    .venv/bin/python docs/make_track_figure.py                   # out/demo/model over out/demo/city
    .venv/bin/python docs/make_track_figure.py --model runs/NAME --city CITY_DIR --capture SEQUENCE_ID
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from zoomloc.core.errors import ZoomlocError
from zoomloc.data.samples import Samples
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.inference.localize import Localizer

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "out" / "demo"
MAX_PX = 1600  # largest side of the imagery behind the capture
UNTIMED_INTERVAL_S = 1.0  # a capture whose photos have no captured_at: one a second, in metadata order
PHOTO, FUSED, TRUTH, ERROR = "#ff3b30", "#0a84ff", "#34c759", "#c7c7cc"  # the map's colours (zoomloc.inference.viz)


def pick_capture(city: CityDir, samples: Samples, sequence_id: str | None) -> tuple[str, np.ndarray, np.ndarray]:
    """The capture's name, the rows of ``samples`` that are its photos in the order taken, and their times (seconds from the first).

    ``sequence_id`` None: the capture with the most test photos (the first such in the metadata).
    """
    meta = city.read_metadata().set_index("image_id")
    ids = list(samples.image_ids)
    names = meta.loc[ids, "sequence_id"].astype("string").fillna("") if "sequence_id" in meta.columns else None
    if sequence_id is None:
        rows = samples.longest_capture()
    else:
        if names is None:
            sys.exit(f"{city.metadata_csv}: no sequence_id column, so no capture {sequence_id!r}")
        rows = np.flatnonzero(names.to_numpy() == sequence_id)
        if not len(rows):
            sys.exit(f"no test photo of capture {sequence_id!r} in {city.root}")
    name = str(names.iloc[rows[0]]) if names is not None and names.iloc[rows[0]] else ids[rows[0]]
    times = samples.times_s[rows]
    if np.isnan(times).all():
        times = np.arange(len(rows)) * UNTIMED_INTERVAL_S  # in metadata order
    elif np.isnan(times).any():
        sys.exit(f"capture {name!r}: {int(np.isnan(times).sum())} of its {len(rows)} test photos have no captured_at")
    order = np.argsort(times, kind="stable")
    return name, rows[order], times[order] - times[order].min()


def background(pyramid: PyramidReader, bounds: tuple[float, float, float, float]) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The pyramid's views covering ``bounds`` (grid CRS minx, miny, maxx, maxy) at the finest level whose
    mosaic fits :data:`MAX_PX` a side, and the mosaic's extent for ``imshow`` (left, right, bottom, top)."""
    grid, px = pyramid.grid, pyramid.px
    minx, miny, maxx, maxy = bounds
    for level in range(grid.levels - 1, -1, -1):
        size, n = grid.cell_size(level), grid.cells_per_side(level)
        c0, c1 = np.clip(np.floor((np.array([minx, maxx]) - grid.origin_x) / size).astype(int), 0, n - 1)
        r0, r1 = np.clip(np.floor((grid.origin_y - np.array([maxy, miny])) / size).astype(int), 0, n - 1)
        if max(c1 - c0 + 1, r1 - r0 + 1) * px <= MAX_PX or level == 0:
            break
    rows, cols = np.meshgrid(np.arange(r0, r1 + 1), np.arange(c0, c1 + 1), indexing="ij")
    views = pyramid.views(level, (rows * n + cols).ravel()).reshape(*rows.shape, px, px, 3)
    mosaic = views.transpose(0, 2, 1, 3, 4).reshape(rows.shape[0] * px, rows.shape[1] * px, 3)  # rows of cells → rows of pixels
    left, top = grid.origin_x + c0 * size, grid.origin_y - r0 * size
    return mosaic, (left, grid.origin_x + (c1 + 1) * size, grid.origin_y - (r1 + 1) * size, top)


def make_figure(model: Path, city_dir: Path, sequence_id: str | None, out: Path, candidates: int | None) -> str:
    """Localize the capture both ways, draw the figure to ``out``; returns the summary line."""
    city = CityDir(city_dir)
    with PyramidReader(city.pyramid_path) as pyramid:
        loc = Localizer.load(model, pyramid)
        grid = pyramid.grid
        samples = Samples.from_city(city, "test", grid)
        name, rows, times = pick_capture(city, samples, sequence_id)
        if len(rows) < 2:
            sys.exit(f"capture {name!r} has {len(rows)} test photo: nothing to fuse")
        track = loc.localize_track(
            [samples.image_paths[i] for i in rows],
            [float(t) for t in times],
            capture=name,
            truths=list(zip(samples.lon[rows].tolist(), samples.lat[rows].tolist())),
            **({} if candidates is None else {"candidates": candidates}),
        )
        own = np.column_stack(grid.to_xy([p.lon for p in track.photos], [p.lat for p in track.photos]))
        fused = np.column_stack(grid.to_xy([q.lon for q in track.points], [q.lat for q in track.points]))
        truth = np.column_stack(grid.to_xy(samples.lon[rows], samples.lat[rows]))
        bounds = _square_bounds(np.concatenate([own, fused, truth]), grid)
        mosaic, extent = background(pyramid, bounds)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own_err = np.array([p.error_m for p in track.photos])
    fused_err = track.errors_m()
    outliers = sum(q.candidate is None for q in track.points)
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4), constrained_layout=True)
    panels = (
        (axes[0], own, f"each photo alone: median error {np.median(own_err):.0f} m", False),
        (axes[1], fused, f"the capture fused: median error {np.median(fused_err):.0f} m ({outliers} frames judged outliers)", True),
    )
    for ax, xy, title, joined in panels:
        ax.imshow(mosaic, extent=extent, interpolation="bilinear")
        for (x0, y0), (x1, y1) in zip(xy, truth):
            ax.plot([x0, x1], [y0, y1], color=ERROR, lw=0.7, alpha=0.9, zorder=2)
        ax.plot(truth[:, 0], truth[:, 1], "-o", color=TRUTH, lw=2, ms=3, zorder=3, label="true path")
        if joined:
            ax.plot(xy[:, 0], xy[:, 1], "-o", color=FUSED, lw=2.2, ms=4, mec="white", mew=0.6, zorder=4, label="fused track")
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=14, color=PHOTO, edgecolors="white", linewidths=0.5, zorder=4, label="per-photo answer")
        ax.plot([], [], color=ERROR, lw=0.7, label="error")
        ax.set_xlim(bounds[0], bounds[2])
        ax.set_ylim(bounds[1], bounds[3])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=11)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
        _scale_bar(ax, bounds)
    span_s = times[-1] - times[0]
    fig.suptitle(f"capture {name}: {len(rows)} test photos over {span_s:.0f} s, localized one by one and as one track", fontsize=12)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    plt.close(fig)
    Image.open(buffer).convert("RGB").quantize(256).save(out, optimize=True)  # a palette PNG: a third of the size
    return (
        f"capture {name}: {len(rows)} photos, median error {np.median(own_err):.1f} m alone, "
        f"{np.median(fused_err):.1f} m fused ({outliers} outliers, fusion {track.fusion_s * 1000:.0f} ms)"
    )


def _square_bounds(xy: np.ndarray, grid) -> tuple[float, float, float, float]:
    """A square around the points with a margin, at least 8 terminal cells a side, moved inside the
    region where it fits (no blank beyond the imagery's edge)."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    half = min(max((hi - lo).max() * 0.55, 4 * grid.terminal_m), grid.side_m / 2)
    minx, miny, maxx, maxy = grid.bounds
    centre = np.clip((lo + hi) / 2, [minx + half, miny + half], [maxx - half, maxy - half])
    return (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)


def _scale_bar(ax, bounds: tuple[float, float, float, float]) -> None:
    """A round length (about a fifth of the frame) in the bottom-left corner."""
    side = bounds[2] - bounds[0]
    length = max((v for v in (5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000) if v <= side / 5), default=side / 5)
    x0, y0 = bounds[0] + side * 0.04, bounds[1] + side * 0.05
    ax.plot([x0, x0 + length], [y0, y0], color="white", lw=3, solid_capstyle="butt", zorder=5)
    ax.text(x0 + length / 2, y0 + side * 0.015, f"{length:g} m", color="white", ha="center", va="bottom", fontsize=9, zorder=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEMO / "model", help="run folder or checkpoint (default: the demo's)")
    parser.add_argument(
        "--city", type=Path, default=DEMO / "city", help="city directory with pyramid.h5 and split.csv (default: the demo's)"
    )
    parser.add_argument(
        "--capture", default=None, metavar="SEQUENCE_ID", help="the capture to draw (default: the longest among the test photos)"
    )
    parser.add_argument(
        "--candidates", type=int, default=None, help="candidates per photo the fusion chooses among (default: localize_track's)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "track_vs_photos.png")
    args = parser.parse_args(argv)
    for path in (args.model, args.city):
        if not path.exists():
            sys.exit(f"{path}: no such folder; run `make demo` first, or pass --model and --city")
    try:
        print(make_figure(args.model, args.city, args.capture, args.out, args.candidates))
    except ZoomlocError as exc:
        sys.exit(f"make_track_figure: {exc}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
