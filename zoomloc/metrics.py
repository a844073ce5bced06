"""Localization quality: Recall@1 within d metres and error statistics, geodesic throughout.

The paper's figures are Recall@1 within 25/40/50/100 m (the share of queries whose prediction
lies within d metres of the truth, in percent) and the median error; Recall@5 counts a query
when any of its top-5 candidates is within d. Each Recall@1 comes with its 95 % bootstrap
interval over the queries, so that a margin between two models is read against its noise.
"""

from __future__ import annotations

import numpy as np

RECALL_AT_1_M = (25, 40, 50, 100)
RECALL_AT_5_M = (50, 100)
BOOTSTRAP_SAMPLES = 2000


def recall_within(errors_m: np.ndarray, thresholds: tuple[int, ...]) -> dict[str, float]:
    """Percent of queries with error ≤ d, for each d (``errors_m`` ``[N]``, or ``[N, K]``: any of K)."""
    errors_m = np.asarray(errors_m, dtype=float)
    best = errors_m if errors_m.ndim == 1 else errors_m.min(axis=1)
    return {str(d): float(100.0 * np.mean(best <= d)) if len(best) else 0.0 for d in thresholds}


def recall_interval(errors_m: np.ndarray, thresholds: tuple[int, ...], seed: int = 0) -> dict[str, list[float]]:
    """95 % bootstrap interval (percent) of Recall@1 within each d, the queries resampled with replacement.

    A resample's hit count is binomial in the query count and the observed hit rate, so it is
    drawn as such: the same distribution as resampling the queries, at no memory cost.
    """
    errors_m = np.asarray(errors_m, dtype=float)
    n, rng = len(errors_m), np.random.default_rng(seed)
    out = {}
    for d in thresholds:
        rates = 100.0 * rng.binomial(n, np.mean(errors_m <= d), BOOTSTRAP_SAMPLES) / n if n else np.zeros(1)
        out[str(d)] = [float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))]
    return out


def summarize_errors(errors_m: np.ndarray, topk_errors_m: np.ndarray | None = None) -> dict[str, object]:
    """The accuracy part of ``metrics.json`` from top-1 errors ``[N]`` (and top-k errors ``[N, K]``)."""
    errors_m = np.asarray(errors_m, dtype=float)
    out: dict[str, object] = {
        "n_queries": int(len(errors_m)),
        "recall_at_1": recall_within(errors_m, RECALL_AT_1_M),
        "recall_at_1_ci95": recall_interval(errors_m, RECALL_AT_1_M),
        "median_error_m": float(np.median(errors_m)) if len(errors_m) else float("nan"),
        "mean_error_m": float(np.mean(errors_m)) if len(errors_m) else float("nan"),
    }
    if topk_errors_m is not None:
        out["recall_at_5"] = recall_within(np.asarray(topk_errors_m)[:, :5], RECALL_AT_5_M)
    return out
