"""Where the embedded default lives: the demo folder ``zoomloc localize`` falls back to.

Kept apart from :mod:`zoomloc.pipelines.demo`, which builds that folder (city generation, training,
evaluation): a query that only needs the folder's model and pyramid loads none of that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zoomloc.core.errors import InputError
from zoomloc.geo.citydir import CityDir
from zoomloc.models.checkpoint import BEST

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR_ENV = "ZOOMLOC_DEMO_DIR"


@dataclass(frozen=True)
class DemoPaths:
    """Where a demo folder keeps each product."""

    root: Path

    @property
    def city(self) -> CityDir:
        return CityDir(self.root / "city")

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def metrics(self) -> Path:
        return self.root / "test" / "metrics.json"

    @property
    def retrieval(self) -> Path:
        return self.root / "retrieval"

    @property
    def retrieval_metrics(self) -> Path:
        return self.retrieval / "test" / "metrics.json"

    @property
    def map(self) -> Path:
        return self.root / "map.html"


def default_demo() -> DemoPaths:
    """The embedded default's folder: ``$ZOOMLOC_DEMO_DIR`` when set, else the checkout's ``out/demo``."""
    return DemoPaths(Path(os.environ.get(DEMO_DIR_ENV) or REPO / "out" / "demo"))


def require_default_demo() -> DemoPaths:
    """The default demo folder, or a one-line error telling how to build it."""
    demo = default_demo()
    if not (demo.model / BEST).is_file() or not demo.city.pyramid_path.is_file():
        raise InputError("no embedded default model yet: run `make demo` (or `zoomloc demo`) once, or pass --model and --city", demo.root)
    return demo
