"""Crowd-sourced captures: photos taken in sequences along the streets, each with its own camera,
light and weather, and GPS a few metres off.

Mapillary-style photo sets are not scattered snapshots: a car's dashcam or a walker's phone
moves along the streets and takes a photo every few metres, mostly facing the way of travel.
A sequence (``capture.mode: sequences``) is a walk along the scene's roads (:func:`_walk`: it
follows a road's bends, turns into another road where its own ends and now and then into a side
road, so it looks along the streets and covers a couple of hundred metres of them):

- a car looks ahead with a small yaw, photos 4–9 m apart, its camera 1.3–1.6 m up;
- a walker or cyclist holds the phone, its heading drifting around the travel direction,
  photos 1–4 m apart, 1.4–1.8 m up.

Everything that makes one capture look unlike another is drawn once per sequence: the time of
day (one of :data:`CAPTURE_SUNS`: its direction and height light the façades and shade the roofs,
its cast shadows fall on the ground and roofs the capture sees, low sun dims and warms the
picture; so two captures at other hours share no shadows, as real ones do not, and the
orthophoto's shadows are on a capture's ground only near the orthophoto's hour:
``benchmarks/ground_shadows.py`` measures what that likeness gave a matcher of the ground), the
weather (overcast or hazy air lowers the contrast, wet roads darken and mirror the sky), the
camera (field of view, white balance, vignetting, JPEG quality) and how many vehicles and
pedestrians pass. The written GPS position
is off by ``gps_sigma_m`` per axis while the photo is rendered at the true one, as a phone's is.

``mode: scattered`` (the default) keeps the original single photos at random road points,
byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from data_prep.overhead import Sun, surface_colours
from data_prep.scene import ROAD_CLASSES, Scene
from data_prep.street import CameraParams, Views
from zoomloc.core.errors import InputError

_STEER_DEG = 30.0  # the largest change of heading per step that follows a bend of the road
_AHEAD_M = 50.0  # how far ahead the walker looks along the road
_ROAD_END_M = 3.0  # less road than this ahead: the road ends (or turns a corner)
_SIDE_ROAD_M = 15.0  # a side road: this much road ahead at a right angle
_SIDE_TURNS = np.array([90.0, -90.0])

# The suns a capture is taken under (daylight, the sun in the south). A table, not a continuum: the
# generator lights the scene's top surface once per sun it uses (:func:`capture_surfaces`, 75 MB
# and seconds each for the bench city), not once per capture; 20 hours still give every few
# captures shadows of their own.
CAPTURE_SUNS: tuple[Sun, ...] = tuple(
    Sun(azimuth, elevation) for elevation in (12.0, 24.0, 38.0, 54.0) for azimuth in (108.0, 144.0, 180.0, 216.0, 252.0)
)
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


def sample_sequences(scene: Scene, camera: CameraParams, capture: CaptureParams, n: int, rng: np.random.Generator) -> Captures:
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
        rows, cols, travel = _walk(_RoadRuns(road, scene.gsd), start // scene.n + 0.5, start % scene.n + 0.5, length, spacing, rng)
        yaw = rng.normal(0, 3.0, length) if car else _drift(length, rng)
        overcast = rng.random() < capture.overcast_p
        light = _nearest_sun(rng.uniform(90, 270), rng.uniform(8, 60))
        azimuth, elevation = CAPTURE_SUNS[light].azimuth_deg, CAPTURE_SUNS[light].elevation_deg
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
            "light": np.full(length, light),
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


def _nearest_sun(azimuth_deg: float, elevation_deg: float) -> int:
    """Index of the capture sun nearest a drawn direction and height (degrees apart, plainly)."""
    table = np.array([(sun.azimuth_deg, sun.elevation_deg) for sun in CAPTURE_SUNS])
    return int(np.argmin(np.hypot(table[:, 0] - azimuth_deg, table[:, 1] - elevation_deg)))


def capture_surfaces(scene: Scene, views: Views, seed: int) -> dict[int, np.ndarray]:
    """The scene's top surface (:func:`surface_colours`) under each capture sun that lights ``views``,
    keyed by ``Views.light`` as :class:`~data_prep.street.StreetRenderer` takes them."""
    return {int(i): surface_colours(scene, CAPTURE_SUNS[i], seed) for i in np.unique(views.light)}


def _walk(on_road: _RoadRuns, row: float, col: float, photos: int, spacing_m: float, rng: np.random.Generator):
    """Positions (grid rows, columns) and travel headings of ``photos`` stops ``spacing_m`` apart along the roads.

    It moves as a driver or a walker does: it sets off along the road (the way with the
    longest stretch of road ahead, one of its two directions at random), steers with the road's
    bends (of the headings within :data:`_STEER_DEG` of its own, the least turn that sees nearly the
    longest stretch ahead), turns into another road where its own ends (the way with the longest
    stretch, not back unless boxed in) and now and then into a side road it passes. So its photos
    look along the streets, as dashcam and phone sequences do, and a capture covers hundreds of
    metres of its streets rather than milling about one spot.
    """
    ahead_px = _AHEAD_M / on_road.gsd
    all_round = np.arange(0.0, 360.0, 10.0)
    runs = on_road.runs(row, col, all_round, ahead_px)
    best = all_round[runs >= 0.9 * runs.max()]
    heading = float(rng.choice(best)) if runs.max() > 0 else float(rng.uniform(0, 360))
    rows, cols, headings = np.empty(photos), np.empty(photos), np.empty(photos)
    spacing_px = spacing_m / on_road.gsd
    substeps = max(1, int(np.ceil(spacing_px)))
    step = spacing_px / substeps
    for i in range(photos):
        rows[i], cols[i], headings[i] = row, col, heading
        for _ in range(substeps):
            if rng.random() < 0.01:  # a side road, if one opens here
                side = heading + rng.choice(_SIDE_TURNS)
                if on_road.runs(row, col, np.array([side]), ahead_px)[0] >= _SIDE_ROAD_M / on_road.gsd:
                    heading = side % 360
            heading = _steer(on_road, row, col, heading, ahead_px)
            r, c = row - step * np.cos(np.radians(heading)), col + step * np.sin(np.radians(heading))
            if on_road.at(r, c):
                row, col = r, c
    return rows, cols, headings


def _steer(on_road: _RoadRuns, row: float, col: float, heading: float, ahead_px: float) -> float:
    """The heading to go on with: along the road's bend, or into another road where this one ends."""
    turns = np.arange(-_STEER_DEG, _STEER_DEG + 1, 5.0)
    runs = on_road.runs(row, col, heading + turns, ahead_px)
    if runs.max() < _ROAD_END_M / on_road.gsd:  # the road ends ahead: the longest way on, back only if boxed in
        turns = np.arange(-150.0, 151.0, 10.0)
        runs = on_road.runs(row, col, heading + turns, ahead_px)
        if runs.max() < _ROAD_END_M / on_road.gsd:
            return (heading + 180.0) % 360
    near_best = np.flatnonzero(runs >= 0.9 * runs.max())
    return float(heading + turns[near_best[np.argmin(np.abs(turns[near_best]))]]) % 360


class _RoadRuns:
    """How far a straight line stays on the road: what the walker steers by."""

    def __init__(self, road: np.ndarray, gsd: float):
        self.road, self.gsd, self.n = road, gsd, road.shape[0]

    def at(self, row: float, col: float) -> bool:
        ri, ci = int(np.floor(row)), int(np.floor(col))
        return 0 <= ri < self.n and 0 <= ci < self.n and bool(self.road[ri, ci])

    def runs(self, row: float, col: float, headings_deg: np.ndarray, max_px: float) -> np.ndarray:
        """Cells of road straight ahead along each heading, up to ``max_px`` (a cell apart, from the next one)."""
        a = np.radians(headings_deg)[:, None]
        d = np.arange(1, int(max_px) + 1, dtype=float)[None, :]
        r, c = np.floor(row - d * np.cos(a)).astype(np.int64), np.floor(col + d * np.sin(a)).astype(np.int64)
        inside = (r >= 0) & (r < self.n) & (c >= 0) & (c < self.n)
        free = inside & self.road[np.clip(r, 0, self.n - 1), np.clip(c, 0, self.n - 1)]
        return np.where(free.all(1), d.shape[1], np.argmin(free, axis=1)).astype(float)


def _drift(photos: int, rng: np.random.Generator) -> np.ndarray:
    """A handheld camera's heading around the travel direction (degrees): a slowly wandering offset."""
    out, offset = np.empty(photos), rng.normal(0, 20)
    for i in range(photos):
        offset = 0.8 * offset + rng.normal(0, 15)
        out[i] = offset
    return out
