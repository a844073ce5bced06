"""``benchmarks/capture_adversary.py`` trains its heads on a split city's maps and prints figures that add up."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO  # tests/ is on sys.path under pytest

LINE = re.compile(
    r"^adversary (\S+)\s+val nearest photo ([\d.]+) / ([\d.]+) / ([\d.]+) % cells named ([\d.]+) %"
    r"\s+test nearest photo ([\d.]+) / ([\d.]+) / ([\d.]+) % cells named ([\d.]+) %",
    re.M,
)


def _probe(city, model) -> str:
    argv = [sys.executable, str(REPO / "benchmarks" / "capture_adversary.py"), str(city), "--model", str(model)]
    argv += ["--steps", "4", "--batch", "16", "--adversary", "0", "1"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout


def test_the_probe_prints_each_adversarys_nearest_photo_and_named_cells(trained_run, tiny_city):
    out = _probe(tiny_city, trained_run)
    assert re.search(r"^\d+ training photos in \d+ captures; cells named: \d+ of \d+ m$", out, re.M)
    rows = LINE.findall(out)
    assert [r[0] for r in rows] == ["0", "1"]
    for row in rows:
        val, test = [float(v) for v in row[1:5]], [float(v) for v in row[5:9]]
        for r25, r50, r100, named in (val, test):
            assert 0 <= r25 <= r50 <= r100 <= 100 and 0 <= named <= 100  # recall grows with the radius
    assert LINE.findall(_probe(tiny_city, trained_run)) == rows  # seeded: the same heads, the same figures
