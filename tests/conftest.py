"""Shared fixtures: where the real test data lives, and small generated inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/realdata beside the checkout (read-only, never copied into the repository).
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real orthophotos and street photos; the test is skipped when they are absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real test data not found at {REALDATA} (../shared/realdata beside the checkout)")
    return REALDATA


@pytest.fixture(scope="session")
def tiny_city(tmp_path_factory) -> Path:
    """A small synthetic city, split and pyramid built: the input of model tests.

    400 m square, 1200 photos of 128×64 px, 4×4 grid over 2 levels (25 m terminal cells). The
    split uses tiny blocks and no buffer so that validation photos have training neighbours:
    model tests check that training learns; the benchmark checks generalisation to new areas.
    """
    from dataclasses import replace

    from data_prep.split import SplitConfig, split_city
    from data_prep.synth import SynthCityConfig, synth_city
    from zoomloc.geo.pyramid import PyramidSpec, build_pyramid

    root = tmp_path_factory.mktemp("tiny_city")
    base = SynthCityConfig()
    cfg = replace(base, size_m=400.0, images=1200, camera=replace(base.camera, width=128, height=64))
    synth_city(root, cfg, progress=False)
    split_city(root, SplitConfig(block_m=8.0, buffer_m=0.0, fractions=(0.75, 0.15, 0.10), seed=0))
    build_pyramid(root, PyramidSpec(k=4, levels=2, side_m=400.0, terminal_m=None, px=32), progress=False)
    return root


TINY_RUN = """
model:
  kind: {kind}
  encoder: {{street_size: [64, 128], sat_size: 32, freeze: all}}
  {head}
train: {{steps: {steps}, batch_size: 32, lr: 5.0e-4, warmup_steps: 10,
         val_every: {val_every}, val_queries: 200, log_every: 10, workers: {workers}}}
"""
TINY_HEADS = {"zoom": "policy: {width: 128, layers: 2, heads: 4}", "retrieval": "retrieval: {dim: 128}"}


def write_run_config(folder: Path, steps: int = 300, val_every: int = 150, workers: int = 2, kind: str = "zoom") -> Path:
    """A training config for ``tiny_city``: frozen encoders, a small policy (or retrieval heads), CPU-sized."""
    path = folder / f"run_{kind}_{steps}_{val_every}_{workers}.yaml"
    path.write_text(TINY_RUN.format(kind=kind, head=TINY_HEADS[kind], steps=steps, val_every=val_every, workers=workers))
    return path


def untimed_records(run: Path) -> list[dict]:
    """A run's metrics.jsonl without the throughput, which is timed: what two equal runs must share."""
    import json

    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"} for line in lines]


def changed_sat_weights(run: Path, config: Path) -> list[str]:
    """The satellite backbone tensors of ``run``'s checkpoint that differ from a fresh model of ``config``."""
    import torch

    from zoomloc.models.checkpoint import load_model
    from zoomloc.models.registry import build_model
    from zoomloc.training.trainer import load_run_config

    trained, _ = load_model(run)
    initial = build_model(load_run_config(config).model, trained.grid).encoders.backbone("sat").state_dict()
    return [
        k for k, v in trained.encoders.backbone("sat").state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, initial[k])
    ]


@pytest.fixture(scope="session")
def trained_run(tiny_city, tmp_path_factory) -> Path:
    """A zoom model trained for 300 steps on ``tiny_city`` (about a minute on 2 cores)."""
    from zoomloc.cli.main import main

    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "run"
    assert main(["train", str(tiny_city), "--config", str(write_run_config(tmp)), "--out", str(out), "--quiet"]) == 0
    return out


SHORT_RUN = """
model:
  encoder: {street_size: [32, 64], sat_size: 32, freeze: all}
  policy: {width: 32, layers: 1, heads: 2}
train: {steps: 6, batch_size: 8, lr: 5.0e-4, warmup_steps: 2, val_every: 2, val_queries: 8, log_every: 2,
        workers: 0, deterministic: true}
"""


def train_in_process(*args: str | Path) -> int:
    """``zoomloc train ARGS --quiet`` in this process; a config's deterministic mode does not outlive it."""
    import torch

    from zoomloc.cli.main import main

    try:
        return main(["train", *map(str, args), "--quiet"])
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="session")
def short_run(tiny_city, tmp_path_factory) -> Path:
    """6 deterministic steps with a checkpoint every 2 (seconds on 2 cores); its config is ``run.yaml`` beside it.

    A real run folder for tests that need any model, and the uninterrupted reference that
    interrupted and resumed runs of the same config must reproduce bit for bit.
    """
    tmp = tmp_path_factory.mktemp("short_run")
    (tmp / "run.yaml").write_text(SHORT_RUN)
    assert train_in_process(tiny_city, "--config", tmp / "run.yaml", "--out", tmp / "run") == 0
    return tmp / "run"
