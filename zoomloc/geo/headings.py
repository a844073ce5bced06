"""Compass headings compared: the one place the wrap-around at north is handled."""

from __future__ import annotations

import numpy as np


def heading_gap_deg(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """The angle in degrees, 0 to 180, between compass headings ``a`` and ``b`` (broadcast; NaN where either is).

    359° and 1° are 2° apart, not 358°: every rule that pairs photos by the way they face (a place's
    positives, a lookup's heading limit) reads this, so that none of them splits north in two."""
    return np.abs((np.asarray(a, dtype=float) - np.asarray(b, dtype=float) + 180) % 360 - 180)
