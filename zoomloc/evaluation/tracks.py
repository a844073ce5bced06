"""Fused accuracy: a split's photos localized capture by capture (``zoomloc evaluate --fuse captures``).

A user who holds a whole capture (a dashcam run, a phone walk) can localize it as one track
(:meth:`~zoomloc.inference.localize.Localizer.track_embeddings`). Here every capture's photos of
the split are fused in the order of their times, and the fused answers are scored like the
per-photo ones, with what tells where fusion gains and where it cannot: how often the truth is
among the candidates at all (fusion only chooses among them), the share of frames judged
outliers, and the share of captures whose track is right for most of its photos.

Under the ``photo`` protocol a capture's test photos are a random tenth of it, so the frames fused
lie further apart in time than a user's would, with training photos between them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from zoomloc.data.samples import Samples
from zoomloc.evaluation.metrics import RECALL_AT_5_M, recall_within, summarize_errors
from zoomloc.geo.grid import geodesic_m
from zoomloc.inference.captures import group_captures
from zoomloc.inference.fusion import FusionConfig
from zoomloc.inference.localize import TRACK_CANDIDATES, Localizer

FUSE_CHOICES = ("captures",)  # what `--fuse` groups photos by
MOSTLY_WITHIN_M = 50.0  # a capture's track is right when most of its photos are fused this close
UNTIMED_INTERVAL_S = 1.0  # frames of a capture whose metadata has no times: one a second, in file order


def fused_accuracy(
    loc: Localizer,
    street: torch.Tensor,
    samples: Samples,
    *,
    candidates: int = TRACK_CANDIDATES,
    fusion: FusionConfig | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Each capture of ``samples`` fused from its photos' street embeddings ``[N, D]``: the ``fused``
    section of ``metrics.json`` and the fused errors ``[N]`` (in the order of ``samples``)."""
    fusion = fusion or FusionConfig()
    ids, clues = list(samples.image_ids), loc.clues_of(samples)
    captures = group_captures(
        ids,
        [None if np.isnan(t) else float(t) for t in samples.times_s],
        [str(c) for c in samples.captures],
        interval_s=UNTIMED_INTERVAL_S,
        untimed="order",
    )
    fused = np.full(len(samples), np.nan)
    among = np.full((len(samples), candidates), np.inf)
    outliers, fusion_s = 0, 0.0
    start = time.perf_counter()
    for capture in captures:
        rows = np.array(capture.indices)
        track = loc.track_embeddings(
            street[rows],
            [ids[i] for i in rows],
            capture.times_s,
            capture=capture.name,
            candidates=candidates,
            truths=list(zip(samples.lon[rows], samples.lat[rows])),
            fusion=fusion,
            clues=clues[rows],
        )
        fused[rows] = track.errors_m()
        for row, photo in zip(rows, track.photos):
            c = photo.candidates
            among[row, : len(c)] = geodesic_m([x.lon for x in c], [x.lat for x in c], photo.true_lon, photo.true_lat)
        outliers += sum(p.candidate is None for p in track.points)
        fusion_s += track.fusion_s
    total_s = time.perf_counter() - start
    metrics = summarize_errors(fused, captures=samples.captures)
    sizes = np.array([len(c.indices) for c in captures])
    mostly = [np.mean(fused[list(c.indices)] <= MOSTLY_WITHIN_M) > 0.5 for c in captures]
    metrics.update(
        {
            "candidates": candidates,
            "speed_mps": fusion.speed_mps,
            "evidence": fusion.evidence,
            "n_captures": len(captures),
            "photos_per_capture": {"median": float(np.median(sizes)), "max": int(sizes.max())},
            "truth_among_candidates": recall_within(among, RECALL_AT_5_M),
            "outlier_share": float(100 * outliers / len(samples)),
            "captures_mostly_within_50m": float(100 * np.mean(mostly)),
            # The search for the candidates (a beam of `candidates`) and the fusion, per photo of the split.
            "search_ms_per_photo": float(1000 * (total_s - fusion_s) / len(samples)),
            "fusion_ms_per_photo": float(1000 * fusion_s / len(samples)),
        }
    )
    return metrics, fused
