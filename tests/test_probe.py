"""``benchmarks/first_step_probe.py`` runs on a split city and prints figures that add up."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO  # tests/ is on sys.path under pytest


def test_probe_prints_both_classifiers_against_chance(tiny_city):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "first_step_probe.py"), str(tiny_city), "--cnn-steps", "3", "--size", "32", "64"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "first step: 16 cells" in out and "chance 6.2%" in out
    rows = {
        m[0]: [float(v) for v in m[1:]]
        for m in re.findall(r"^\s+(colour|cnn)\s+train\s+([\d.]+)%\s+test\s+([\d.]+)%\s+near\s+([\d.]+)%", out, re.M)
    }
    assert set(rows) == {"colour", "cnn"}
    for train, test, near in rows.values():
        assert 0 <= train <= 100 and 0 <= test <= near <= 100  # the true cell is one of the near ones
