"""Does a query cost the same on a small map and a large one? Zoom next to flat retrieval.

The zoom model's claim is that a query costs one street-encoder pass plus L small policy steps
per beam *whatever the size of the map*, while retrieval compares the photo with every terminal
cell. This prints, for regions of about 1, 4, 16, 64 and 100 km² with the same terminal cell,
the per-query latency (p50, p95) of zoom (beam 1 and 4) and of exact retrieval through the real
query path (``Localizer.localize`` on one PIL image at a time), the same for the search alone
(``Localizer.localize_embeddings`` on a precomputed street embedding, since the encoder pass is
the same for every map), and the memory each method must hold for the map; it checks the
targets of issue 5 (zoom p50 grows ≤ 1.5× from the smallest to the largest region, and stays
≤ 30 ms) and draws latency against area into a PNG.

Grids. The terminal cell is fixed at the paper's 39.0625 m (10 km / 4⁴). With k = 4 only
0.4, 6.25 and 100 km² are reachable (side 39 m · 4^L), so for each target area the grid takes
the k in 2..16 and L ≥ 2 whose k^L cells per side best match the target side (on a log scale;
equal k^L, as 4⁴ = 16² = 2⁸, goes to the k nearest the paper's 4). That gives 5², 7², 10², 14²
and 4⁴, areas within 10 % of the targets (the table states them). L ≥ 2 keeps every model a
zoom: L = 1 would be one flat k²-way choice. Note that the 100 km² grid is the only one with
4 levels, so the growth ratio compares 2 policy steps with 4: the honest worst case.

Nothing is trained or read from disk: the models are ``configs/zoom.yaml``'s and
``configs/retrieval.yaml``'s with untrained encoders (``weights: none``), and the view cache
is random embeddings of the encoder's width, shaped as ``zoomloc embed`` writes it (every
level's views plus the terminal context crops). Latency does not depend on the weights' values.
``topk`` is 1, as in ``zoomloc evaluate``'s latency. All regions are set up first and timed
query by query in a shuffled interleaved order, so that the load of a shared machine, which
changes over a run, weighs on every region alike rather than on whichever ran last.

Memory: ``map MB`` is computed from the tensor shapes — what the method needs for the map:
zoom the float32 views of levels 0..L-1 (plus the terminal crops when the policy refines),
retrieval its database of terminal cells projected to ``retrieval.dim``. ``RSS Δ MB`` is the
measured growth of the process's resident memory (current, from /proc, not the monotonic
peak) from before the cache is made to after the method's Localizer is built, before any query
(zoom's first, then retrieval's, which adds its database): it includes the whole random cache
this script makes for both (``Localizer.load`` reads only the tables a model uses). It is
approximate: it counts whatever else the process allocated meanwhile.

Threads: 2 (the target's 2 cores; ``--threads``). On a machine busy with other work, every
parallel op of 2 threads waits for the descheduled one's next time slice, and a query takes
seconds instead of milliseconds; the header prints the load average, and ``--threads 1`` shows
what the code itself costs there.

    .venv/bin/python benchmarks/query_scaling.py [--queries 50] [--quick] [--out PNG]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from zoomloc.core.atomic import atomic_path
from zoomloc.geo.grid import ZoomGrid
from zoomloc.inference.localize import Localizer
from zoomloc.models.embeddings import SatEmbeddings
from zoomloc.models.registry import ModelConfig, build_model
from zoomloc.training.trainer import load_run_config

REPO = Path(__file__).resolve().parents[1]
CENTRE = (8.54, 47.38)  # Zürich, lon/lat
TERMINAL_M = 10_000 / 4**4  # the paper's terminal cell: 39.0625 m
AREAS_KM2 = (1, 4, 16, 64, 100)
QUICK_AREAS_KM2 = (1, 4)
K_RANGE = range(2, 17)
PAPER_K = 4
THREADS = 2
WARMUP = 3
PHOTO_SIZE = (256, 128)  # width, height: the synthetic cities' street photos
TARGET_GROWTH = 1.5
TARGET_P50_MS = 30.0


@dataclass(frozen=True)
class Method:
    name: str
    model: str  # "zoom" or "retrieval": which Localizer
    beam: int


METHODS = (Method("zoom beam 1", "zoom", 1), Method("zoom beam 4", "zoom", 4), Method("retrieval", "retrieval", 1))


@dataclass(frozen=True)
class Row:
    target_km2: float
    grid: ZoomGrid
    method: Method
    total_ms: tuple[float, float]  # p50, p95
    search_ms: tuple[float, float]
    map_mb: float
    rss_mb: float | None


def choose_grid(target_km2: float) -> ZoomGrid:
    """The grid around :data:`CENTRE` with terminal cell :data:`TERMINAL_M` nearest ``target_km2`` (see the docstring)."""
    per_side = math.sqrt(target_km2) * 1000 / TERMINAL_M
    k, levels = min(
        ((k, levels) for k in K_RANGE for levels in range(2, math.ceil(math.log(4 * per_side, k)) + 1)),
        key=lambda kl: (abs(math.log(kl[0] ** kl[1] / per_side)), abs(kl[0] - PAPER_K)),
    )
    lon, lat = CENTRE
    return ZoomGrid.covering((lon - 1e-4, lat - 1e-4, lon + 1e-4, lat + 1e-4), k=k, levels=levels, terminal_m=TERMINAL_M)


def random_cache(grid: ZoomGrid, dim: int, seed: int = 0) -> SatEmbeddings:
    """A view cache of ``grid`` with random embeddings: levels 0..L-1 and the terminal crops."""
    gen = torch.Generator().manual_seed(seed)
    levels = [torch.randn(grid.n_cells(level), dim, generator=gen) for level in range(grid.levels)]
    return SatEmbeddings(grid, levels, torch.randn(grid.n_cells(grid.levels), dim, generator=gen))


def n_views(grid: ZoomGrid) -> int:
    """Embeddings in the cache: every view of levels 0..L-1 and every terminal context crop."""
    return sum(grid.n_cells(level) for level in range(grid.levels + 1))


def map_mb(loc: Localizer) -> float:
    """What the method needs in memory for the map, from tensor shapes (see the docstring)."""
    return loc.index.embedding_bytes / 2**20


def rss_mb() -> float | None:
    """The process's current resident memory (Linux /proc), or None where there is none."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def model_configs() -> dict[str, ModelConfig]:
    """The benchmark's zoom and retrieval models, with untrained encoders (no weights to read)."""
    out = {}
    for kind in ("zoom", "retrieval"):
        cfg = load_run_config(REPO / "configs" / f"{kind}.yaml").model
        out[kind] = replace(cfg, encoder=replace(cfg.encoder, weights="none"))
    return out


def query_photos(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    w, h = PHOTO_SIZE
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


@dataclass(frozen=True)
class Region:
    """One region's grid and a Localizer per model kind over one view cache."""

    target_km2: float
    grid: ZoomGrid
    locs: dict[str, Localizer]
    rss_mb: dict[str, float | None]  # RSS growth once each kind's Localizer was built


def set_up(target_km2: float, configs: dict[str, ModelConfig]) -> Region:
    """Both models on the grid nearest ``target_km2``, sharing one random cache; no query run yet."""
    grid = choose_grid(target_km2)
    models = {kind: build_model(cfg, grid) for kind, cfg in configs.items()}
    before = rss_mb()
    sat = random_cache(grid, models["zoom"].encoders.num_features)
    locs, rss = {}, {}
    for kind, model in models.items():
        locs[kind] = Localizer(model, sat)
        after = rss_mb()
        rss[kind] = None if before is None or after is None else after - before
    return Region(target_km2, grid, locs, rss)


Probe = tuple[int, Method, str]  # region index, method, "total" or "search"


def localize_photo(loc: Localizer, method: Method, photos: list[Image.Image], i: int) -> None:
    """The whole query: photo ``i`` → localization."""
    loc.localize([photos[i]], beam=method.beam, topk=1)


def localize_embedding(loc: Localizer, method: Method, emb: Tensor, i: int) -> None:
    """The query after the street encoder: street embedding ``i`` → localization."""
    loc.localize_embeddings(emb[i : i + 1], ["q"], beam=method.beam, topk=1)


def probes(regions: list[Region], photos: list[Image.Image]) -> dict[Probe, Callable[[int], None]]:
    """Every timed call: total and search-only, for each region and method."""
    out: dict[Probe, Callable[[int], None]] = {}
    for r, region in enumerate(regions):
        emb = {kind: loc.embed_photos(photos) for kind, loc in region.locs.items()}
        for method in METHODS:
            loc = region.locs[method.model]
            out[(r, method, "total")] = partial(localize_photo, loc, method, photos)
            out[(r, method, "search")] = partial(localize_embedding, loc, method, emb[method.model])
    return out


def time_interleaved(calls: dict[Probe, Callable[[int], None]], n: int, seed: int = 0) -> dict[Probe, tuple[float, float]]:
    """p50 and p95 wall time (ms) of each call over queries 0..n-1, after :data:`WARMUP` untimed rounds.

    Each round runs query i through every call, in a new random order: a change in the load of
    a shared machine then slows every region alike instead of biasing the growth ratio.
    """
    rng = random.Random(seed)
    order = list(calls)
    times: dict[Probe, list[float]] = {key: [] for key in order}
    for i in range(-WARMUP, n):
        rng.shuffle(order)
        for key in order:
            start = time.perf_counter()
            calls[key](i % n)
            if i >= 0:
                times[key].append(1000 * (time.perf_counter() - start))
    return {key: (float(np.percentile(t, 50)), float(np.percentile(t, 95))) for key, t in times.items()}


def measure(regions: list[Region], photos: list[Image.Image]) -> list[Row]:
    """One row per region and method, in that order."""
    ms = time_interleaved(probes(regions, photos), len(photos))
    return [
        Row(region.target_km2, region.grid, method, ms[(r, method, "total")], ms[(r, method, "search")],
            map_mb(region.locs[method.model]), region.rss_mb[method.model])
        for r, region in enumerate(regions)
        for method in METHODS
    ]  # fmt: skip


# ---------------------------------------------------------------------- output
HEADER = (
    f"{'target':>8} {'achieved':>9} {'k':>3} {'L':>2} {'cell m':>6} {'cells':>7} {'views':>7}  {'method':<12}"
    f" {'total p50':>9} {'p95':>6} {'search p50':>10} {'p95':>6} {'map MB':>7} {'RSS Δ MB':>8}"
)


def format_row(r: Row) -> str:
    g = r.grid
    rss = "n/a" if r.rss_mb is None else f"{r.rss_mb:.0f}"
    return (
        f"{r.target_km2:>5g}km² {g.side_m**2 / 1e6:>6.2f}km² {g.k:>3} {g.levels:>2} {g.terminal_m:>6.2f}"
        f" {g.n_cells(g.levels):>7} {n_views(g):>7}  {r.method.name:<12}"
        f" {r.total_ms[0]:>9.1f} {r.total_ms[1]:>6.1f} {r.search_ms[0]:>10.2f} {r.search_ms[1]:>6.2f} {r.map_mb:>7.1f} {rss:>8}"
    )


def target_checks(rows: list[Row]) -> list[str]:
    """The issue's two targets, per zoom beam, as met / not met with the numbers."""
    lines = []
    for method in (m for m in METHODS if m.model == "zoom"):
        mine = [r for r in rows if r.method == method]
        first, last = mine[0], mine[-1]
        growth = last.total_ms[0] / first.total_ms[0]
        search_growth = last.search_ms[0] / first.search_ms[0]
        worst = max(mine, key=lambda r: r.total_ms[0])
        lines += [
            f"{method.name}: p50 growth {first.target_km2:g} → {last.target_km2:g} km²: {growth:.2f}× total "
            f"({first.total_ms[0]:.1f} → {last.total_ms[0]:.1f} ms; search only {search_growth:.2f}×), "
            f"target ≤ {TARGET_GROWTH}×: {'met' if growth <= TARGET_GROWTH else 'NOT met'}",
            f"{method.name}: worst p50 {worst.total_ms[0]:.1f} ms (at {worst.target_km2:g} km²), "
            f"target ≤ {TARGET_P50_MS:g} ms: {'met' if worst.total_ms[0] <= TARGET_P50_MS else 'NOT met'}",
        ]
    return lines


def plot(rows: list[Row], png: Path) -> None:
    """Latency (total solid, search-only dashed) and map memory against achieved area, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for i, method in enumerate(METHODS):
        mine = [r for r in rows if r.method == method]
        area = [r.grid.side_m**2 / 1e6 for r in mine]
        colour = f"C{i}"
        ax_t.plot(area, [r.total_ms[0] for r in mine], "o-", color=colour, label=f"{method.name}, total")
        ax_t.plot(area, [r.search_ms[0] for r in mine], "s--", color=colour, label=f"{method.name}, search only")
        if method.beam == 1:  # the map's memory does not depend on the beam
            ax_m.plot(area, [r.map_mb for r in mine], "o-", color=colour, label=method.model)
    for r in rows[:: len(METHODS)]:  # each region's grid, under its point
        ax_m.annotate(f"{r.grid.k}^{r.grid.levels}", (r.grid.side_m**2 / 1e6, r.map_mb), textcoords="offset points",
                      xytext=(0, -12), ha="center", fontsize=7)  # fmt: skip
    ax_t.axhline(TARGET_P50_MS, color="grey", lw=0.8, ls=":", label=f"target {TARGET_P50_MS:g} ms")
    ax_t.set_yscale("log")
    ax_t.set_ylabel(f"p50 latency per query (ms; torch threads: {torch.get_num_threads()})")
    ax_m.set_yscale("log")
    ax_m.set_ylabel("map memory needed (MB; zoom: grid k^L)")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log")
        ax.set_xlabel(f"region area (km², terminal cell {TERMINAL_M:g} m)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=None, help="timed queries per method and area (default 50, --quick 5)")
    parser.add_argument("--quick", action="store_true", help=f"only {' and '.join(map(str, QUICK_AREAS_KM2))} km², few queries")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS}: the target's 2 cores)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "query_scaling.png", help="the PNG to write")
    args = parser.parse_args(argv)
    queries = args.queries if args.queries is not None else 5 if args.quick else 50
    if queries < 1 or args.threads < 1:
        parser.error("--queries and --threads must be positive")

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f}: other processes slow every figure); "
          f"{queries} timed queries after {WARMUP} warm-up, single photos of {PHOTO_SIZE[0]}×{PHOTO_SIZE[1]} px, topk 1; "
          f"untrained configs/zoom.yaml and configs/retrieval.yaml")  # fmt: skip
    configs = model_configs()
    photos = query_photos(queries)
    with torch.no_grad():
        regions = [set_up(target, configs) for target in (QUICK_AREAS_KM2 if args.quick else AREAS_KM2)]
        rows = measure(regions, photos)
    print(HEADER)
    for row in rows:
        print(format_row(row))
    print("latency in ms per query (total: photo → localization; search: street embedding → localization)")
    for line in target_checks(rows):
        print(line)
    plot(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
