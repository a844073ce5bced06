"""The comparison the paper makes, on any city, under three split protocols (``zoomloc benchmark``).

One command, end to end: build the city's pyramid; then for each protocol (``sequence``,
``photo``, ``area``: :mod:`data_prep.split`) split the photos, train the zoom model and the
retrieval baseline with **the same budget** (the same number of optimizer steps and the same
batch size, checked — the two run configs must agree on both), evaluate both on the test split
beside the references (the random cell and the nearest training photo, :mod:`zoomloc.evaluation.references`),
and write

- ``results.json``: ``{"protocols": {protocol: {"zoom": metrics, "retrieval": metrics,
  "nearest_photo": metrics, "random": metrics, "test_cells_with_training_photos": [%, …],
  (each model's metrics also hold ``nearest_photo_trained``: the nearest photo by its trained street encoder)
  "train_time_s": {…}, "city": path}}, "headline": protocol, "config": …, "budget": …,
  "machine": …, "stage_s": {stage: s}, "wall_time_s": s, "reused": […]}`` (``stage_s``: each
  stage's seconds in the call that ran it, kept in ``stage_s.json``) (each ``metrics`` as
  ``zoomloc evaluate`` writes it);
- ``report.md``: the protocols side by side, then each one's full table with the zoom − retrieval
  margins (the paper's next to ``photo``, the protocol it measured), its level table and its
  targets, met or missed by how much;
- ``error_cdf.png``: the error distributions, a panel per protocol.

The city lives in ``OUT/city`` (or ``--city``); each protocol in ``OUT/<protocol>/``: its city
folder ``city/`` shares the imagery, photos, pyramid and caches by relative links
(:meth:`~zoomloc.geo.citydir.CityDir.sharing`) and holds its own split, beside its runs ``zoom/`` and
``retrieval/``. Each is an ordinary city or run folder for every other command. A second call
reuses whatever is finished, and an interrupted training resumes. Each model is evaluated in a
process of its own (:func:`alone`), so that its peak memory is its own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from data_prep.split import PROTOCOLS, Protocol, SplitConfig
from zoomloc.core.atomic import write_text
from zoomloc.core.config import load_yaml
from zoomloc.core.errors import ConfigError
from zoomloc.data.samples import Samples
from zoomloc.evaluation.evaluate import evaluate_run, photo_lookup, plot_error_cdfs
from zoomloc.evaluation.metrics import RECALL_AT_1_M, RECALL_AT_5_M
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import ZoomGrid
from zoomloc.geo.pyramid import PyramidReader, PyramidSpec
from zoomloc.pipelines.stages import Stages
from zoomloc.training.trainer import RunConfig, load_run_config

T = TypeVar("T")
KINDS = ("zoom", "retrieval")
COLUMNS = ("zoom", "retrieval", "nearest_photo", "random")
TRAINED_REFERENCE = "nearest_photo_trained"  # each model's own: the nearest photo by its trained street encoder
MEASURES = {  # what each protocol's test photos ask of a model
    "sequence": "other captures of the same streets",
    "photo": "new photos of a learned city, often beside a training photo of the same capture (the paper's)",
    "area": "places no training photo comes near (generalization)",
    "given": "the dataset's own test photos (its validation CSV for Just Zoom In's)",
}
# Just Zoom In, Table 1 (DC): autoregressive zooming vs Sample4Geo, Recall@1 within d metres,
# measured on a random tenth of the city's photos: the `photo` protocol.
PAPER_R1 = {"zoom": {"50": 66.31, "100": 80.93}, "retrieval": {"50": 60.81, "100": 71.30}}
PAPER_PROTOCOL: Protocol = "photo"
TARGET_SEQUENCE_ZOOM_R1_100 = 60.0
TARGET_SEQUENCE_TRAINED_NEAREST_R1_25 = 20.0  # place recognition across captures, by the zoom's trained street encoder
TARGET_AREA_OVER_RANDOM = 3.0  # on new areas, each model this many times the random cell within 100 m
STAGE_TIMES = "stage_s.json"  # OUT/: each stage's seconds, kept across calls


@dataclass(frozen=True)
class BenchmarkConfig:
    """A benchmark: the city (generated when no ``--city`` is given), its pyramid, the split protocols and
    their shared settings, the two runs.

    ``split`` holds what the protocols share (fractions, seed) and the ``area`` protocol's blocks and
    buffer; each protocol sets ``by`` itself. ``city``, ``zoom`` and ``retrieval`` are config files
    relative to this config's folder. The first protocol is the headline. ``photos`` also measures each
    model with its training photos as a second witness (:mod:`zoomloc.inference.photo_prior`).
    """

    city: str = "cities/bench.yaml"
    protocols: tuple[Protocol, ...] = ("sequence", "photo", "area")
    split: SplitConfig = field(default_factory=SplitConfig)
    pyramid: PyramidSpec = field(default_factory=PyramidSpec)
    zoom: str = "zoom.yaml"
    retrieval: str = "retrieval.yaml"
    beam: int = 1  # the zoom model's beam at evaluation (1: greedy, as the paper)
    photos: bool = True

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError("beam must be at least 1")
        if not self.protocols or len(set(self.protocols)) != len(self.protocols) or not set(self.protocols) <= set(PROTOCOLS):
            raise ValueError(f"protocols must be distinct ones of {', '.join(PROTOCOLS)}")
        if self.split.by != SplitConfig().by:
            raise ValueError("split.by: each protocol of `protocols` sets it; leave it out")


@dataclass(frozen=True)
class BenchmarkResult:
    out: Path
    results: dict[str, Any]
    report: list[str]

    def describe(self) -> str:
        return "\n".join([*self.report, f"wrote {self.out / 'results.json'}, report.md and error_cdf.png"])


def run_benchmark(
    config: str | os.PathLike, out: str | os.PathLike, city_dir: str | os.PathLike | None = None, *, progress: bool = True
) -> BenchmarkResult:
    """Run (or complete) the benchmark of ``config`` into ``out``, on ``city_dir`` or the config's synthetic city."""
    config, out = Path(config), Path(out)
    cfg = load_yaml(BenchmarkConfig, config)
    runs = {kind: config.parent / getattr(cfg, kind) for kind in KINDS}
    run_cfgs = {kind: load_run_config(path) for kind, path in runs.items()}
    budget = _equal_budget(run_cfgs, runs)
    city = CityDir(city_dir if city_dir is not None else out / "city")
    start = time.perf_counter()
    stages = Stages()
    stages.city(city, None if city_dir is not None else config.parent / cfg.city, cfg.pyramid, progress)
    with PyramidReader(city.pyramid_path) as pyr:
        grid = pyr.grid

    protocols, errors = {}, {}
    for protocol in cfg.protocols:
        protocols[protocol], errors[protocol] = _protocol(
            stages, city.sharing(out / protocol / "city", split=protocol == "given"), out / protocol, cfg, protocol, runs, grid, progress
        )
    stage_s = _stage_seconds(out / STAGE_TIMES, stages)
    for protocol, r in protocols.items():
        r["train_time_s"] = {kind: stage_s[name] for kind in KINDS if (name := f"train {kind} ({protocol})") in stage_s}
    results = {
        "protocols": protocols,
        "headline": cfg.protocols[0],
        "config": {"file": str(config), **asdict(cfg), "runs": {k: asdict(c) for k, c in run_cfgs.items()}},
        "city": str(city.root),
        "budget": budget,
        "machine": machine(),
        "stage_s": stage_s,  # each stage's seconds, in the call that ran it
        "wall_time_s": time.perf_counter() - start,  # this call's; stages in "reused" ran in earlier calls
        "reused": stages.reused,
    }
    write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    write_text(out / "report.md", report_markdown(results))
    plot_error_cdfs({f"{p}: {MEASURES[p].split(' (')[0]}": e for p, e in errors.items()}, out / "error_cdf.png")
    return BenchmarkResult(out, results, stages.report)


def _protocol(
    stages: Stages,
    city: CityDir,
    out: Path,
    cfg: BenchmarkConfig,
    protocol: Protocol,
    runs: dict[str, Path],
    grid: ZoomGrid,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One protocol: split ``city`` by it, train and evaluate both models in ``out``; its results and errors."""
    stages.split(city, replace(cfg.split, by=protocol), name=f"split by {protocol}")
    results: dict[str, Any] = {}
    errors: dict[str, np.ndarray] = {}
    for kind in KINDS:
        run = out / kind
        stages.model(f"train {kind} ({protocol})", city, runs[kind], run, progress)
        metrics_path = run / "test" / "metrics.json"
        # One beam for both: a search without one ignores it. Each evaluation measures the references: the
        # initial encoder's nearest photo and the random cell are the same for both (the first model's are
        # kept), the nearest photo by the trained street encoder is each model's own.
        evaluation = partial(
            alone,
            evaluate_run,
            city.root,
            run,
            split="test",
            beam=cfg.beam,
            out=metrics_path,
            fuse="captures",
            photos=cfg.photos,
            progress=progress,
        )
        stages.run(f"evaluate {kind} ({protocol})", metrics_path.is_file(), evaluation)
        results[kind] = json.loads(metrics_path.read_text())
        table = pd.read_csv(run / "test" / "errors.csv")
        errors[kind] = table["error_m"].to_numpy()
        for column, name in (("fused", "fused"), ("with_photos", "+ photos")):
            if f"{column}_error_m" in table:
                errors[f"{kind} {name}"] = table[f"{column}_error_m"].to_numpy()
        for name, reference in results[kind].pop("references", {}).items():
            if name == TRAINED_REFERENCE:
                results[kind][name], errors[f"nearest photo ({kind}'s encoder)"] = reference, table[f"{name}_error_m"].to_numpy()
            elif name not in results:
                results[name], errors[name.replace("_", " ")] = reference, table[f"{name}_error_m"].to_numpy()
    test, train = Samples.from_city(city, "test", grid), Samples.from_city(city, "train", grid)
    results["test_cells_with_training_photos"] = cells_with_training_photos(train, test, grid)
    results["city"] = str(city.root)
    return results, errors


def _stage_seconds(path: Path, stages: Stages) -> dict[str, float]:
    """Every stage's seconds, in the call that ran it: those of earlier calls (``path``) updated with this
    call's, and written back, so that a report drawn by a later call still times the whole benchmark."""
    seconds = json.loads(path.read_text()) if path.is_file() else {}
    seconds.update(stages.seconds)
    write_text(path, json.dumps(seconds, indent=2) + "\n")
    return seconds


def alone(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` (an evaluation: :func:`evaluate_run`) in a process of its own, so that its peak
    memory is its own.

    A process's peak resident memory never goes down: measured in the benchmark's process, the
    second model's figure would be the first one's (or training's) peak. A process forked by a
    server that has only imported ``fn``'s module (``forkserver``) starts clean of the benchmark's
    memory without paying the imports again for each of a benchmark's six models (4–20 s each on 2
    cores, torch's mostly: the quick benchmark 72 → 50 s back to back); its peak counts the library
    pages it touches, not every page the imports mapped (the quick city's zoom 920 MB spawned, 640
    forked). Unlike a ``multiprocessing.Pool`` worker it may start data-loader workers; it is
    terminated if the benchmark is interrupted.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([fn.__module__])
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        future = pool.submit(fn, *args, **kwargs)
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


def _paper_margin(d: str) -> float:
    return round(PAPER_R1["zoom"][d] - PAPER_R1["retrieval"][d], 1)


def targets(protocol: str, results: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """The project's targets for ``protocol``'s results: (what, measured, needed, strictly above)."""
    z, r, nearest, rnd = (results[c]["recall_at_1"] for c in COLUMNS)
    margins = [(f"zoom − retrieval at {d} m ≥ {_paper_margin(d):+.1f} points", z[d] - r[d], _paper_margin(d), False) for d in ("50", "100")]
    above_nearest = [(f"zoom above the nearest photo at {d} m", z[d], nearest[d], True) for d in ("50", "100")]
    if protocol == PAPER_PROTOCOL:
        paper = [
            (f"zoom R@1 within {d} m ≥ {PAPER_R1['zoom'][d]:.1f} %, the paper's", z[d], PAPER_R1["zoom"][d], False) for d in ("50", "100")
        ]
        return paper + margins + above_nearest
    if protocol == "sequence":
        trained = results["zoom"].get(TRAINED_REFERENCE)
        place = (
            [
                (
                    f"nearest photo by the zoom's trained street encoder, R@1 within 25 m ≥ {TARGET_SEQUENCE_TRAINED_NEAREST_R1_25:.0f} %",
                    trained["recall_at_1"]["25"],
                    TARGET_SEQUENCE_TRAINED_NEAREST_R1_25,
                    False,
                )
            ]
            if trained
            else []
        )
        return (
            margins
            + above_nearest[1:]
            + place
            + [
                (f"zoom R@1 within 100 m ≥ {TARGET_SEQUENCE_ZOOM_R1_100:.0f} %", z["100"], TARGET_SEQUENCE_ZOOM_R1_100, False),
            ]
        )
    times = TARGET_AREA_OVER_RANDOM
    return [
        (f"{name} ≥ {times:.0f} × the random cell at 100 m", m["100"], times * rnd["100"], False)
        for name, m in (("zoom", z), ("retrieval", r))
    ]


FUSION_GAIN_POINTS = 10.0  # fused zoom R@1 within 100 m over its per-photo figure, on `photo` (and `sequence` once features hold)
FUSION_TIME_SHARE = 0.10  # fusion's time per photo against a single query's latency


def ablation_targets(protocol: str, results: dict[str, Any]) -> list[tuple]:
    """The map ablation's target: on new captures and new areas the zoom must read the map, so shuffled
    views must cost it at least half of its R@1 within 100 m."""
    z = results["zoom"]
    if protocol not in ("sequence", "area") or "map_ablation" not in z:
        return []
    real, shuffled = z["recall_at_1"]["100"], z["map_ablation"]["recall_at_1"]["100"]
    return [("shuffled views cost the zoom at least half of its R@1 within 100 m (shuffled, %)", shuffled, real / 2, False, True)]


def fusion_targets(protocol: str, results: dict[str, Any]) -> list[tuple]:
    """The capture fusion's targets for ``protocol``, where its figures were measured."""
    z, r = results["zoom"], results["retrieval"]
    if "fused" not in z or "fused" not in r:
        return []
    per, fused = z["recall_at_1"]["100"], z["fused"]["recall_at_1"]["100"]
    out = []
    if protocol == PAPER_PROTOCOL:
        out += [
            (f"fused zoom R@1 within 100 m ≥ per photo + {FUSION_GAIN_POINTS:.0f} points", fused, per + FUSION_GAIN_POINTS, False),
            (
                f"fused zoom − fused retrieval at 100 m ≥ {_paper_margin('100'):+.1f} points",
                fused - r["fused"]["recall_at_1"]["100"],
                _paper_margin("100"),
                False,
            ),
        ]
    elif protocol == "sequence":
        out.append(("fused zoom R@1 within 100 m never below per photo", fused, per, False))
    share = z["fused"]["fusion_ms_per_photo"] / z["latency_ms"]["p50"]
    out.append(
        (f"fusion's time per photo ≤ {FUSION_TIME_SHARE:.0%} of a query's latency (%)", 100 * share, 100 * FUSION_TIME_SHARE, False, True)
    )
    return out


def _target_line(what: str, measured: float, needed: float, strict: bool, at_most: bool = False) -> str:
    """A target, met or missed by how much: ``measured`` at least ``needed`` (above it, if ``strict``), or at most it."""
    if at_most:
        met, how = measured <= needed, f"**not met**, over by {measured - needed:.1f} points"
    else:
        met, how = measured > needed if strict else measured >= needed, f"**not met**, short by {needed - measured:.1f} points"
    how = "met" if met else how
    return f"- {how}: {what} (measured {measured:.1f})"


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


def _pair(m: dict[str, Any]) -> str:
    """Recall@1 within 50 / 100 m, as the overview tables give it."""
    return f"{m['recall_at_1']['50']:.1f} / {m['recall_at_1']['100']:.1f}"


def _overview(results: dict[str, Any]) -> list[str]:
    """The protocols side by side: Recall@1 within 50 / 100 m of each model and reference, the margins."""

    lines = [
        "| protocol | its test photos | photos | zoom | retrieval | nearest photo | random cell | zoom − retrieval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for protocol, r in results["protocols"].items():
        z, ret = r["zoom"]["recall_at_1"], r["retrieval"]["recall_at_1"]
        name = f"**{protocol}**" if protocol == results["headline"] else protocol
        lines.append(
            f"| {name} | {MEASURES[protocol]} | {r['zoom']['n_queries']} | "
            + " | ".join(_pair(r[c]) for c in COLUMNS)
            + f" | {z['50'] - ret['50']:+.1f} / {z['100'] - ret['100']:+.1f} |"
        )
    paper = {kind: {"recall_at_1": PAPER_R1[kind]} for kind in KINDS}
    lines.append(
        f"| paper, DC ({PAPER_PROTOCOL} protocol) | a random tenth of a 10 km region's photos | – | {_pair(paper['zoom'])} | "
        f"{_pair(paper['retrieval'])} (Sample4Geo) | – | – | {_paper_margin('50'):+.1f} / {_paper_margin('100'):+.1f} |"
    )
    return lines


def _fused_overview(results: dict[str, Any]) -> list[str]:
    """Per photo against each capture's test photos fused as one track, every protocol where fusion was measured."""

    lines: list[str] = []
    fused = [(p, r) for p, r in results["protocols"].items() if all("fused" in r[kind] for kind in KINDS)]
    if fused:
        lines += [
            "Each capture's test photos fused as one track (zoomloc.inference.fusion; under `photo`, a tenth of each capture):",
            "",
            "| protocol | zoom per photo | zoom fused | retrieval per photo | retrieval fused | fused zoom − fused retrieval |",
            "|---|---|---|---|---|---|",
        ]
        for protocol, r in fused:
            zf, rf = r["zoom"]["fused"]["recall_at_1"], r["retrieval"]["fused"]["recall_at_1"]
            lines.append(
                f"| {protocol} | "
                + " | ".join(_pair(m) for kind in KINDS for m in (r[kind], r[kind]["fused"]))
                + f" | {zf['50'] - rf['50']:+.1f} / {zf['100'] - rf['100']:+.1f} |"
            )
        lines.append("")
    return lines


def _photos_overview(results: dict[str, Any]) -> list[str]:
    """Each model alone against the model with its training photos as a second witness, per photo and fused."""
    measured = [(p, r) for p, r in results["protocols"].items() if all("with_photos" in r[kind] for kind in KINDS)]
    if not measured:
        return []
    lines = [
        "Each model with its training photos as a second witness (zoomloc.inference.photo_prior: the most similar training "
        "photos at their GPS positions beside the model's answers, their weight fitted on the val photos), per photo → fused:",
        "",
        "| protocol | zoom | zoom + photos | retrieval | retrieval + photos | nearest photo | zoom + photos − nearest photo |",
        "|---|---|---|---|---|---|---|",
    ]
    for protocol, r in measured:
        both = {kind: r[kind]["with_photos"] for kind in KINDS}
        cells = [f"{_pair(m)} → {_pair(m['fused'])}" if "fused" in m else _pair(m) for kind in KINDS for m in (r[kind], both[kind])]
        zp, near = both["zoom"]["recall_at_1"], r["nearest_photo"]["recall_at_1"]
        margin = f"{zp['50'] - near['50']:+.1f} / {zp['100'] - near['100']:+.1f}"
        lines.append(f"| {protocol} | " + " | ".join(cells) + f" | {_pair(r['nearest_photo'])} | {margin} |")
    return [*lines, ""]


def _recall_rows(zoom: dict[str, Any], retrieval: dict[str, Any], how: str, row) -> list[str]:
    """A protocol table's R@1 rows, with intervals and the zoom − retrieval margin, of both models measured ``how``."""
    return [
        row(
            f"R@1 within {d} m, {how} (%)",
            [_with_interval(zoom, "recall_at_1", d), _with_interval(retrieval, "recall_at_1", d), "–", "–"],
            f"{zoom['recall_at_1'][d] - retrieval['recall_at_1'][d]:+.1f}",
        )
        for d in map(str, RECALL_AT_1_M)
    ]


def _photo_rows(z: dict[str, Any], ret: dict[str, Any], row) -> list[str]:
    """The protocol table's rows for each model with its training photos, where they were measured."""
    if "with_photos" not in z or "with_photos" not in ret:
        return []
    zp, rp = z["with_photos"], ret["with_photos"]
    return [
        *_recall_rows(zp, rp, "with the training photos", row),
        row(
            "R@1 within 50 / 100 m, with the training photos, fused over captures (%)",
            [_pair(m["fused"]) if "fused" in m else "–" for m in (zp, rp)] + ["–", "–"],
        ),
        row(
            "R@1 within 25 / 50 / 100 m, the training photo the witness looks up, alone (%)",
            [" / ".join(f"{m['lookup']['recall_at_1'][d]:.1f}" for d in ("25", "50", "100")) if "lookup" in m else "–" for m in (zp, rp)]
            + ["–", "–"],
        ),
        row(
            "the photos' weight / temperature / lookup (fitted on val)",
            [f"{m['config']['weight']:g} / {m['config']['temperature']:g} / {photo_lookup(m['config'])}" for m in (zp, rp)] + ["–", "–"],
        ),
    ]


def _fused_rows(z: dict[str, Any], ret: dict[str, Any], row) -> list[str]:
    """The protocol table's rows for each capture's test photos fused as one track, where they were measured."""
    if "fused" not in z or "fused" not in ret:
        return []
    zf, rf = z["fused"], ret["fused"]
    return _recall_rows(zf, rf, "fused over captures", row) + [
        row("median error, fused (m)", [f"{m['median_error_m']:.1f}" for m in (zf, rf)] + ["–", "–"]),
        row(
            f"truth among the {zf['candidates']} candidates within 50 / 100 m (%)",
            [f"{m['truth_among_candidates']['50']:.1f} / {m['truth_among_candidates']['100']:.1f}" for m in (zf, rf)] + ["–", "–"],
        ),
        row("captures fused within 50 m for most photos (%)", [f"{m['captures_mostly_within_50m']:.1f}" for m in (zf, rf)] + ["–", "–"]),
        row("frames judged outliers (%)", [f"{m['outlier_share']:.1f}" for m in (zf, rf)] + ["–", "–"]),
        row(
            "fusion / candidate search (ms per photo)",
            [f"{m['fusion_ms_per_photo']:.2f} / {m['search_ms_per_photo']:.1f}" for m in (zf, rf)] + ["–", "–"],
        ),
    ]


def _trained_reference(m: dict[str, Any]) -> str:
    """A model's nearest photo by its trained street encoder, R@1 within 25 / 50 / 100 m; absent where it never trained."""
    if TRAINED_REFERENCE not in m:
        return "as the initial encoder's"
    return " / ".join(f"{m[TRAINED_REFERENCE]['recall_at_1'][d]:.1f}" for d in ("25", "50", "100"))


def _protocol_section(protocol: str, r: dict[str, Any]) -> list[str]:
    """One protocol's full table (both Recall@k, with intervals), its level table and its targets."""
    z, ret = r["zoom"], r["retrieval"]
    columns = [r[c] for c in COLUMNS]
    with_paper = protocol == PAPER_PROTOCOL

    def row(label: str, values: list[str], margin: str = "", paper: str = "") -> str:
        return f"| {label} | " + " | ".join(values) + f" | {margin} |" + (f" {paper} |" if with_paper else "")

    def recall(group: str, d: str) -> str:
        paper = f"{_paper_margin(d):+.1f}" if group == "recall_at_1" and d in PAPER_R1["zoom"] else ""
        margin = f"{z[group][d] - ret[group][d]:+.1f}"
        return row(f"R@{group[-1]} within {d} m (%)", [_with_interval(m, group, d) for m in columns], margin, paper)

    def measured(label: str, get) -> str:
        return row(label, [get(m) for m in (z, ret)] + ["–", "–"])

    t = r["train_time_s"]
    header = "| | zoom | retrieval | nearest photo | random cell | zoom − retrieval |" + (
        " paper (zoom − Sample4Geo) |" if with_paper else ""
    )
    return [
        f"## `{protocol}`: {MEASURES[protocol]}",
        "",
        f"{z['n_queries']} test photos; city folder `{r['city']}`.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
        *[recall("recall_at_1", str(d)) for d in RECALL_AT_1_M],
        *[recall("recall_at_5", str(d)) for d in RECALL_AT_5_M],
        *_fused_rows(z, ret, row),
        *_photo_rows(z, ret, row),
        *(
            [
                row(
                    "R@1 within 25 / 50 / 100 m, nearest photo by the model's trained street encoder (%)",
                    [_trained_reference(m) for m in (z, ret)] + ["–", "–"],
                )
            ]
            if any(TRAINED_REFERENCE in m for m in (z, ret))
            else []
        ),
        *(
            [
                row(
                    "R@1 within 50 / 100 m, views shuffled among the cells (%)",
                    [_pair(m["map_ablation"]) for m in (z, ret)] + ["–", "–"],
                )
            ]
            if all("map_ablation" in m for m in (z, ret))
            else []
        ),
        *[
            row(f"R@1 within {d} m, zoom with beam {b} (%)", [f"{v['recall_at_1'][d]:.1f}", "–", "–", "–"])
            for b, v in z.get("by_beam", {}).items()
            if int(b) != z.get("beam", 1)
            for d in ("50", "100")
        ],
        row("median error (m)", [f"{m['median_error_m']:.1f}" for m in columns]),
        measured("latency p50 / p95 (ms)", lambda m: f"{m['latency_ms']['p50']:.1f} / {m['latency_ms']['p95']:.1f}"),
        measured("peak memory (MB)", lambda m: f"{m['peak_rss_mb']:.0f}"),
        measured("index build (s)", lambda m: f"{m['index_build_s']:.1f}"),
        row("training time (min)", [f"{t[k] / 60:.1f}" if k in t else "?" for k in KINDS] + ["–", "–"]),
        "",
        *_levels_table(z, r.get("test_cells_with_training_photos")),
        "Targets (NOTES.md says what was tried where they are missed):",
        "",
        *[_target_line(*target) for target in (*targets(protocol, r), *fusion_targets(protocol, r), *ablation_targets(protocol, r))],
        "",
    ]


def report_markdown(results: dict[str, Any]) -> str:
    """``report.md``: the protocols side by side, then each one's tables and targets, the time and machine."""
    first = next(iter(results["protocols"].values()))
    m = results["machine"]
    stage_s = results["stage_s"]
    stages = ", ".join(f"{name} {s / 60:.1f}" for name, s in stage_s.items())
    return "\n".join(
        [
            f"# zoom vs retrieval on `{results['city']}`, by split protocol",
            "",
            f"Budget: {results['budget']}; zoom decoded with beam {first['zoom'].get('beam', 1)} (greedy, as the paper). "
            "Recall@1 within 50 / 100 m in percent; each protocol's section gives every figure with its 95 % "
            "bootstrap interval, so that a margin is read against its noise: the interval resamples whole test "
            "captures (sequences), whose photos share a camera, light and streets and succeed or fail together. "
            f"`{results['headline']}` is the headline.",
            "",
            *_overview(results),
            "",
            *_fused_overview(results),
            *_photos_overview(results),
            *[line for protocol, r in results["protocols"].items() for line in _protocol_section(protocol, r)],
            "## Time and machine",
            "",
            f"The stages took {sum(stage_s.values()) / 60:.1f} min in all, each timed in the call that ran it "
            f"(min): {stages}. This call's wall time {results['wall_time_s'] / 60:.1f} min"
            + (f"; reused from an earlier call: {', '.join(results['reused'])}." if results.get("reused") else "."),
            "",
            f"{m['platform']}, {m['cpu_count']} CPUs ({m['torch_threads']} torch threads), GPU: {m['cuda'] or 'none'}, "
            f"Python {m['python']}, torch {m['torch']}.",
            "",
        ]
    )
