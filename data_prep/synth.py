"""``zoomloc synth-city``: a synthetic city directory with real cross-view structure.

One procedural 2.5D scene (:mod:`data_prep.scene`) is rendered from above as an orthophoto
GeoTIFF in the UTM zone of a real place (:mod:`data_prep.overhead`) and from the streets as
perspective photos (:mod:`data_prep.street`); ``streetview/metadata.csv`` records where each
photo was taken. The same seed gives byte-identical files: every random draw comes from the
seed (per photo, not per worker), JPEG settings are fixed and the GeoTIFF carries no timestamp.

The metadata is written last and atomically, so an interrupted run never leaves a
metadata.csv that names missing photos.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import Transformer
from tqdm import tqdm

from data_prep.capture import CaptureParams, capture_surfaces, sample_sequences
from data_prep.overhead import Sun, surface_colours, write_orthophoto
from data_prep.scene import SceneParams, build_scene
from data_prep.street import CameraParams, StreetRenderer, Views, encode_jpeg, sample_views
from zoomloc.core.atomic import write_text
from zoomloc.core.config import load_yaml
from zoomloc.core.errors import InputError
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import WGS84, utm_crs_for


@dataclass(frozen=True)
class SynthCityConfig:
    """Everything that defines a synthetic city; YAML files mirror it (sections for the nested parts)."""

    seed: int = 0
    size_m: float = 2500.0  # side of the square city
    gsd: float = 0.5  # orthophoto and scene grid, metres per pixel
    images: int = 20000
    centre_lon: float = 8.5417  # Zürich: a real place, so the GeoTIFF sits in a real UTM zone
    centre_lat: float = 47.3769
    workers: int = 0  # rendering processes; 0: one per CPU
    sun: Sun = field(default_factory=Sun)
    scene: SceneParams = field(default_factory=SceneParams)
    camera: CameraParams = field(default_factory=CameraParams)
    capture: CaptureParams = field(default_factory=CaptureParams)

    def __post_init__(self) -> None:
        problem = None
        if not 50 <= self.size_m <= 50_000:
            problem = f"size_m must be within [50, 50000] metres (got {self.size_m})"
        elif not 0.05 <= self.gsd <= 10 or self.size_m / self.gsd > 40_000:
            problem = f"gsd must be within [0.05, 10] m and size_m / gsd at most 40000 pixels (got {self.gsd})"
        elif self.images < 1:
            problem = f"images must be at least 1 (got {self.images})"
        elif not (-180 <= self.centre_lon <= 180 and -80 <= self.centre_lat <= 84):
            problem = "centre_lon/centre_lat must lie in a UTM zone (|lon| <= 180, -80 <= lat <= 84)"
        elif self.workers < 0:
            problem = "workers must not be negative"
        elif not 5 <= self.sun.elevation_deg <= 85:
            problem = "sun.elevation_deg must be within [5, 85]"
        else:
            problem = self.scene.validate() or self.camera.validate() or self.capture.validate()
        if problem:
            raise InputError(problem)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SynthCityConfig:
        """Read and validate a YAML config; unknown keys, wrong types and bad values name the key."""
        return load_yaml(cls, path)

    def replace(self, **changes: Any) -> SynthCityConfig:
        """A copy with the given top-level fields changed; ``None`` values (options not given) are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class SynthSummary:
    """What ``synth_city`` made, and how fast."""

    city_dir: Path
    centre_lon: float
    centre_lat: float
    crs: str
    size_m: float
    gsd: float
    pixels: int  # orthophoto side
    images: int
    image_size: tuple[int, int]
    scene_s: float
    ortho_s: float
    street_s: float

    @property
    def seconds(self) -> float:
        return self.scene_s + self.ortho_s + self.street_s

    @property
    def views_per_s(self) -> float:
        return self.images / max(self.street_s, 1e-9)

    def describe(self) -> str:
        w, h = self.image_size
        return "\n".join(
            [
                f"synthetic city in {self.city_dir}",
                f"  where:        {self.centre_lat:.5f}°N {self.centre_lon:.5f}°E, {self.crs}, {self.size_m:g} m square",
                f"  orthophoto:   satellite/ortho.tif, {self.pixels}×{self.pixels} px at {self.gsd:g} m "
                f"({self.scene_s:.1f} s scene, {self.ortho_s:.1f} s ortho)",
                f"  street views: {self.images} photos of {w}×{h} px in {self.street_s:.1f} s ({self.views_per_s:.0f} views/s)",
                f"  total:        {self.seconds:.1f} s",
            ]
        )


def synth_city(city_dir: str | os.PathLike, cfg: SynthCityConfig, progress: bool = True) -> SynthSummary:
    """Generate a synthetic city into ``city_dir`` (which must not hold satellite/ or streetview/ data)."""
    city = CityDir(city_dir)
    _refuse_existing(city)

    t0 = time.perf_counter()
    scene = build_scene(cfg.scene, cfg.size_m, cfg.gsd, cfg.seed)
    t1 = time.perf_counter()
    surface = surface_colours(scene, cfg.sun, cfg.seed)
    crs = utm_crs_for(cfg.centre_lon, cfg.centre_lat)
    to_utm = Transformer.from_crs(WGS84, crs, always_xy=True)
    cx, cy = to_utm.transform(cfg.centre_lon, cfg.centre_lat)
    west, north = cx - cfg.size_m / 2, cy + cfg.size_m / 2
    write_orthophoto(city.satellite_dir / "ortho.tif", surface, (west, north), cfg.gsd, crs, cfg.seed)
    t2 = time.perf_counter()

    rng = np.random.default_rng([cfg.seed, 0x57EE7])
    if cfg.capture.mode == "sequences":
        captures = sample_sequences(scene, cfg.camera, cfg.capture, cfg.images, rng)
        views, surfaces = captures.views, capture_surfaces(scene, captures.views, cfg.seed)
    else:  # every photo in the orthophoto's light
        captures, views, surfaces = None, sample_views(scene, cfg.camera, cfg.sun, cfg.images, rng), {0: surface}
    ids = [f"{i:0{max(6, len(str(cfg.images - 1)))}d}" for i in range(cfg.images)]
    renderer = StreetRenderer(scene, surfaces, cfg.camera)
    city.images_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(total=cfg.images, unit="photo", desc="street views", disable=not progress) as bar:
        for done in _render_all(renderer, views, city.images_dir, ids, cfg.seed, cfg.workers):
            bar.update(done)
    x, y = west + views.col * cfg.gsd, north - views.row * cfg.gsd
    if captures is not None:  # a phone's GPS: the photo is taken at the true position, written a few metres off
        x, y = x + captures.gps_offset_m[:, 0], y + captures.gps_offset_m[:, 1]
    lon, lat = Transformer.from_crs(crs, WGS84, always_xy=True).transform(x, y)
    rows = zip(ids, lon, lat, views.heading_deg, views.fov_deg)
    if captures is None:
        lines = ["image_id,lon,lat,heading_deg,fov_deg"] + [f"{i},{x:.8f},{y:.8f},{h:.2f},{f:.2f}" for i, x, y, h, f in rows]
    else:
        lines = ["image_id,lon,lat,heading_deg,fov_deg,captured_at,sequence_id"] + [
            f"{i},{x:.8f},{y:.8f},{h:.2f},{f:.2f},{t},seq{s:05d}"
            for (i, x, y, h, f), t, s in zip(rows, captures.captured_at_ms, captures.sequence)
        ]
    write_text(city.metadata_csv, "\n".join(lines) + "\n")
    t3 = time.perf_counter()
    return SynthSummary(
        city.root,
        cfg.centre_lon,
        cfg.centre_lat,
        crs.to_string(),
        cfg.size_m,
        cfg.gsd,
        scene.n,
        cfg.images,
        (cfg.camera.width, cfg.camera.height),
        t1 - t0,
        t2 - t1,
        t3 - t2,
    )


def _refuse_existing(city: CityDir) -> None:
    """Never mix a new city with the files of another: refuse non-empty satellite/ or streetview/."""
    if city.root.exists() and not city.root.is_dir():
        raise InputError("exists and is not a folder", city.root)
    for folder in (city.satellite_dir, city.metadata_csv.parent):
        if folder.is_dir() and any(folder.iterdir()):
            raise InputError("already holds data; choose a new city directory or remove it", folder)


# ----------------------------------------------------------------------------- rendering workers
_Job = tuple[StreetRenderer, Views, Path, list[str], int]
_WORKER_JOB: _Job | None = None  # set in each forked worker by _init_worker


def _render_range(job: _Job, start: int, stop: int) -> int:
    renderer, views, images_dir, ids, seed = job
    for i in range(start, stop):
        img = renderer.render(views, i, np.random.default_rng([seed, 0xF070, i]))
        (images_dir / f"{ids[i]}.jpg").write_bytes(encode_jpeg(img, int(views.quality[i])))
    return stop - start


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _render_in_worker(bounds: tuple[int, int]) -> int:
    return _render_range(_WORKER_JOB, *bounds)


def _render_all(renderer: StreetRenderer, views: Views, images_dir: Path, ids: list[str], seed: int, workers: int) -> Iterator[int]:
    """Render and write every photo, yielding how many were written since the last yield.

    Workers are forked so that they share the scene grids (hundreds of MB) without copying;
    each photo draws from its own seed, so the files do not depend on the number of workers.
    """
    job = (renderer, views, images_dir, ids, seed)
    n = len(views)
    chunk = 32
    bounds = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    if workers == 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(workers, len(bounds))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for start, stop in bounds:
            yield _render_range(job, start, stop)
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.imap_unordered(_render_in_worker, bounds)
