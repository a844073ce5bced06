"""The embedded default: the demo city and its model, built end to end by ``zoomloc demo`` (``make demo``).

The demo is the main job on data the project generates itself: a synthetic city from
``configs/cities/demo.yaml``, its tile pyramid, its photos split at random (the paper's
protocol: new photos of a city the model learned), a zoom model and the retrieval baseline trained
on the training photos for a few minutes (``configs/demo_model.yaml``, ``demo_retrieval.yaml``),
both evaluated on the held-out test photos (one by one, and each capture's test photos fused as
one track) and printed beside the nearest training photo and a random cell, a few test photos
and the held-out capture with the most test photos localized and drawn on ``map.html``. Each stage is skipped when its
output already exists (outputs are written atomically, so an existing file is complete), which
makes a second ``make demo`` cheap; an interrupted training resumes.

The folder it builds (:class:`~zoomloc.inference.embedded.DemoPaths`) is also what ``zoomloc localize`` uses
when given no ``--model``/``--city`` (:mod:`zoomloc.inference.embedded` finds it).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.split import SplitConfig
from zoomloc.core.config import load_yaml
from zoomloc.data.photos import Photo
from zoomloc.data.samples import Samples
from zoomloc.evaluation.evaluate import evaluate_run
from zoomloc.geo.pyramid import PyramidReader, PyramidSpec
from zoomloc.inference.embedded import REPO, DemoPaths
from zoomloc.inference.localize import Localizer
from zoomloc.inference.report import describe, describe_track
from zoomloc.inference.viz import localization_map, save_map
from zoomloc.pipelines.stages import Stages

DEFAULT_DEMO_CONFIG = REPO / "configs" / "demo.yaml"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo builds; ``city`` and ``model`` are config files relative to this config's folder."""

    city: str = "cities/demo.yaml"
    split: SplitConfig = field(default_factory=SplitConfig)
    pyramid: PyramidSpec = field(default_factory=PyramidSpec)
    model: str = "demo_model.yaml"
    retrieval: str = "demo_retrieval.yaml"  # the baseline the zoom model is printed against
    show: int = 6  # held-out photos localized, printed and drawn on the map
    beam: int = 4

    def __post_init__(self) -> None:
        if self.show < 1 or self.beam < 1:
            raise ValueError("show and beam must be at least 1")


def run_demo(out_dir: Path, config: Path | None = None, progress: bool = True) -> list[str]:
    """Build (or complete) the demo under ``out_dir`` and return what was done, one block per stage."""
    config = Path(DEFAULT_DEMO_CONFIG if config is None else config)
    cfg = load_yaml(DemoConfig, config)
    demo = DemoPaths(Path(out_dir))
    stages = Stages()
    stages.city(demo.city, config.parent / cfg.city, cfg.pyramid, progress)
    stages.split(demo.city, cfg.split)
    stages.model("model", demo.city, config.parent / cfg.model, demo.model, progress)
    stages.model("retrieval model", demo.city, config.parent / cfg.retrieval, demo.retrieval, progress)
    stages.run(
        "evaluation",
        demo.metrics.is_file(),
        lambda: evaluate_run(demo.city.root, demo.model, split="test", out=demo.metrics, fuse="captures", photos=True, progress=progress),
    )
    stages.run(
        "retrieval evaluation",
        demo.retrieval_metrics.is_file(),
        lambda: evaluate_run(
            demo.city.root,
            demo.retrieval,
            split="test",
            out=demo.retrieval_metrics,
            with_references=False,
            fuse="captures",
            photos=True,
            progress=progress,
        ),
    )
    return [*stages.report, comparison(demo), _localize_held_out(demo, cfg)]


# The demo's rows of each model: a row name's suffix, and where its metrics lie in metrics.json.
VARIANTS = {"": (), " fused": ("fused",), " + photos": ("with_photos",), " + photos fused": ("with_photos", "fused")}


def comparison(demo: DemoPaths) -> str:
    """The zoom model against the retrieval baseline and the two references, on the same test photos."""
    zoom, retrieval = (json.loads(path.read_text()) for path in (demo.metrics, demo.retrieval_metrics))
    models = {"zoom": zoom, "retrieval": retrieval}
    rows = {
        f"{name}{suffix}": found
        for suffix, keys in VARIANTS.items()
        for name, m in models.items()
        if (found := functools.reduce(lambda d, key: d.get(key, {}), keys, m))
    }
    rows.update({name.replace("_", " "): m for name, m in zoom["references"].items()})
    lines = [f"on the {zoom['n_queries']} held-out test photos, R@1 within 25 / 50 / 100 m and median error:"]
    for name, m in rows.items():
        r = m["recall_at_1"]
        lines.append(f"  {name:<24} {r['25']:5.1f} / {r['50']:5.1f} / {r['100']:5.1f} %   {m['median_error_m']:7.1f} m")
    return "\n".join(lines)


def _localize_held_out(demo: DemoPaths, cfg: DemoConfig) -> str:
    """Localize the first ``cfg.show`` test photos one by one, and the test photos of the capture with the
    most of them as one track; print both and draw them on ``map.html``."""
    with PyramidReader(demo.city.pyramid_path) as pyramid:  # opened once, as `zoomloc localize` does
        loc = Localizer.load(demo.model, pyramid, progress=False)
        samples = Samples.from_city(demo.city, "test", loc.model.grid)
        n = min(cfg.show, len(samples))
        rows = samples.longest_capture()
        in_track = set(rows.tolist())
        shown = [i for i in range(n) if i not in in_track]
        photos = {i: Photo.read(samples.image_paths[i]) for i in (*shown, *rows)}  # decoded once, for the model and the map
        truth = list(zip(samples.lon, samples.lat))
        results = loc.localize([photos[i] for i in shown], beam=cfg.beam, topk=cfg.beam, truths=[truth[i] for i in shown])
        track = loc.localize_track(
            [photos[i] for i in rows],
            samples.times_s[rows],
            capture=f"of {len(rows)} test photos",
            truths=[truth[i] for i in rows],
        )
        thumbnails = {str(p.path): p.image for p in photos.values()}
        save_map(localization_map([*results, *track.photos], pyramid, photos=thumbnails, tracks=[track]), demo.map)
    lines = [f"{len(shown)} held-out test photos (distance = to the photo's true position):"]
    lines += [describe(r, truth="the true position") for r in results]
    lines.append("the held-out capture with the most test photos, localized as one track (its times only, no GPS):")
    lines.append(describe_track(track, truth="the true position"))
    lines.append(f"map: {demo.map}")
    return "\n".join(lines)
