"""The view from above: surface colours of the scene, sun shadows, and the orthophoto GeoTIFF.

:func:`surface_colours` turns the scene grids into what the top of each cell looks like in
sunlight (ground textures, roof colours shaded by their slope, tree crowns, cast shadows). It
is shared by both views: the orthophoto is these colours plus sensor noise, and the street
renderer paints roofs, tree crowns and the ground with the very same colours, so that a shadow
or a lane marking seen from the street is where the orthophoto has it. The price: the shadows
on every photo's ground are those of the orthophoto's sun, whatever the capture's hour
(``data_prep.capture``), so ground-level methods must be judged with that in mind
(``benchmarks/results/bench/NOTES.md``, twelfth session).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine

from data_prep.scene import BUILDING, GRASS, MARKING, MATERIALS, PAVED, ROAD, SIDEWALK, TONES, TREE, WATER, Scene
from zoomloc.core.atomic import atomic_path

# Ground albedo per class (buildings take their roof colour) and how strongly it is textured:
# (fine grain, large patches) as a fraction of the colour.
GROUND_RGB = np.zeros((8, 3), dtype=np.float32)
TEXTURE = np.zeros((8, 2), dtype=np.float32)
for _cls, _rgb, _tex in (
    (ROAD, (84, 84, 88), (0.06, 0.08)),
    (MARKING, (226, 226, 218), (0.04, 0.03)),
    (SIDEWALK, (170, 165, 156), (0.07, 0.05)),
    (GRASS, (92, 128, 62), (0.14, 0.16)),
    (PAVED, (160, 150, 134), (0.06, 0.08)),
    (WATER, (46, 72, 88), (0.02, 0.06)),
    (BUILDING, (255, 255, 255), (0.05, 0.04)),
    (TREE, (56, 88, 44), (0.22, 0.12)),
):
    GROUND_RGB[_cls], TEXTURE[_cls] = _rgb, _tex
SHADOW_RGB = np.array([0.42, 0.46, 0.58], dtype=np.float32)  # lit by the blue sky only
OUTSIDE_RGB = np.array([104, 118, 84], dtype=np.float32)  # beyond the city edge


@dataclass(frozen=True)
class Sun:
    """Where the sun is: azimuth clockwise from north, elevation above the horizon (degrees)."""

    azimuth_deg: float = 155.0
    elevation_deg: float = 42.0

    @property
    def horizontal(self) -> tuple[float, float]:
        """Unit vector (east, north) towards the sun."""
        a = np.radians(self.azimuth_deg)
        return float(np.sin(a)), float(np.cos(a))

    @property
    def vector(self) -> np.ndarray:
        """Unit vector (east, north, up) towards the sun."""
        e = np.radians(self.elevation_deg)
        east, north = self.horizontal
        return np.array([east * np.cos(e), north * np.cos(e), np.sin(e)])


def _noise_tiles(seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Two random tiles of coprime sizes; their sum repeats only every size·(size-5) cells."""
    rng = np.random.default_rng([seed, 0x7E47])
    return rng.standard_normal((size, size)).astype(np.float32), rng.standard_normal((size - 5, size - 5)).astype(np.float32)


def _patches(seed: int, n: int, rows: np.ndarray, cell: int = 48) -> np.ndarray:
    """Smooth noise (≈ unit variance) with features ``cell`` cells across, for ``rows`` × n."""
    m = n // cell + 3
    coarse = np.random.default_rng([seed, 0xC0A5]).standard_normal((m, m)).astype(np.float32)
    r = rows / cell
    c = np.arange(n) / cell
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    fr, fc = (r - r0)[:, None], (c - c0)[None, :]
    fr, fc = fr * fr * (3 - 2 * fr), fc * fc * (3 - 2 * fc)
    top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c0 + 1] * fc
    bottom = coarse[r0 + 1][:, c0] * (1 - fc) + coarse[r0 + 1][:, c0 + 1] * fc
    return (top * (1 - fr) + bottom * fr) * 1.4


def cast_shadows(height: np.ndarray, gsd: float, sun: Sun) -> np.ndarray:
    """True where a cell is in the shadow of a taller one, marching towards the sun.

    ``reach[p]`` becomes the highest ``h(q) - drop·|q - p|`` over the cells ``q`` towards the
    sun; doubling the shift each pass covers ``2**k`` cells in ``k`` whole-grid passes instead
    of one pass per cell.
    """
    east, north = sun.horizontal
    drop = gsd * np.tan(np.radians(sun.elevation_deg))  # per cell travelled
    longest = float(height.max()) / drop
    reach = height.copy()
    shift = 1
    while shift <= 2 * longest + 1:
        dr, dc = int(round(-north * shift)), int(round(east * shift))
        if abs(dr) >= reach.shape[0] or abs(dc) >= reach.shape[1]:
            break  # a low sun's shadows reach past the grid: no cell pairs that far apart
        travelled = np.hypot(dr, dc)
        dst, src = _shifted(reach.shape, dr, dc)
        np.maximum(reach[dst], reach[src] - np.float32(drop * travelled), out=reach[dst])
        shift *= 2
    return reach > height + 0.25


def _shifted(shape: tuple[int, int], dr: int, dc: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices (dst, src) such that ``a[dst]`` pairs each cell with the cell ``(dr, dc)`` away."""
    n_r, n_c = shape

    def axis(d: int, n: int) -> tuple[slice, slice]:
        return (slice(0, n - d), slice(d, n)) if d >= 0 else (slice(-d, n), slice(0, n + d))

    (dr0, sr0), (dc0, sc0) = axis(dr, n_r), axis(dc, n_c)
    return (dr0, dc0), (sr0, sc0)


def surface_colours(scene: Scene, sun: Sun, seed: int, rows_per_strip: int = 256) -> np.ndarray:
    """(n, n, 3) uint8: the top of every cell in sunlight, with shading and cast shadows."""
    n = scene.n
    shadow = cast_shadows(scene.height, scene.gsd, sun)
    fine_a, fine_b = _noise_tiles(seed)
    sx, sy, sz = sun.vector
    roof = MATERIALS[:, 1][:, None, :] * TONES[None, :, None]  # (material, tone, rgb)
    roof = roof.reshape(-1, 3)
    out = np.empty((n, n, 3), dtype=np.uint8)
    cols = np.arange(n)
    for r0 in range(0, n, rows_per_strip):
        r1 = min(n, r0 + rows_per_strip)
        rows = np.arange(r0, r1)
        cls = scene.cls[r0:r1]
        base = np.where((cls == BUILDING)[..., None], roof[scene.material[r0:r1]], GROUND_RGB[cls])
        fine = fine_a[rows % fine_a.shape[0]][:, cols % fine_a.shape[1]] + fine_b[rows % fine_b.shape[0]][:, cols % fine_b.shape[1]]
        tex = TEXTURE[cls]
        grain = 1 + tex[..., 0] * 0.7 * fine + tex[..., 1] * _patches(seed, n, rows)
        # Slope shading of roofs and crowns: the normal from central differences, ignoring
        # wall-sized steps (those are edges, not slopes); edges themselves get a dark rim.
        h = scene.height[max(0, r0 - 1) : r1 + 1]
        h = np.pad(h, ((r0 == 0, r1 == n), (1, 1)), mode="edge")
        dzdx = (h[1:-1, 2:] - h[1:-1, :-2]) / (2 * scene.gsd)
        dzdy = (h[:-2, 1:-1] - h[2:, 1:-1]) / (2 * scene.gsd)
        step = (np.abs(dzdx) > 1.5) | (np.abs(dzdy) > 1.5)
        dzdx = np.where(step, 0, dzdx)
        dzdy = np.where(step, 0, dzdy)
        lambert = (-dzdx * sx - dzdy * sy + sz) / (np.sqrt(dzdx**2 + dzdy**2 + 1) * sz)
        rim = step & (cls == BUILDING)
        light = np.clip(lambert, 0.35, 1.3) * np.where(rim, 0.8, 1.0)
        colour = base * (grain * light)[..., None]
        colour = np.where(shadow[r0:r1, :, None], colour * SHADOW_RGB, colour)
        out[r0:r1] = np.clip(colour, 0, 255).astype(np.uint8)
    return out


def write_orthophoto(path: Path, surface: np.ndarray, north_west: tuple[float, float], gsd: float, crs, seed: int) -> None:
    """Write ``surface`` plus sensor noise as a tiled, deflated RGB GeoTIFF with overviews.

    ``north_west`` is the (x, y) of the image's outer corner in ``crs``.

    Atomic (temporary file, then rename) and byte-for-byte reproducible: the noise comes from
    ``seed`` per strip and GDAL writes no timestamps.
    """
    n = surface.shape[0]
    profile = {
        "driver": "GTiff",
        "width": n,
        "height": n,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": Affine(gsd, 0.0, north_west[0], 0.0, -gsd, north_west[1]),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
        "photometric": "RGB",
    }
    strip = 512
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, n, strip):
            block = surface[r0 : r0 + strip].astype(np.float32)
            block += np.random.default_rng([seed, 0x0F70, r0]).normal(0, 2.5, block.shape).astype(np.float32)
            pixels = np.clip(block + 0.5, 0, 255).astype(np.uint8)
            dst.write(pixels.transpose(2, 0, 1), window=rasterio.windows.Window(0, r0, n, pixels.shape[0]))
        factors = [2**k for k in range(1, 12) if n / 2**k >= 128]
        if factors:
            dst.build_overviews(factors, Resampling.average)
            dst.update_tags(ns="rio_overview", resampling="average")
