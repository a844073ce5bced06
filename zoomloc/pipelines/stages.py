"""Resumable pipelines (``zoomloc demo``, ``zoomloc benchmark``): stages skipped when their output exists.

Every output is written atomically, so an existing file is a complete one: a pipeline that was
interrupted, or is run a second time, redoes only what is missing. The stages a city needs
(generate, build the pyramid, split) and a model needs (train, resuming an interrupted run) are
here once for both pipelines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_prep.split import SplitConfig, config_mismatch, split_city
from data_prep.synth import SynthCityConfig, synth_city
from zoomloc.core.errors import InputError
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.pyramid import PyramidSpec, build_pyramid, spec_mismatch
from zoomloc.models.checkpoint import TRAIN_STATE, read_info
from zoomloc.training.trainer import CURVE, TrainSummary, load_run_config, train


def _reusable(path: Path, mismatch: Callable[[], str | None]) -> bool:
    """Whether ``path`` exists and was made with this pipeline's settings; refused if made with others.

    Redoing it would replace a file the user made (and anything trained on it would no longer
    match), so the user decides: the error names the file and how it differs.
    """
    if not path.is_file():
        return False
    why = mismatch()
    if why is not None:
        raise InputError(f"was made with other settings than this config's ({why}); remove it to redo it, or use its settings", path)
    return True


class Stages:
    """Runs stages in order and keeps a report: one text block per stage, and each stage's seconds."""

    def __init__(self) -> None:
        self.report: list[str] = []
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []  # stages whose output an earlier call left

    def run(self, name: str, done: bool, job: Callable[[], Any]) -> Any:
        """``job()`` unless ``done``; its result's ``describe()`` goes into the report."""
        if done:
            self.report.append(f"{name}: already there")
            self.reused.append(name)
            return None
        start = time.perf_counter()
        result = job()
        self.seconds[name] = time.perf_counter() - start
        self.report.append(f"{name}: {self.seconds[name]:.1f} s\n  " + result.describe().replace("\n", "\n  "))
        return result

    def city(self, city: CityDir, synth_config: Path | None, pyramid: PyramidSpec, progress: bool) -> None:
        """Generate the city from ``synth_config`` (if it has no photos yet) and build its pyramid."""
        if synth_config is not None:
            self.run(
                "city",
                city.metadata_csv.is_file(),
                lambda: synth_city(city.root, SynthCityConfig.from_yaml(synth_config), progress=progress),
            )
        self.run(
            "pyramid",
            _reusable(city.pyramid_path, lambda: spec_mismatch(city.pyramid_path, pyramid, city.root)),
            lambda: build_pyramid(city.root, pyramid, progress=progress),
        )

    def split(self, city: CityDir, split: SplitConfig, name: str = "split") -> None:
        """Split the city's photos, unless a split with these settings is there (one with others is refused)."""
        self.run(name, _reusable(city.split_csv, lambda: config_mismatch(city.root, split)), lambda: split_city(city.root, split))

    def model(self, name: str, city: CityDir, run_config: Path, out: Path, progress: bool) -> TrainSummary | None:
        """Train ``out`` from ``run_config`` unless a finished run is there; an interrupted one resumes.

        A finished run trained on other photos, or on another split of these, is refused: its
        training photos may be test photos now.
        """
        finished = (out / CURVE).is_file()  # drawn when a run finishes
        elsewhere = city.trained_elsewhere(read_info(out)) if finished else None
        if elsewhere is not None:
            raise InputError(f"{elsewhere}; remove it to retrain", out)
        return self.run(
            name,
            finished,
            lambda: train(city.root, load_run_config(run_config), out, resume=(out / TRAIN_STATE).is_file(), progress=progress),
        )
