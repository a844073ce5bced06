"""The comparison the paper makes, on any city: zoom versus contrastive retrieval (``zoomloc benchmark``).

One command, end to end: split the city by area, build its pyramid, train the zoom model and
the retrieval baseline with **the same budget** (the same number of optimizer steps and the
same batch size, checked — the two run configs must agree on both), evaluate both on the test
split, add a random-cell guess as the floor and the nearest-photo reference (each test photo at
the position of its most similar training photo, :mod:`zoomloc.nearest_photo`), and write

- ``results.json``: ``{"zoom": metrics, "retrieval": metrics, "nearest_photo": metrics, "random": metrics, "config": …,
  "train_time_s": {…}, "budget": …, "machine": …}`` (each ``metrics`` as ``zoomloc evaluate``
  writes it);
- ``report.md``: the table of both models' figures, the zoom − retrieval margins next to the
  paper's, and whether the project's targets are met;
- ``error_cdf.png``: the three error distributions.

Each model is evaluated in a process of its own (:func:`evaluate_alone`), so that its peak
memory is its own.

Runs live in ``OUT/zoom`` and ``OUT/retrieval``; a second call reuses whatever is finished, and
an interrupted training resumes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from data_prep.split import SplitConfig
from zoomloc.atomic import write_text
from zoomloc.citydir import CityDir
from zoomloc.config import load_yaml
from zoomloc.data import Samples
from zoomloc.errors import ConfigError
from zoomloc.evaluate import EvalReport, evaluate_run, plot_error_cdf
from zoomloc.grid import ZoomGrid, geodesic_m
from zoomloc.metrics import RECALL_AT_1_M, RECALL_AT_5_M, summarize_errors
from zoomloc.nearest_photo import nearest_photo_metrics
from zoomloc.pyramid import PyramidReader, PyramidSpec
from zoomloc.stages import Stages
from zoomloc.train import RunConfig, load_run_config

KINDS = ("zoom", "retrieval")
# Just Zoom In, Table 1 (DC): autoregressive zooming vs Sample4Geo, Recall@1 within d metres.
PAPER_R1 = {"zoom": {"50": 66.31, "100": 80.93}, "retrieval": {"50": 60.81, "100": 71.30}}
TARGET_ZOOM_R1_100 = 80.0


@dataclass(frozen=True)
class BenchmarkConfig:
    """A benchmark: the city (generated when no ``--city`` is given), its split and pyramid, the two runs.

    ``city``, ``zoom`` and ``retrieval`` are config files relative to this config's folder.
    """

    city: str = "cities/bench.yaml"
    split: SplitConfig = field(default_factory=SplitConfig)
    pyramid: PyramidSpec = field(default_factory=PyramidSpec)
    zoom: str = "zoom.yaml"
    retrieval: str = "retrieval.yaml"
    beam: int = 1  # the zoom model's beam at evaluation (1: greedy, as the paper)
    random_seed: int = 0

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError("beam must be at least 1")


@dataclass(frozen=True)
class BenchmarkResult:
    out: Path
    results: dict[str, Any]
    report: list[str]

    def describe(self) -> str:
        return "\n".join([*self.report, f"wrote {self.out / 'results.json'}, report.md and error_cdf.png"])


def run_benchmark(config: str | os.PathLike, out: str | os.PathLike, city_dir: str | os.PathLike | None = None, *, progress: bool = True) -> BenchmarkResult:
    """Run (or complete) the benchmark of ``config`` into ``out``, on ``city_dir`` or the config's synthetic city."""
    config, out = Path(config), Path(out)
    cfg = load_yaml(BenchmarkConfig, config)
    runs = {kind: config.parent / getattr(cfg, kind) for kind in KINDS}
    run_cfgs = {kind: load_run_config(path) for kind, path in runs.items()}
    budget = _equal_budget(run_cfgs, runs)
    city = CityDir(city_dir if city_dir is not None else out / "city")
    start = time.perf_counter()
    stages = Stages()
    stages.city(city, None if city_dir is not None else config.parent / cfg.city, cfg.split, cfg.pyramid, progress)

    times_path = out / "train_time_s.json"
    train_time = json.loads(times_path.read_text()) if times_path.is_file() else {}
    metrics: dict[str, dict[str, Any]] = {}
    errors: dict[str, np.ndarray] = {}
    for kind in KINDS:
        run = out / kind
        if stages.model(f"train {kind}", city, runs[kind], run, progress) is not None:
            train_time[kind] = stages.seconds[f"train {kind}"]
            write_text(times_path, json.dumps(train_time, indent=2) + "\n")
        metrics_path = run / "test" / "metrics.json"
        beam = cfg.beam if kind == "zoom" else 1
        stages.run(
            f"evaluate {kind}",
            metrics_path.is_file(),
            lambda: evaluate_alone(city.root, run, split="test", beam=beam, out=metrics_path, progress=progress),
        )
        metrics[kind] = json.loads(metrics_path.read_text())
        errors[kind] = pd.read_csv(run / "test" / "errors.csv")["error_m"].to_numpy()

    with PyramidReader(city.pyramid_path) as pyr:
        grid = pyr.grid
    test, train = Samples.from_city(city, "test", grid), Samples.from_city(city, "train", grid)
    metrics["random"], errors["random"] = random_cell_metrics(test, grid, cfg.random_seed)
    zoom_train = run_cfgs["zoom"].train
    metrics["nearest_photo"], errors["nearest photo"] = nearest_photo_metrics(
        city,
        run_cfgs["zoom"].model.encoder,
        train,
        test,
        cache_views=(zoom_train.augment, zoom_train.cache_views, zoom_train.seed),
        workers=zoom_train.workers,
        progress=progress,
    )
    results = {
        **metrics,
        "test_cells_with_training_photos": cells_with_training_photos(train, test, grid),
        "config": {"file": str(config), **asdict(cfg), "runs": {k: asdict(c) for k, c in run_cfgs.items()}},
        "city": str(city.root),
        "train_time_s": train_time,
        "budget": budget,
        "machine": machine(),
        "wall_time_s": time.perf_counter() - start,  # this call's; stages in "reused" ran in earlier calls
        "reused": stages.reused,
    }
    write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    write_text(out / "report.md", report_markdown(results))
    plot_error_cdf(errors, out / "error_cdf.png")
    return BenchmarkResult(out, results, stages.report)


def evaluate_alone(*args: Any, **kwargs: Any) -> EvalReport:
    """:func:`evaluate_run` in a fresh process, so that its peak memory is this model's own.

    A process's peak resident memory never goes down: measured in the benchmark's process, the
    second model's figure would be the first one's (or training's) peak. A spawned process
    starts clean (and, unlike a ``multiprocessing.Pool`` worker, may start data-loader workers);
    it is terminated if the benchmark is interrupted.
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(evaluate_run, *args, **kwargs)
        try:
            return future.result()
        except BaseException:
            for child in multiprocessing.active_children():
                child.terminate()
            raise


def _equal_budget(run_cfgs: dict[str, RunConfig], runs: dict[str, Path]) -> str:
    """The shared budget of the two runs (configs read from ``runs``), or a one-line error: a comparison on
    unequal budgets is no comparison."""
    z, r = run_cfgs["zoom"].train, run_cfgs["retrieval"].train
    if (z.steps, z.batch_size) != (r.steps, r.batch_size):
        raise ConfigError(
            f"zoom and retrieval must train with the same budget: {runs['zoom'].name} has {z.steps} steps × batch "
            f"{z.batch_size}, {runs['retrieval'].name} {r.steps} × {r.batch_size}",
            runs["retrieval"],
        )
    return f"equal optimizer steps ({z.steps}) and batch size ({z.batch_size})"


def random_cell_metrics(samples: Samples, grid: ZoomGrid, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """The floor: each query guesses terminal cells uniformly at random (5 of them for Recall@5)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, grid.n_cells(grid.levels), size=(len(samples), 5))
    lon, lat = grid.centre_lonlat_of_path(grid.path_of_cell(grid.levels, cells.ravel()))
    errors = geodesic_m(lon, lat, np.repeat(samples.lon, 5), np.repeat(samples.lat, 5)).reshape(-1, 5)
    return {"model": "random", "split": "test", **summarize_errors(errors[:, 0], errors)}, errors[:, 0]


def cells_with_training_photos(train: Samples, test: Samples, grid: ZoomGrid) -> list[float]:
    """Per level, the share (%) of test photos whose cell at that level holds a training photo.

    Where it is low, no model can have learned by heart which cell a photo belongs to: a step
    into such cells is right only if the model matches the photo with the map. An area split
    makes it fall to 0 below the size of its blocks.
    """
    shares = []
    for level in range(1, grid.levels + 1):
        seen = np.unique(grid.cell_of_path(train.paths[:, :level]))
        shares.append(float(100 * np.isin(grid.cell_of_path(test.paths[:, :level]), seen).mean()))
    return shares


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _levels_table(z: dict[str, Any], seen: list[float] | None) -> list[str]:
    """The zoom's steps level by level: free-running, from the true parent, and what the split leaves to memory."""
    levels = len(z["step_accuracy"])
    rows = [("free-running: path right down to this level (%)", [f"{a:.1f}" for a in z["step_accuracy"]])]
    if "teacher_forced" in z:
        tf = z["teacher_forced"]
        rows += [
            ("from the true parent: right child (%)", [f"{a:.1f}" for a in tf["step_accuracy"]]),
            ("from the true parent: true child's mean rank", [f"{r:.1f}" for r in tf["true_child_rank"]]),
        ]
    if seen is not None:
        rows.append(("test photos whose cell holds training photos (%)", [f"{v:.1f}" for v in seen]))
    return [
        "Zoom, level by level (a guess picks the right child 1 time in k² and ranks it (k² − 1) / 2 on average):",
        "",
        "| level | " + " | ".join(str(level + 1) for level in range(levels)) + " |",
        "|---|" + "---|" * levels,
        *[f"| {label} | " + " | ".join(values) + " |" for label, values in rows],
        "",
    ]


def _with_interval(metrics: dict[str, Any], group: str, d: str) -> str:
    """A recall in percent, with its 95 % bootstrap interval where the metrics hold one (Recall@1)."""
    interval = metrics.get(f"{group}_ci95", {}).get(d)
    value = f"{metrics[group][d]:.1f}"
    return f"{value} ({interval[0]:.1f}–{interval[1]:.1f})" if interval else value


def report_markdown(results: dict[str, Any]) -> str:
    """``report.md``: the comparison table, the margins next to the paper's, the targets."""
    z, r, rnd = results["zoom"], results["retrieval"], results["random"]
    nearest = results["nearest_photo"]
    columns = (z, r, nearest, rnd)

    def row(label: str, values: list[str], margin: str = "", paper: str = "") -> str:
        return f"| {label} | " + " | ".join(values) + f" | {margin} | {paper} |"

    def pct(group: str, d: str) -> str:
        margin = z[group][d] - r[group][d]
        paper = f"{PAPER_R1['zoom'][d] - PAPER_R1['retrieval'][d]:+.1f}" if group == "recall_at_1" and d in PAPER_R1["zoom"] else ""
        return row(f"R@{group[-1]} within {d} m (%)", [_with_interval(m, group, d) for m in columns], f"{margin:+.1f}", paper)

    def measured(label: str, fmt: str, get) -> str:
        return row(label, [fmt.format(get(m)) for m in (z, r)] + ["–", "–"])

    t = results["train_time_s"]
    lines = [
        f"# zoom vs retrieval on `{results['city']}`",
        "",
        f"{z['n_queries']} test queries; budget: {results['budget']}; zoom decoded with beam {z.get('beam', 1)}. "
        "Recall@1 with its 95 % bootstrap interval over the test photos in brackets.",
        "",
        "| | zoom | retrieval | nearest photo | random cell | zoom − retrieval | paper (zoom − Sample4Geo) |",
        "|---|---|---|---|---|---|---|",
        *[pct("recall_at_1", str(d)) for d in RECALL_AT_1_M],
        *[pct("recall_at_5", str(d)) for d in RECALL_AT_5_M],
        *[
            row(f"R@1 within {d} m, zoom with beam {b} (%)", [f"{v['recall_at_1'][d]:.1f}", "–", "–", "–"])
            for b, v in z.get("by_beam", {}).items()
            if int(b) != z.get("beam", 1)
            for d in ("50", "100")
        ],
        row("median error (m)", [f"{m['median_error_m']:.1f}" for m in columns]),
        measured("latency p50 / p95 (ms)", "{}", lambda m: f"{m['latency_ms']['p50']:.1f} / {m['latency_ms']['p95']:.1f}"),
        measured("peak memory (MB)", "{:.0f}", lambda m: m["peak_rss_mb"]),
        measured("index build (s)", "{:.1f}", lambda m: m["index_build_s"]),
        row("training time (min)", [f"{t[k] / 60:.1f}" if k in t else "?" for k in KINDS] + ["–", "–"]),
        "",
        *_levels_table(z, results.get("test_cells_with_training_photos")),
        "## Targets",
        "",
    ]
    checks = [
        ("zoom − retrieval at 50 m ≥ +5.5 points", z["recall_at_1"]["50"] - r["recall_at_1"]["50"] >= 5.5),
        ("zoom − retrieval at 100 m ≥ +9.6 points", z["recall_at_1"]["100"] - r["recall_at_1"]["100"] >= 9.6),
        (f"zoom R@1 within 100 m ≥ {TARGET_ZOOM_R1_100:.0f}%", z["recall_at_1"]["100"] >= TARGET_ZOOM_R1_100),
        ("both models beat the random cell at 100 m", min(z["recall_at_1"]["100"], r["recall_at_1"]["100"]) > rnd["recall_at_1"]["100"]),
    ]
    lines += [f"- {'met' if ok else '**not met**'}: {text}" for text, ok in checks]
    m = results["machine"]
    lines += [
        "",
        "## Machine",
        "",
        f"{m['platform']}, {m['cpu_count']} CPUs ({m['torch_threads']} torch threads), GPU: {m['cuda'] or 'none'}, "
        f"Python {m['python']}, torch {m['torch']}; this call's wall time {results['wall_time_s'] / 60:.1f} min"
        + (f" (reused from an earlier call: {', '.join(results['reused'])})." if results.get("reused") else "."),
        "",
    ]
    return "\n".join(lines)
