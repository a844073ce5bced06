"""Crowd-sourced captures: photos taken in sequences along the streets, each with its own camera,
light and weather, and GPS a few metres off.

Mapillary-style photo sets are not scattered snapshots: a car's dashcam or a walker's phone
moves along the streets and takes a photo every few metres, mostly facing the way of travel.
A sequence (``capture.mode: sequences``) is a walk over the scene's road raster:

- a car looks ahead with a small yaw, photos 4–9 m apart, its camera 1.3–1.6 m up;
- a walker or cyclist holds the phone, its heading drifting around the travel direction,
  photos 1–4 m apart, 1.4–1.8 m up.

Everything that makes one capture look unlike another is drawn once per sequence: the time of
day (the sun's direction and height light the façades, low sun dims and warms the picture; cast
shadows stay the orthophoto's, which keeps its one sun: every capture's ground is the orthophoto's,
shadows and all, a likeness no two real captures at other hours share; a matcher of the ground
against the orthophoto finds photos by it alone, ``benchmarks/ground_shadows.py``, while the
street encoders barely use it, ``benchmarks/capture_factors.py``), the weather (overcast or hazy air lowers
the contrast, wet roads darken and mirror the sky), the camera (field of view, white balance,
vignetting, JPEG quality) and how many vehicles and pedestrians pass. The written GPS position
is off by ``gps_sigma_m`` per axis while the photo is rendered at the true one, as a phone's is.

``mode: scattered`` (the default) keeps the original single photos at random road points,
byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from data_prep.overhead import Sun
from data_prep.scene import ROAD_CLASSES, Scene
from data_prep.street import CameraParams, Views
from zoomloc.core.errors import InputError

_TURNS = np.array([90.0, -90.0, 180.0])
_EPOCH_2026_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class CaptureParams:
    """How the photos are captured (the ``capture:`` section of a city config)."""

    mode: Literal["scattered", "sequences"] = "scattered"
    photos_per_sequence: tuple[int, int] = (20, 120)
    car_share: float = 0.6  # sequences by car; the rest by walkers and cyclists
    gps_sigma_m: float = 3.0  # error of the written position, per axis
    overcast_p: float = 0.3
    wet_p: float = 0.15

    def validate(self) -> str | None:
        if self.mode not in ("scattered", "sequences"):
            return f"capture.mode must be scattered or sequences, not {self.mode!r}"
        if not 1 <= self.photos_per_sequence[0] <= self.photos_per_sequence[1]:
            return "capture.photos_per_sequence must be [min, max] with 1 <= min <= max"
        if not (0 <= self.car_share <= 1 and 0 <= self.overcast_p <= 1 and 0 <= self.wet_p <= 1):
            return "capture.car_share, overcast_p and wet_p must lie in [0, 1]"
        if not 0 <= self.gps_sigma_m <= 100:
            return "capture.gps_sigma_m must lie in [0, 100] metres"
        return None


@dataclass(frozen=True)
class Captures:
    """The photos' views, and what metadata.csv records beyond the position."""

    views: Views
    sequence: np.ndarray  # [n] sequence number
    captured_at_ms: np.ndarray  # [n] epoch milliseconds
    gps_offset_m: np.ndarray  # [n, 2] (east, north) error of the written position


def sample_sequences(scene: Scene, camera: CameraParams, capture: CaptureParams, sun: Sun, n: int, rng: np.random.Generator) -> Captures:
    """``n`` photos in sequences along the roads of ``scene``."""
    road = np.isin(scene.cls, ROAD_CLASSES)
    starts = np.flatnonzero(road)
    if starts.size == 0:
        raise InputError("the generated city has no road to put cameras on (is it too small?)")
    columns: dict[str, list] = {name: [] for name in Views.__dataclass_fields__}
    sequence, times = [], []
    seq, taken = 0, 0
    while taken < n:
        length = min(int(rng.integers(capture.photos_per_sequence[0], capture.photos_per_sequence[1] + 1)), n - taken)
        car = rng.random() < capture.car_share
        spacing = rng.uniform(4.0, 9.0) if car else rng.uniform(1.0, 4.0)
        start = starts[rng.integers(0, starts.size)]
        rows, cols, travel = _walk(
            road, start // scene.n + 0.5, start % scene.n + 0.5, rng.uniform(0, 360), length, spacing / scene.gsd, rng
        )
        yaw = rng.normal(0, 3.0, length) if car else _drift(length, rng)
        overcast = rng.random() < capture.overcast_p
        azimuth, elevation = rng.uniform(90, 270), rng.uniform(8, 60)  # daylight, sun in the south
        low = np.clip((25 - elevation) / 17, 0, 1)  # low sun: dimmer and warmer
        east, north = np.sin(np.radians(azimuth)), np.cos(np.radians(azimuth))
        tint = 1 + rng.normal(0, 0.05, 3) + low * np.array([0.08, 0.0, -0.1])
        values = {
            "row": rows,
            "col": cols,
            "heading_deg": (travel + yaw) % 360,
            "fov_deg": np.full(length, rng.uniform(*camera.fov_deg)),
            "cam_h": np.full(length, rng.uniform(1.3, 1.6) if car else rng.uniform(1.4, 1.8)),
            "pitch_deg": rng.uniform(-1, 1, length) * camera.pitch_deg,
            "roll_deg": rng.uniform(-1, 1, length) * camera.roll_deg * (0.5 if car else 1.5),
            "gain": rng.uniform(0.8, 1.2) * (1 - 0.3 * low) * (0.85 if overcast else 1.0) * rng.uniform(0.95, 1.05, length),
            "gamma": np.full(length, rng.uniform(0.85, 1.2)),
            "tint": np.tile(tint, (length, 1)),
            "blur": rng.choice(3, size=length, p=[0.6, 0.3, 0.1] if car else [0.4, 0.4, 0.2]),
            "noise": np.full(length, rng.uniform(1.0, 6.0)),
            "sun_east": np.full(length, east, dtype=np.float32),
            "sun_north": np.full(length, north, dtype=np.float32),
            "overcast": np.full(length, rng.uniform(0.4, 0.8) if overcast else 0.0),
            "wet": np.full(length, float(rng.random() < capture.wet_p)),
            "vignette": np.full(length, rng.uniform(0.0, 0.45)),
            "quality": np.full(length, int(rng.integers(55, 96))),
            "vehicles": np.full(length, camera.vehicles * (1.3 if car else 0.7)),
            "pedestrians": np.full(length, rng.uniform(0.2, 1.0) if car else rng.uniform(0.8, 2.5)),
        }
        for name, value in values.items():
            columns[name].append(np.asarray(value))
        start_ms = _EPOCH_2026_MS + int(rng.integers(0, 365)) * 86_400_000 + int((6 + (azimuth - 90) / 15) * 3_600_000)
        speed = rng.uniform(6, 14) if car else rng.uniform(1.0, 4.0)  # m/s
        times.append(start_ms + np.round(np.arange(length) * spacing / speed * 1000).astype(np.int64))
        sequence.append(np.full(length, seq))
        seq, taken = seq + 1, taken + length
    views = Views(**{name: np.concatenate(parts) for name, parts in columns.items()})
    gps = rng.normal(0, capture.gps_sigma_m, (n, 2))
    return Captures(views, np.concatenate(sequence), np.concatenate(times), gps)


def _walk(road: np.ndarray, row: float, col: float, heading: float, photos: int, spacing_px: float, rng: np.random.Generator):
    """Positions (grid rows, columns) and travel headings of ``photos`` stops ``spacing_px`` apart along the roads.

    The walker goes straight while the road goes on, turns where it ends (left, right or back,
    whichever way the road continues), and now and then takes a side road.
    """
    n = road.shape[0]

    def on_road(r: float, c: float) -> bool:
        ri, ci = int(np.floor(r)), int(np.floor(c))
        return 0 <= ri < n and 0 <= ci < n and bool(road[ri, ci])

    def ahead(r: float, c: float, h: float, d: float) -> tuple[float, float]:
        a = np.radians(h)
        return r - d * np.cos(a), c + d * np.sin(a)

    rows, cols, headings = np.empty(photos), np.empty(photos), np.empty(photos)
    substeps = max(1, int(np.ceil(spacing_px)))
    step = spacing_px / substeps
    for i in range(photos):
        rows[i], cols[i], headings[i] = row, col, heading
        for _ in range(substeps):
            if rng.random() < 0.01:  # a side road, if there is one
                side = heading + rng.choice(_TURNS[:2])
                if on_road(*ahead(row, col, side, 6.0)):
                    heading = side
            r, c = ahead(row, col, heading, step)
            if not on_road(r, c):
                for turn in rng.permutation(_TURNS):
                    if on_road(*ahead(row, col, heading + turn, 2.0)):
                        heading = (heading + turn) % 360
                        break
                r, c = ahead(row, col, heading, step)
                if not on_road(r, c):
                    continue  # boxed in: stay a step
            row, col = r, c
    return rows, cols, headings


def _drift(photos: int, rng: np.random.Generator) -> np.ndarray:
    """A handheld camera's heading around the travel direction (degrees): a slowly wandering offset."""
    out, offset = np.empty(photos), rng.normal(0, 20)
    for i in range(photos):
        offset = 0.8 * offset + rng.normal(0, 15)
        out[i] = offset
    return out
