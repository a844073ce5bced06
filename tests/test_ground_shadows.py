"""``benchmarks/ground_shadows.py``: a photo's ground, matched against the orthophoto, finds its place by the
orthophoto's own shadows, which the generator painted on every photo until each capture cast its own sun's
(the likeness the probe measures, and that it is gone)."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO  # tests/ is on sys.path under pytest


def test_the_ground_finds_its_place_by_the_orthophotos_shadows_more_often_than_by_another_suns():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ground_shadows.py"), "--city-config", str(REPO / "configs/quick/city.yaml"),
         "--frames", "30"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    assert "30 frames, ground 4-20 m ahead at 1 m" in out
    figures = {
        name.strip(): [float(v) for v in values.split(" / ")]
        for name, values in re.findall(r"^\s*(.+?): R@1 within 25 / 50 / 100 m ([\d. /]+) %", out, re.M)
    }
    assert len(figures) == 3 and all(0 <= v <= 100 for row in figures.values() for v in row)
    ortho, other = figures["the orthophoto's shadows (as the city's photos were)"], figures["another sun's shadows"]
    own = figures["the capture's own sun's (as the city's photos are)"]
    assert all(a <= b for a, b in zip(ortho, ortho[1:])), "recall grows with the radius"
    assert ortho[0] > other[0] + 10, "the orthophoto's shadows on the photos' ground give their place away"
    assert own[0] < ortho[0], "a capture's own shadows give its place away less than the orthophoto's did"
