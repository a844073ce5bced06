"""``zoomloc evaluate``: how well, how fast and at what memory a model localizes a split.

Accuracy is measured on every photo of the split, batched; latency on single queries (photo
decoding, street encoder, decoding), as a user would see it. Writes ``metrics.json`` (the
schema below), ``errors.csv`` (one row per query, the references' errors beside the model's) and ``error_cdf.png``
beside it::

    {"model": "zoom" | "retrieval", "split": "test", "n_queries": N,
     "beam": B,                         # zoom only
     "recall_at_1": {"25": %, "40": %, "50": %, "100": %}, "recall_at_5": {"50": %, "100": %},
     "recall_at_1_ci95": {"25": [low %, high %], ...},  # 95 % bootstrap interval, resampling
     "recall_at_1_ci95_resamples": "captures" | "queries",  # whole captures where photos share one
     "median_error_m": m, "mean_error_m": m,
     "step_accuracy": [%, ...],         # zoom only: free-running, per level
     "by_beam": {"1": {"recall_at_1": {...}, "median_error_m": m}, "4": {...}},  # zoom only
     "teacher_forced": {"step_accuracy": [%, ...], "true_child_rank": [r, ...]},  # zoom only
     "latency_ms": {"p50": ms, "p95": ms}, "peak_rss_mb": MB,
     "index_build_s": s,      # embedding every pyramid view (as timed when the view cache was made;
                              # retrieval: plus building its database)
     "references": {"nearest_photo": {...}, "nearest_photo_trained": {...}, "random": {...}},
                              # zoomloc.evaluation.references, same photos: the nearest training photo by
                              # the initial and by the trained street encoder (not on the train split)
     "map_ablation": {"seed": 0, "recall_at_1": {...}, "median_error_m": m,
                      "teacher_forced": {...}},  # the views shuffled among each level's cells
     "fused": {"recall_at_1": {...}, "median_error_m": m, "truth_among_candidates": {...},
               "captures_mostly_within_50m": %, ...},  # with --fuse captures: zoomloc.evaluation.tracks
     "with_photos": {"config": {"neighbours": k, "temperature": t, "weight": w, "heading_deg": a, "rerank": K,
                                "local_head": bool}, "photos": M,
                     "val_recall_at_1_50": %, "fit_s": s, "recall_at_1": {...}, "recall_at_5": {...},
                     "median_error_m": m, "fused": {...}, "lookup": {"recall_at_1": {...}, "median_error_m": m}}}
                              # with --with-photos: the model and its M training photos as witnesses
                              # together (zoomloc.inference.photo_witness), their weight, heading limit
                              # and re-ranking (plain maps or through the local head) fitted on val

The references put the model's figures in context: the random cell is the floor, the nearest
training photo the rival that needs no map (:mod:`zoomloc.evaluation.references`).

``metrics.json`` is written last: where it exists, the other two are complete.

Both kinds go through one :class:`~zoomloc.inference.localize.Localizer`, so they are measured by the
same code: a retrieval model's answer is its search's top cell, its top 5 the five best cells.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from zoomloc.core.atomic import atomic_path, write_text
from zoomloc.core.errors import InputError
from zoomloc.data.samples import Samples
from zoomloc.data.street_cache import CacheViews
from zoomloc.evaluation.metrics import RECALL_AT_1_M, summarize_errors
from zoomloc.evaluation.references import REFERENCE_LABELS, references
from zoomloc.evaluation.tracks import FUSE_CHOICES, fused_accuracy
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import geodesic_m
from zoomloc.inference.localization import Localization
from zoomloc.inference.localize import Localizer
from zoomloc.inference.photo_witness import with_training_photos
from zoomloc.models.checkpoint import read_info
from zoomloc.models.embeddings import pyramid_identity

LATENCY_QUERIES = 100  # single queries timed (after a few warm-ups); accuracy uses all
WARMUP = 3
COMPARED_BEAMS = (1, 4)  # a zoom model's R@1 at each of these beam widths: does a wider search pay?
ABLATION_SEED = 0  # the permutation of the views in the map ablation


@dataclass(frozen=True)
class EvalReport:
    metrics: dict[str, Any]
    metrics_path: Path
    warning: str | None = None  # why these figures may flatter the model (see :func:`split_warning`)

    def describe(self) -> str:
        m = self.metrics
        r1 = "  ".join(f"{d} m: {v:5.1f}%" for d, v in m["recall_at_1"].items())
        r5 = "  ".join(f"{d} m: {v:5.1f}%" for d, v in m["recall_at_5"].items())
        how = f" (beam {m['beam']})" if "beam" in m else ""
        lines = [
            f"{m['model']} model on {m['n_queries']} {m['split']} photos{how}",
            f"  Recall@1  {r1}",
            f"  Recall@5  {r5}",
            f"  error     median {m['median_error_m']:.1f} m, mean {m['mean_error_m']:.1f} m",
        ]
        if "by_beam" in m:
            lines.append(
                "  by beam   R@1 within 50 / 100 m: "
                + ", ".join(f"beam {b} {v['recall_at_1']['50']:.1f} / {v['recall_at_1']['100']:.1f}%" for b, v in m["by_beam"].items())
            )
        if "step_accuracy" in m:
            lines.append(f"  steps     free-running accuracy per level: {', '.join(f'{a:.1f}%' for a in m['step_accuracy'])}")
            tf = m["teacher_forced"]
            ranks = ", ".join(f"{r:.1f}" for r in tf["true_child_rank"])
            lines.append(
                f"            from the true parent: {', '.join(f'{a:.1f}%' for a in tf['step_accuracy'])} (true child's mean rank {ranks})"
            )
        if "map_ablation" in m:
            a = m["map_ablation"]
            lines.append(
                f"  shuffled  R@1 within 50 / 100 m {a['recall_at_1']['50']:.1f} / {a['recall_at_1']['100']:.1f}% with the views "
                f"shuffled among each level's cells (the map's share of the accuracy)"
                + (
                    f"; from the true parent: {', '.join(f'{v:.1f}%' for v in a['teacher_forced']['step_accuracy'])}"
                    if "teacher_forced" in a
                    else ""
                )
            )
        if "fused" in m:
            f = m["fused"]
            fused = "  ".join(f"{d} m: {v:5.1f}%" for d, v in f["recall_at_1"].items())
            lines += [
                f"  fused     Recall@1  {fused}  (each capture's photos as one track, {f['candidates']} candidates each)",
                f"            median {f['median_error_m']:.1f} m; {f['captures_mostly_within_50m']:.1f}% of {f['n_captures']} captures "
                f"within 50 m for most photos; truth among the candidates within 100 m for {f['truth_among_candidates']['100']:.1f}%; "
                f"fusion {f['fusion_ms_per_photo']:.2f} ms per photo",
            ]
        if "with_photos" in m:
            w, c = m["with_photos"], m["with_photos"]["config"]
            recall = " / ".join(f"{w['recall_at_1'][d]:.1f}" for d in ("25", "50", "100"))
            fused = " / ".join(f"{w['fused']['recall_at_1'][d]:.1f}" for d in ("25", "50", "100")) if "fused" in w else None
            lines.append(
                f"  + photos  R@1 within 25 / 50 / 100 m {recall}%{f', fused {fused}%' if fused else ''}, median error "
                f"{w['median_error_m']:.1f} m: with its {w['photos']} training photos as a second witness (weight "
                f"{c['weight']:g}, temperature {c['temperature']:g}, {c['neighbours']} neighbours, {photo_lookup(c)}; "
                f"val {w['val_recall_at_1_50']:.1f}% within 50 m)"
            )
            if "lookup" in w:
                lookup = " / ".join(f"{w['lookup']['recall_at_1'][d]:.1f}" for d in ("25", "50", "100"))
                lines.append(f"            the photo it looks up alone: R@1 within 25 / 50 / 100 m {lookup}%")
        for name, ref in m.get("references", {}).items():
            recall = " / ".join(f"{ref['recall_at_1'][d]:.1f}" for d in ("25", "50", "100"))
            lines.append(
                f"  {REFERENCE_LABELS.get(name, name)}: R@1 within 25 / 50 / 100 m {recall}%, median error {ref['median_error_m']:.1f} m"
            )
        return "\n".join(
            [
                *([f"warning: {self.warning}"] if self.warning else []),
                *lines,
                f"  latency   p50 {m['latency_ms']['p50']:.1f} ms, p95 {m['latency_ms']['p95']:.1f} ms per query; "
                f"peak memory {m['peak_rss_mb']:.0f} MB; index built in {m['index_build_s']:.1f} s",
                f"wrote {self.metrics_path} (+ errors.csv, error_cdf.png)",
            ]
        )


def evaluate_run(
    city_dir: str | os.PathLike,
    model: str | os.PathLike,
    *,
    split: str = "test",
    beam: int = 1,
    out: str | os.PathLike,
    with_references: bool = True,
    fuse: str | None = None,
    photos: bool = False,
    progress: bool = True,
) -> EvalReport:
    """Evaluate the model of ``model`` (run folder or checkpoint) on ``split`` of ``city_dir``, and the
    references (:mod:`zoomloc.evaluation.references`) on the same photos unless ``with_references`` is off;
    with ``fuse="captures"``, also each capture's photos fused as one track (:mod:`zoomloc.evaluation.tracks`);
    with ``photos``, also the model with the city's training photos as a second witness (:func:`with_photos`)."""
    if beam < 1:
        raise InputError(f"--beam must be at least 1, got {beam}")
    if fuse is not None and fuse not in FUSE_CHOICES:
        raise InputError(f"--fuse must be one of {', '.join(FUSE_CHOICES)}, got {fuse!r}")
    city = CityDir(city_dir)
    out = Path(out)
    loc = Localizer.load(model, city.pyramid_path, progress=progress)
    samples = Samples.from_city(city, split, loc.model.grid)
    street = loc.embed_samples(samples, progress=progress)
    best, metrics = accuracy(loc, street, samples, beam)
    errors = np.array([r.error_m for r in best])
    has_beam = loc.model.has_beam
    metrics = {"model": loc.model.kind, "split": split, **({"beam": beam} if has_beam else {}), **metrics}
    if has_beam:  # the evaluated beam is decoded already; the others once more
        decoded = {str(beam): {"recall_at_1": metrics["recall_at_1"], "median_error_m": metrics["median_error_m"]}}
        others = by_beam(loc, street, samples, [b for b in COMPARED_BEAMS if b != beam])
        metrics["by_beam"] = dict(sorted({**decoded, **others}.items(), key=lambda item: int(item[0])))
    metrics["map_ablation"] = map_ablation(loc, street, samples, beam)
    model_errors = {}
    if fuse is not None:
        metrics["fused"], model_errors["fused"] = fused_accuracy(loc, street, samples)
    info = read_info(model)
    if photos:
        metrics["with_photos"], photo_errors = with_photos(loc, model, city, street, samples, beam, fuse, progress)
        model_errors.update(photo_errors)
    metrics["latency_ms"] = _latency_ms(loc, samples, beam)
    metrics["peak_rss_mb"] = peak_rss_mb()
    metrics["index_build_s"] = loc.index_build_s
    metrics["pyramid"] = pyramid_identity(city.pyramid_path)
    reference_errors: dict[str, np.ndarray] = {}
    if with_references:
        metrics["references"], reference_errors = references(
            city,
            loc.model.grid,
            loc.model,
            samples,
            split=split,
            cache_views=CacheViews.of_info(info),
            initial_weights=info.get("encoder_weights"),
            workers=2,
            progress=progress,
        )
    warning = split_warning(info, city, split)

    table = pd.DataFrame(
        {
            "image_id": samples.image_ids,
            "true_lon": samples.lon,
            "true_lat": samples.lat,
            "pred_lon": [r.lon for r in best],
            "pred_lat": [r.lat for r in best],
            "error_m": errors,
            **{f"{name}_error_m": e for name, e in {**model_errors, **reference_errors}.items()},
        }
    )
    with atomic_path(out.parent / "errors.csv") as tmp:
        table.to_csv(tmp, index=False)
    plot_error_cdfs(
        {
            "": {
                metrics["model"]: errors,
                **{f"{metrics['model']} {name.replace('_', ' ')}": e for name, e in model_errors.items()},
                **{name.replace("_", " "): e for name, e in reference_errors.items()},
            }
        },
        out.parent / "error_cdf.png",
    )
    write_text(out, json.dumps(metrics, indent=2) + "\n")
    return EvalReport(metrics, out, warning)


def photo_lookup(config: dict[str, Any]) -> str:
    """How the photo witness looks its photos up, in words: the heading limit and the re-ranking (fits kept
    before either was fitted have neither)."""
    limit, rerank = config.get("heading_deg"), config.get("rerank", 0)
    facing = "any heading" if limit is None else f"facing within {limit:g}°"
    through = " through the head fitted across captures" if config.get("local_head", False) else ""
    return f"{facing}, the best {rerank} re-ranked by their maps{through}" if rerank else facing


def split_warning(info: dict[str, Any], city: CityDir, split: str) -> str | None:
    """A warning when the model trained on these very photos under another split of them.

    Its training photos may then be among the evaluated ones; the benchmark and the demo refuse
    such a run, a user evaluating by hand is told.
    """
    if "photos" not in info or city.changed_since(info) != ("split",):
        return None
    return (
        f"the model was trained on another split of these photos ({city.split_csv} changed since): "
        f"some {split} photos may be training photos"
    )


def accuracy(loc: Localizer, street: torch.Tensor, samples: Samples, beam: int = 1) -> tuple[list[Localization], dict[str, Any]]:
    """Free-running localization of ``samples`` from their street embeddings: results and accuracy metrics.

    Recall@1 and errors come from the best path of a beam of ``beam`` (retrieval: the most
    similar cell); Recall@5 from the top 5 of a beam of at least 5 (the 5 most similar cells);
    the model's index adds its own figures (a zoom model: step accuracies).
    """
    truths = list(zip(samples.lon, samples.lat))
    ids, clues = list(samples.image_ids), loc.clues_of(samples)
    best = loc.localize_embeddings(street, ids, beam=beam, topk=1, truths=truths, clues=clues)
    top5 = loc.localize_embeddings(street, ids, beam=beam, topk=5, truths=truths, clues=clues)  # the search widens to 5
    errors = np.array([r.error_m for r in best])
    top5_errors = np.full((len(top5), 5), np.inf)  # a search may give fewer (answers merged): those count as misses
    for row, r in zip(top5_errors, top5):
        row[: len(r.candidates)] = geodesic_m([c.lon for c in r.candidates], [c.lat for c in r.candidates], r.true_lon, r.true_lat)
    metrics = summarize_errors(errors, top5_errors, samples.captures)
    metrics.update(loc.index.diagnostics(street, samples.paths, np.array([r.actions for r in best])))
    return best, metrics


def map_ablation(loc: Localizer, street: torch.Tensor, samples: Samples, beam: int) -> dict[str, Any]:
    """What the map is worth to the model: its accuracy on ``samples`` with the views shuffled among the
    cells of each level (seeded: :data:`ABLATION_SEED`, :meth:`MapIndex.shuffled`), beside the real one.

    A model that matches photos with the map fails when each cell shows another cell's view; one that
    reads the views only as fingerprints of cells it memorised fails too; one that ignores them does
    not. Every view is still a real view of the city at its scale. With the teacher-forced step
    accuracies it tells how much of the accuracy the views carry (the demo's zoom fell from 68 to 29 %
    within 100 m, issue 23).
    """
    shuffled = copy.copy(loc)  # the same model, photos' embeddings and settings over the shuffled index
    shuffled.index = loc.index.shuffled(ABLATION_SEED)
    _, metrics = accuracy(shuffled, street, samples, beam)
    kept = ("recall_at_1", "recall_at_1_ci95", "median_error_m", "step_accuracy", "teacher_forced")
    return {"seed": ABLATION_SEED, **{k: metrics[k] for k in kept if k in metrics}}


def with_photos(
    loc: Localizer,
    model: str | os.PathLike,
    city: CityDir,
    street: torch.Tensor,
    samples: Samples,
    beam: int,
    fuse: str | None,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The model with the city's training photos as a second witness (:mod:`zoomloc.inference.photo_witness`),
    fitted on the val photos: the same accuracy (and, with ``fuse``, the fused accuracy) on ``samples``.
    Returns the ``with_photos`` section of ``metrics.json`` and its errors by column name."""
    both, witness = with_training_photos(loc, model, city, beam=beam, progress=progress)
    best, metrics = accuracy(both, street, samples, beam)
    section = {**witness.to_json(), **{k: metrics[k] for k in ("recall_at_1", "recall_at_1_ci95", "recall_at_5", "median_error_m")}}
    lookup = both.model.grid.to_lonlat(*both.index.lookup_xy(street, both.clues_of(samples)).T)
    lookup_summary = summarize_errors(geodesic_m(*lookup, samples.lon, samples.lat))
    section["lookup"] = {k: lookup_summary[k] for k in ("recall_at_1", "median_error_m")}
    errors = {"with_photos": np.array([r.error_m for r in best])}
    if fuse is not None:
        section["fused"], errors["with_photos_fused"] = fused_accuracy(both, street, samples)
    return section, errors


def by_beam(loc: Localizer, street: torch.Tensor, samples: Samples, beams: list[int]) -> dict[str, dict[str, Any]]:
    """Recall@1 and median error of the best path of each beam width in ``beams``."""
    truths = list(zip(samples.lon, samples.lat))
    out = {}
    for beam in beams:
        best = loc.localize_embeddings(street, list(samples.image_ids), beam=beam, topk=1, truths=truths)
        summary = summarize_errors(np.array([r.error_m for r in best]))
        out[str(beam)] = {"recall_at_1": summary["recall_at_1"], "median_error_m": summary["median_error_m"]}
    return out


def _latency_ms(loc: Localizer, samples: Samples, beam: int) -> dict[str, float]:
    """Per-query wall time of ``Localizer.localize`` on single photos (p50, p95)."""
    paths = samples.image_paths[: WARMUP + LATENCY_QUERIES]
    times = []
    for i, path in enumerate(paths):
        start = time.perf_counter()
        loc.localize([path], beam=beam, topk=1)
        if i >= WARMUP or len(paths) <= WARMUP:
            times.append(1000 * (time.perf_counter() - start))
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB) since it started its program, or since it was forked.

    Linux's VmHWM (``/proc/self/status``) belongs to the running program and starts again at a fork
    (from what the child holds then: for the benchmark's evaluations, the imports of the server they
    are forked from); ``getrusage``'s ``ru_maxrss`` also keeps what the process held before ``exec`` —
    the benchmark's training peak — so it is only the fallback elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plot_error_cdfs(panels: dict[str, dict[str, np.ndarray]], png: Path) -> None:
    """Cumulative share of queries within each error: a panel per title of ``panels``, a curve per
    model of the panel, thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, errors) in zip(axes[0], panels.items()):
        for name, e in errors.items():
            e = np.sort(np.asarray(e))
            ax.step(np.maximum(e, 0.1), np.arange(1, len(e) + 1) / len(e) * 100, where="post", label=name)
        for d in RECALL_AT_1_M:
            ax.axvline(d, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("error (m, geodesic)")
        ax.set_ylabel("queries within error (%)")
        ax.set_ylim(0, 100)
        ax.set_title(title, fontsize=10)
        ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
