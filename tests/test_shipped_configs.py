"""Every config the repository ships loads as what it is: a typo in one would surface only in a run of hours."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO  # tests/ is on sys.path under pytest

from data_prep.synth import SynthCityConfig
from zoomloc.core.config import load_yaml
from zoomloc.pipelines.benchmark import KINDS, BenchmarkConfig, _equal_budget
from zoomloc.pipelines.demo import DemoConfig
from zoomloc.training.trainer import load_run_config

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _kind(path: Path) -> str:
    """What a config file is: the demo's, a city's (cities/, quick/city.yaml), a benchmark's (both runs named)
    or a run's. Each loader refuses keys it does not know, so a file taken for the wrong kind fails."""
    if path == REPO / "configs" / "demo.yaml":
        return "demo"
    if path.parent.name == "cities" or path.name == "city.yaml":
        return "city"
    return "benchmark" if {"zoom", "retrieval"} <= set(yaml.safe_load(path.read_text())) else "run"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_loads(path):
    kind = _kind(path)
    if kind == "run":
        load_run_config(path)
    elif kind == "benchmark":
        cfg = load_yaml(BenchmarkConfig, path)
        runs = {k: path.parent / getattr(cfg, k) for k in KINDS}
        _equal_budget({k: load_run_config(p) for k, p in runs.items()}, runs)  # refuses unequal budgets
    elif kind == "demo":
        cfg = load_yaml(DemoConfig, path)
        for name in (cfg.city, cfg.model, cfg.retrieval):
            assert (path.parent / name).is_file(), name
    else:
        SynthCityConfig.from_yaml(path)
