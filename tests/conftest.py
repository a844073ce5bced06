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
    from zoomloc.pyramid import PyramidSpec, build_pyramid

    root = tmp_path_factory.mktemp("tiny_city")
    base = SynthCityConfig()
    cfg = replace(base, size_m=400.0, images=1200, camera=replace(base.camera, width=128, height=64))
    synth_city(root, cfg, progress=False)
    split_city(root, SplitConfig(block_m=8.0, buffer_m=0.0, fractions=(0.75, 0.15, 0.10), seed=0))
    build_pyramid(root, PyramidSpec(k=4, levels=2, side_m=400.0, terminal_m=None, px=32), progress=False)
    return root
