"""Localization quality: Recall@1 within d metres and error statistics, geodesic throughout.

The paper's figures are Recall@1 within 25/40/50/100 m (the share of queries whose prediction
lies within d metres of the truth, in percent) and the median error; Recall@5 counts a query
when any of its top-5 candidates is within d. Each Recall@1 comes with its 95 % bootstrap
interval, so that a margin between two models is read against its noise. Where the queries come
in captures (sequences of one camera along the same streets), whole captures are resampled:
their photos succeed or fail together, and an interval over photos would be too narrow.
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


def recall_interval(
    errors_m: np.ndarray, thresholds: tuple[int, ...], groups: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0
) -> dict[str, list[float]]:
    """95 % bootstrap interval (percent) of Recall@1 within each d.

    Without capture ``groups`` (:func:`capture_groups`) the queries are resampled with
    replacement; a resample's hit count is binomial in the query count and the observed hit
    rate, so it is drawn as such, at no memory cost. With them, whole captures are resampled
    and a resample's recall is its hits over its queries.
    """
    errors_m = np.asarray(errors_m, dtype=float)
    n, rng = len(errors_m), np.random.default_rng(seed)
    out = {}
    for d in thresholds:
        hit = errors_m <= d
        if groups is not None:
            codes, sizes = groups
            hits = np.bincount(codes, weights=hit, minlength=len(sizes))
            rates = np.concatenate(
                [
                    _group_rates(hits, sizes, rng, min(_DRAWS_AT_ONCE, BOOTSTRAP_SAMPLES - i))
                    for i in range(0, BOOTSTRAP_SAMPLES, _DRAWS_AT_ONCE)
                ]
            )
        else:
            rates = 100.0 * rng.binomial(n, np.mean(hit), BOOTSTRAP_SAMPLES) / n if n else np.zeros(1)
        out[str(d)] = [float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))]
    return out


_DRAWS_AT_ONCE = 200  # resamples of captures drawn together: 200 × captures indices in memory


def _group_rates(hits: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """Recall (percent) of ``k`` resamples of the captures with replacement."""
    draws = rng.integers(0, len(sizes), size=(k, len(sizes)))
    return 100.0 * hits[draws].sum(1) / sizes[draws].sum(1)


def capture_groups(captures: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Each query's capture as codes 0..G-1 and the captures' sizes, or None where every query is
    its own capture (or none is given): then the queries are resampled one by one."""
    if captures is None or not n:
        return None
    codes = np.unique(captures, return_inverse=True)[1]
    sizes = np.bincount(codes)
    return (codes, sizes) if len(sizes) < n else None


def summarize_errors(
    errors_m: np.ndarray, topk_errors_m: np.ndarray | None = None, captures: np.ndarray | None = None
) -> dict[str, object]:
    """The accuracy part of ``metrics.json`` from top-1 errors ``[N]`` (and top-k errors ``[N, K]``);
    ``captures`` (a code per query) makes the intervals resample whole captures."""
    errors_m = np.asarray(errors_m, dtype=float)
    groups = capture_groups(captures, len(errors_m))
    out: dict[str, object] = {
        "n_queries": int(len(errors_m)),
        "recall_at_1": recall_within(errors_m, RECALL_AT_1_M),
        "recall_at_1_ci95": recall_interval(errors_m, RECALL_AT_1_M, groups),
        "recall_at_1_ci95_resamples": "queries" if groups is None else "captures",
        "median_error_m": float(np.median(errors_m)) if len(errors_m) else float("nan"),
        "mean_error_m": float(np.mean(errors_m)) if len(errors_m) else float("nan"),
    }
    if topk_errors_m is not None:
        out["recall_at_5"] = recall_within(np.asarray(topk_errors_m)[:, :5], RECALL_AT_5_M)
    return out
