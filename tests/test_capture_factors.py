"""``benchmarks/capture_factors.py`` renders the same places again, one factor changed, and its figures add up."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO  # tests/ is on sys.path under pytest


def test_the_probe_finds_every_identical_frame_and_fewer_of_the_changed_ones(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "capture_factors.py"), "--city-config", str(REPO / "configs/quick/city.yaml"),
         "--poses", "40", "--size", "32", "64", "--out", str(tmp_path / "factors.json")],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    assert "among 40 original frames (chance 2.50 %)" in out
    figures = json.loads((tmp_path / "factors.json").read_text())["recall_at_1"]["imagenet"]
    assert len(figures) == 14 and all(0 <= v <= 100 for v in figures.values())
    assert figures["identical (the check: 100 %)"] == 100.0  # the same photo is its own nearest: rows line up
    assert figures["every condition, moved 10 m"] < 100.0  # a changed photo is no copy
    printed = re.search(r"^\s+moved 20 m\s+([\d.]+)$", out, re.M)
    assert printed and float(printed.group(1)) == round(figures["moved 20 m"], 1)
