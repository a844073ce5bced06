"""The embedded default: the demo city, built end to end by ``zoomloc demo`` (``make demo``).

The demo is the main job on data the project generates itself: a synthetic city from
``configs/cities/demo.yaml``, its area split and its tile pyramid. Each stage is skipped when
its output already exists (outputs are written atomically, so an existing file is complete),
which makes a second ``make demo`` cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.split import SplitConfig, split_city
from data_prep.synth import SynthCityConfig, synth_city
from zoomloc.citydir import CityDir
from zoomloc.config import load_yaml
from zoomloc.pyramid import PyramidReader, PyramidSpec, build_pyramid

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_DEMO_CONFIG = CONFIGS / "demo.yaml"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo builds; ``city`` is a synth-city config, relative to the repository's configs/."""

    city: str = "cities/demo.yaml"
    split: SplitConfig = field(default_factory=SplitConfig)
    pyramid: PyramidSpec = field(default_factory=PyramidSpec)


def run_demo(out_dir: Path, config: Path | None = None, progress: bool = True) -> list[str]:
    """Build the demo city under ``out_dir/city`` and return what was done, one line per stage."""
    config = DEFAULT_DEMO_CONFIG if config is None else config
    cfg = load_yaml(DemoConfig, config)
    city = CityDir(Path(out_dir) / "city")
    report = []

    def stage(name: str, done: bool, run) -> None:
        if done:
            report.append(f"{name}: already there")
            return
        start = time.perf_counter()
        summary = run()
        report.append(f"{name}: {time.perf_counter() - start:.1f} s\n  " + summary.describe().replace("\n", "\n  "))

    stage(
        "city",
        city.metadata_csv.is_file(),
        lambda: synth_city(city.root, SynthCityConfig.from_yaml(config.parent / cfg.city), progress=progress),
    )
    stage("split", city.split_csv.is_file(), lambda: split_city(city.root, cfg.split))
    stage("pyramid", city.pyramid_path.is_file(), lambda: build_pyramid(city.root, cfg.pyramid, progress=progress))
    with PyramidReader(city.pyramid_path) as pyr:
        g = pyr.grid
        report.append(
            f"ready: {city.root} — {g.side_m:.0f} m region, {g.levels} zoom steps of {g.k}x{g.k}, "
            f"terminal cell {g.terminal_m:.1f} m"
        )
    return report
