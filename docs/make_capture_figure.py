"""Draw ``docs/one_corner_three_captures.png``: one street corner as three crowd-sourced captures see it.

Same place, same heading; each capture (``capture.mode: sequences``, :mod:`data_prep.capture`)
brings its own camera, time of day, weather and passers-by — what a model must see through to
recognise a street it has learned from other captures::

    .venv/bin/python docs/make_capture_figure.py [--seed 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_prep.capture import CaptureParams, capture_surfaces, sample_sequences
from data_prep.scene import ROAD_CLASSES, build_scene
from data_prep.street import StreetRenderer, Views
from data_prep.synth import SynthCityConfig

HERE = Path(__file__).resolve().parent
SCALE = 2
BACK_M = 18.0  # the camera stands this far before the crossing


def corner(road: np.ndarray, gsd: float) -> tuple[float, float, float]:
    """A camera (row, col, heading) on a road, looking at the crossing nearest the city's centre."""
    n = road.shape[0]
    reach = int(6 / gsd)
    back = BACK_M / gsd
    rows, cols = np.nonzero(road[reach:-reach, reach:-reach])
    rows, cols = rows + reach, cols + reach
    crossing = road[rows - reach, cols] & road[rows + reach, cols] & road[rows, cols - reach] & road[rows, cols + reach]
    order = np.argsort(np.hypot(rows - n / 2, cols - n / 2))
    for i in order[crossing[order]]:
        for heading, (dr, dc) in ((0.0, (1, 0)), (90.0, (0, -1)), (180.0, (-1, 0)), (270.0, (0, 1))):
            r, c = rows[i] + dr * back, cols[i] + dc * back
            if 0 <= r < n and 0 <= c < n and road[int(r), int(c)]:
                return r + 0.5, c + 0.5, heading
    raise SystemExit("no street crossing found; try another --seed")


def make_figure(seed: int, out: Path) -> None:
    cfg = SynthCityConfig(seed=seed, size_m=600, images=3)
    scene = build_scene(cfg.scene, cfg.size_m, cfg.gsd, cfg.seed)
    capture = CaptureParams(mode="sequences", photos_per_sequence=(1, 1), overcast_p=0.4, wet_p=0.4)
    views = sample_sequences(scene, cfg.camera, capture, 3, np.random.default_rng([seed, 3])).views
    row, col, heading = corner(np.isin(scene.cls, ROAD_CLASSES), cfg.gsd)
    views = dataclasses.replace(views, row=np.full(3, row), col=np.full(3, col), heading_deg=np.full(3, heading), pitch_deg=np.zeros(3))
    renderer = StreetRenderer(scene, capture_surfaces(scene, views, cfg.seed), cfg.camera)
    panels = []
    for i in range(3):
        photo = Image.fromarray(renderer.render(views, i, np.random.default_rng([seed, 0xF070, i])))
        photo = photo.resize((photo.width * SCALE, photo.height * SCALE), Image.NEAREST)
        ImageDraw.Draw(photo).text((6, 4), _caption(views, i), fill=(255, 255, 255))
        panels.append(photo)
    sheet = Image.new("RGB", (panels[0].width, 24 + sum(p.height + 6 for p in panels)), "white")
    ImageDraw.Draw(sheet).text((6, 6), "one street corner, three captures (same position and heading)", fill=(0, 0, 0))
    y = 24
    for p in panels:
        sheet.paste(p, (0, y))
        y += p.height + 6
    sheet.save(out, optimize=True)


def _caption(views: Views, i: int) -> str:
    sun = (np.degrees(np.arctan2(views.sun_east[i], views.sun_north[i])) % 360).round()
    weather = "overcast" if views.overcast[i] else "clear"
    wet = ", wet road" if views.wet[i] else ""
    return f"capture {i + 1}: sun from {sun:.0f}°, {weather}{wet}, fov {views.fov_deg[i]:.0f}°, JPEG q{int(views.quality[i])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--out", type=Path, default=HERE / "one_corner_three_captures.png")
    args = parser.parse_args(argv)
    make_figure(args.seed, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
