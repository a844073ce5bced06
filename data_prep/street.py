"""Street-level photos of the scene: a vectorized height-field ray march ("voxel space").

For every screen column a ray is marched over the height grid at increasing depths; each
sample's top is projected to a screen row, and a running minimum over depth (nearer samples
hide farther ones) decides which sample covers which pixel row, all columns at once. Pixels
are then shaded from what they hit:

* walls: the building's facade colour (from the small shared palette), lit by the sun
  according to the wall's facing, with windows placed in world coordinates (floor height,
  position along the wall), so the same building looks the same from every camera;
* roofs and tree crowns: the colours of the scene's top surface (:func:`surface_colours`) lit
  by the photo's own sun (``Views.light`` picks one of the renderer's surfaces);
* the ground: that surface's colour where the pixel's ray meets the ground plane, so lane
  markings, grass and water are where the overhead view has them, and cast shadows where the
  photo's sun puts them (the orthophoto's only when the photo is taken in its light);
* the sky: a gradient above the horizon; far things fade into haze.

Then passing vehicles (not in the orthophoto, as in real imagery), exposure and colour shifts,
blur and noise make photos that cannot be matched pixel for pixel.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

from data_prep.overhead import OUTSIDE_RGB, Sun
from data_prep.scene import BUILDING, FLOOR_M, MATERIALS, ROAD_CLASSES, TONES, TREE, TRUNK, Scene
from zoomloc.core.errors import InputError

_OUTSIDE = 255  # class code of samples beyond the city edge
_REL_STEP = 0.02  # depth step as a fraction of the depth, beyond the near range
_WINDOW_PITCH = np.array([2.8, 3.4, 3.0, 2.6, 1.8, 3.2, 3.0, 3.6], dtype=np.float32)  # per material
_GLASS = np.array([52, 62, 76], dtype=np.float32)
_BARK = np.array([74, 60, 46], dtype=np.float32)
_CROWN_REACH_M = 5.0  # largest crown radius, with a margin: how far past a crown's edge its trunk can be
_LEAVES = np.random.default_rng(0x1EAF).uniform(0.7, 1.2, (61, 59)).astype(np.float32)  # leaf brightness
_SKY_HORIZON = np.array([206, 218, 230], dtype=np.float32)
_SKY_ZENITH = np.array([92, 138, 198], dtype=np.float32)
_OVERCAST = np.array([168, 170, 174], dtype=np.float32)
_CLOTHES = np.array([(30, 30, 36), (200, 40, 40), (40, 70, 150), (220, 220, 210), (110, 90, 60), (60, 120, 60)], dtype=np.float32)
_CAR_RGB = np.array(
    [(235, 235, 232), (30, 30, 34), (140, 142, 146), (190, 192, 196), (150, 30, 30), (40, 60, 120), (60, 90, 70)],
    dtype=np.float32,
)


@dataclass(frozen=True)
class CameraParams:
    """How the street photos are taken (the ``camera:`` section of a city config)."""

    width: int = 256
    height: int = 128
    fov_deg: tuple[float, float] = (60.0, 100.0)  # horizontal field of view, drawn uniformly
    height_m: tuple[float, float] = (1.5, 2.0)  # camera above the road
    pitch_deg: float = 3.0  # largest tilt up or down
    roll_deg: float = 2.0  # largest roll
    max_distance_m: float = 1200.0  # how far rays reach (landmarks stay visible from afar)
    vehicles: float = 1.2  # mean number of vehicles per photo
    jpeg_quality: int = 90

    def validate(self) -> str | None:
        """Why these parameters cannot take photos, or None."""
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            return "width and height must be within [16, 4096] pixels"
        if not 1 <= self.fov_deg[0] <= self.fov_deg[1] < 170:
            return "fov_deg must be [min, max] with 1 <= min <= max < 170"
        if not 0 < self.height_m[0] <= self.height_m[1]:
            return "height_m must be [min, max] with 0 < min <= max"
        if not (0 <= self.pitch_deg < 45 and 0 <= self.roll_deg < 45):
            return "pitch_deg and roll_deg must be within [0, 45)"
        if self.max_distance_m <= 10 or self.vehicles < 0:
            return "max_distance_m must exceed 10 and vehicles must not be negative"
        if not 1 <= self.jpeg_quality <= 95:
            return "jpeg_quality must be within [1, 95]"
        return None


@dataclass(frozen=True)
class Views:
    """Poses (grid rows/columns, degrees, metres) and photometric draws of ``n`` photos."""

    row: np.ndarray
    col: np.ndarray
    heading_deg: np.ndarray  # clockwise from north
    fov_deg: np.ndarray
    cam_h: np.ndarray
    pitch_deg: np.ndarray
    roll_deg: np.ndarray
    gain: np.ndarray
    gamma: np.ndarray
    tint: np.ndarray  # (n, 3)
    blur: np.ndarray  # passes of a [1 2 1] filter
    noise: np.ndarray  # sigma of the sensor noise, in 0..255 units
    # The capture's conditions (data_prep.capture draws them per sequence):
    sun_east: np.ndarray  # horizontal unit vector towards the sun, lighting the façades
    sun_north: np.ndarray
    overcast: np.ndarray  # 0 clear .. 1: flat light, low contrast, hazy distance
    wet: np.ndarray  # 1: wet roads, darker and mirroring the sky
    vignette: np.ndarray  # darkening of the corners, 0 none
    quality: np.ndarray  # JPEG quality
    vehicles: np.ndarray  # mean number of vehicles in the photo
    pedestrians: np.ndarray  # mean number of pedestrians in the photo
    light: np.ndarray  # which of the renderer's surfaces (one per sun: shading, cast shadows) lights the photo

    def __len__(self) -> int:
        return self.row.size

    def subset(self, index: slice) -> Views:
        return Views(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def sample_views(scene: Scene, params: CameraParams, sun: Sun, n: int, rng: np.random.Generator) -> Views:
    """``n`` cameras at random points of the roads, with random headings and sensors, in the orthophoto's light."""
    road = np.flatnonzero(np.isin(scene.cls, ROAD_CLASSES))
    if road.size == 0:
        raise InputError("the generated city has no road to put cameras on (is it too small?)")
    cell = road[rng.integers(0, road.size, n)]
    return Views(
        row=cell // scene.n + rng.uniform(0, 1, n),
        col=cell % scene.n + rng.uniform(0, 1, n),
        heading_deg=rng.uniform(0, 360, n),
        fov_deg=rng.uniform(*params.fov_deg, n),
        cam_h=rng.uniform(*params.height_m, n),
        pitch_deg=rng.uniform(-1, 1, n) * params.pitch_deg,
        roll_deg=rng.uniform(-1, 1, n) * params.roll_deg,
        gain=rng.uniform(0.75, 1.25, n),
        gamma=rng.uniform(0.85, 1.2, n),
        tint=1 + rng.normal(0, 0.04, (n, 3)),
        blur=rng.choice(3, size=n, p=[0.6, 0.3, 0.1]),
        noise=rng.uniform(1.0, 6.0, n),
        sun_east=np.full(n, sun.horizontal[0], dtype=np.float32),
        sun_north=np.full(n, sun.horizontal[1], dtype=np.float32),
        overcast=np.zeros(n),
        wet=np.zeros(n),
        vignette=np.zeros(n),
        quality=np.full(n, params.jpeg_quality),
        vehicles=np.full(n, params.vehicles),
        pedestrians=np.zeros(n),
        light=np.zeros(n, dtype=np.int64),
    )


def _depths(gsd: float, max_distance_m: float) -> np.ndarray:
    """Sample depths along each ray: one cell apart near the camera, then 2 % apart."""
    z = [gsd]
    while z[-1] < max_distance_m:
        z.append(z[-1] + max(gsd, _REL_STEP * z[-1]))
    return np.array(z, dtype=np.float32)


@dataclass(frozen=True)
class _Camera:
    """One photo's rays: per column, direction and horizon row; shared by all steps."""

    row: float
    col: float
    cam_h: float
    f: float  # focal length in pixels
    hz: np.ndarray  # (W,) horizon row (pitch shifts it, roll tilts it)
    de: np.ndarray  # (W,) ray direction east, per metre of depth (includes the 1/cos of the column)
    dn: np.ndarray  # (W,) north
    sun: np.ndarray  # (2,) float32 (east, north) towards the sun
    overcast: float
    surface: np.ndarray  # (n·n, 3) uint8: the top surface in this photo's light

    def grid_at(self, depth: np.ndarray, cols: np.ndarray, gsd: float) -> tuple[np.ndarray, np.ndarray]:
        """Grid (row, col) of the points at ``depth`` metres along the columns ``cols``."""
        return self.row - depth * self.dn[cols] / gsd, self.col + depth * self.de[cols] / gsd


class StreetRenderer:
    """Renders photos of one scene; holds flat views of its grids and the shared colours.

    ``surfaces`` are the scene's top surface in each light a photo can be taken in, keyed as a
    photo's ``Views.light`` names them: one for photos in the orthophoto's light, one per capture sun
    for captures at other hours, whose cast shadows then fall where their own sun puts them.
    """

    def __init__(self, scene: Scene, surfaces: Mapping[int, np.ndarray], params: CameraParams):
        self.scene = scene
        self.params = params
        self._height = scene.height.reshape(-1)
        self._cls = scene.cls.reshape(-1)
        self._material = scene.material.reshape(-1)
        self._facing = scene.facing.reshape(-1)
        self._surfaces = {light: surface.reshape(-1, 3) for light, surface in surfaces.items()}
        self._facade = (MATERIALS[:, 0][:, None, :] * TONES[None, :, None]).reshape(-1, 3)
        self._z = _depths(scene.gsd, params.max_distance_m)

    # ------------------------------------------------------------------ geometry
    def _camera(self, views: Views, i: int) -> _Camera:
        p = self.params
        f = p.width / 2 / np.tan(np.radians(views.fov_deg[i]) / 2)
        off = np.arange(p.width, dtype=np.float32) + 0.5 - p.width / 2
        alpha = np.arctan(off / f)
        psi = np.radians(views.heading_deg[i]) + alpha
        hz = p.height / 2 + f * np.tan(np.radians(views.pitch_deg[i])) + off * np.tan(np.radians(views.roll_deg[i]))
        return _Camera(
            float(views.row[i]),
            float(views.col[i]),
            float(views.cam_h[i]),
            float(f),
            hz.astype(np.float32),
            (np.sin(psi) / np.cos(alpha)).astype(np.float32),
            (np.cos(psi) / np.cos(alpha)).astype(np.float32),
            np.array([views.sun_east[i], views.sun_north[i]], dtype=np.float32),
            float(views.overcast[i]),
            self._surfaces[int(views.light[i])],
        )

    def _cells(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat cell index of grid points (0 outside) and whether they are inside the city."""
        n = self.scene.n
        r, c = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
        inside = (r >= 0) & (r < n) & (c >= 0) & (c < n)
        return np.where(inside, r * n + c, 0), inside

    def _cover(self, cam: _Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each pixel (H, W): the depth index of the sample covering it (S = sky), and the
        samples' cells and insideness (W, S).

        Sample ``k`` covers the rows between its projected top and the top of all nearer
        samples (a running minimum); ``np.repeat`` lays those row counts out column by column.
        """
        W, H = self.params.width, self.params.height
        z = self._z
        S = z.size
        cell, inside = self._cells(*cam.grid_at(z[None, :], np.arange(W)[:, None], self.scene.gsd))
        h = np.where(inside, self._height[cell], 0.0)
        top = cam.hz[:, None] - cam.f * (h - cam.cam_h) / z[None, :]
        first_row = np.clip(np.ceil(top - 0.5), 0, H).astype(np.int64)
        covered_from = np.minimum.accumulate(first_row, axis=1)
        counts = np.empty((W, S + 1), dtype=np.int64)
        counts[:, 0] = H - covered_from[:, 0]
        counts[:, 1:S] = covered_from[:, :-1] - covered_from[:, 1:]
        counts[:, S] = covered_from[:, -1]
        order = np.repeat(np.arange(W * (S + 1)), counts.ravel()).reshape(W, H)[:, ::-1]
        return (order % (S + 1)).T, cell, inside

    def _refine(self, cam: _Camera, cols: np.ndarray, rows: np.ndarray, near: np.ndarray, far: np.ndarray, steps: int = 5):
        """Bisect each pixel ray between a free depth and a blocked one: where it meets the wall."""
        gsd = self.scene.gsd
        slope = (cam.hz[cols] - rows) / cam.f  # ray height gain per metre of depth
        for _ in range(steps):
            mid = (near + far) / 2
            cell, inside = self._cells(*cam.grid_at(mid, cols, gsd))
            blocked = inside & (self._height[cell] >= cam.cam_h + slope * mid)
            far = np.where(blocked, mid, far)
            near = np.where(blocked, near, mid)
        return far

    # ------------------------------------------------------------------ shading
    def _sky(self, cam: _Camera, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        elevation = np.clip((cam.hz[cols] - rows) / cam.f / 0.6, 0, 1) ** 0.7
        return _SKY_HORIZON + (_SKY_ZENITH - _SKY_HORIZON) * elevation[:, None]

    def _ground(self, cam: _Camera, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colour and depth where pixel rays meet the ground plane (bilinear in the surface)."""
        below = np.maximum(rows - cam.hz[cols], 1e-3)
        depth = np.minimum(cam.f * cam.cam_h / below, self._z[-1])
        gr, gc = cam.grid_at(depth, cols, self.scene.gsd)
        gr, gc = gr - 0.5, gc - 0.5
        r0, c0 = np.floor(gr), np.floor(gc)
        fr, fc = (gr - r0)[:, None], (gc - c0)[:, None]
        colour = np.zeros((rows.size, 3), dtype=np.float32)
        for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
            cell, inside = self._cells(r0 + dr, c0 + dc)
            colour += w * np.where(inside[:, None], cam.surface[cell], OUTSIDE_RGB)
        return colour, depth

    def _wall(self, cam: _Camera, cols, rows, depth, cell) -> np.ndarray:
        """Facade colour: palette colour lit by the sun on the wall's facing, with windows."""
        angle = self._facing[cell].astype(np.float32) * np.float32(2 * np.pi / 256)
        ne, nn = np.cos(angle), np.sin(angle)
        light = 0.72 + 0.28 * (1 - cam.overcast) * (ne * cam.sun[0] + nn * cam.sun[1])
        material = self._material[cell]
        base = self._facade[material] * light[:, None]
        # Windows from world coordinates: height above ground, position along the wall.
        z_world = cam.cam_h + (cam.hz[cols] - rows) * depth / cam.f
        along = (cam.col * self.scene.gsd + depth * cam.de[cols]) * -nn + (-cam.row * self.scene.gsd + depth * cam.dn[cols]) * ne
        pitch = _WINDOW_PITCH[material // 4]
        fa = np.mod(along / pitch, 1.0)
        fz = np.mod(z_world / FLOOR_M, 1.0)
        window = (np.abs(fa - 0.5) < 0.28) & (fz > 0.3) & (fz < 0.85) & (z_world > 0.8) & (z_world < self._height[cell] - 1.0)
        visible = np.clip((cam.f * pitch / depth - 2) / 3, 0, 1)  # fade to the mean when windows get sub-pixel
        mix = np.where(window, 0.8, 0.0) * visible + 0.22 * (1 - visible)
        return base * (1 - mix[:, None]) + _GLASS * mix[:, None]

    def _solid(self, cam: _Camera, rows, cols, k) -> tuple[np.ndarray, np.ndarray]:
        """Colour and depth of pixels whose covering sample is a building or a tree."""
        near = np.where(k > 0, self._z[np.maximum(k - 1, 0)], 0.0).astype(np.float32)
        depth = self._refine(cam, cols, rows, near, self._z[k])
        hit, _ = self._cells(*cam.grid_at(depth, cols, self.scene.gsd))
        z_world = cam.cam_h + (cam.hz[cols] - rows) * depth / cam.f
        h_hit = self._height[hit]
        hit_cls = self._cls[hit]
        colour = cam.surface[hit].astype(np.float32)  # roofs and crowns seen from the side's top
        top = h_hit - z_world < 0.3 + depth / cam.f
        wall = np.flatnonzero((hit_cls == BUILDING) & ~top)
        colour[wall] = self._wall(cam, cols[wall], rows[wall], depth[wall], hit[wall])
        tree = np.flatnonzero(hit_cls == TREE)
        leaves = _LEAVES[hit[tree] % _LEAVES.shape[0], np.floor(z_world[tree] * 3).astype(np.int64) % _LEAVES.shape[1]]
        shade = 0.65 + 0.35 * np.clip(z_world[tree] / np.maximum(h_hit[tree], 0.1), 0, 1)
        colour[tree] *= (leaves * shade)[:, None]
        # Below the crown: the trunk if the ray passes it, else what lies behind (the ground).
        under = tree[z_world[tree] < 0.45 * h_hit[tree]]
        if under.size:
            trunk_at = self._trunk(cam, rows[under], cols[under], depth[under])
            has = np.isfinite(trunk_at)
            colour[under[has]] = _BARK
            depth[under[has]] = trunk_at[has]
            bare = under[~has]
            colour[bare], depth[bare] = self._ground(cam, rows[bare], cols[bare])
        return colour, depth

    def _trunk(self, cam: _Camera, rows, cols, depth) -> np.ndarray:
        """Depth where each ray, from ``depth`` on, crosses a trunk cell within a crown (inf if none)."""
        step = self.scene.gsd
        ahead = depth[:, None] + step * np.arange(1, int(_CROWN_REACH_M / step) + 1, dtype=np.float32)
        cell, inside = self._cells(*cam.grid_at(ahead, cols[:, None], self.scene.gsd))
        found = inside & (self._material[cell] == TRUNK) & (self._cls[cell] == TREE)
        first = np.argmax(found, axis=1)
        return np.where(found.any(axis=1), ahead[np.arange(rows.size), first], np.inf)

    def render(self, views: Views, i: int, rng: np.random.Generator) -> np.ndarray:
        """Photo ``i`` of ``views`` as (H, W, 3) uint8; ``rng`` draws its vehicles and noise."""
        p = self.params
        W, H = p.width, p.height
        cam = self._camera(views, i)
        k, cell, inside = self._cover(cam)
        rows = np.repeat(np.arange(H, dtype=np.float32) + 0.5, W)
        cols = np.tile(np.arange(W), H)
        k = k.ravel()
        S = self._z.size
        sky = k == S
        sample = cols * S + np.minimum(k, S - 1)
        pcell = cell.ravel()[sample]
        pcls = np.where(inside.ravel()[sample], self._cls[pcell], _OUTSIDE)
        pcls[sky] = _OUTSIDE

        colour = np.empty((H * W, 3), dtype=np.float32)
        depth = np.full(H * W, np.inf, dtype=np.float32)
        colour[sky] = self._sky(cam, rows[sky], cols[sky])
        solid = np.flatnonzero(~sky & ((pcls == BUILDING) | (pcls == TREE)))
        ground = np.flatnonzero(~sky & (pcls != BUILDING) & (pcls != TREE))
        colour[ground], depth[ground] = self._ground(cam, rows[ground], cols[ground])
        if views.wet[i]:  # wet asphalt: darker, with the sky in it
            colour[ground] = colour[ground] * 0.65 + _SKY_HORIZON * 0.2
        if solid.size:
            colour[solid], depth[solid] = self._solid(cam, rows[solid], cols[solid], k[solid])
        haze = (1 - np.exp(-np.minimum(depth, 1e6) / (2500.0 * (1 - 0.8 * cam.overcast))))[:, None]
        colour = colour * (1 - haze) + _SKY_HORIZON * haze
        if cam.overcast:  # flat, grey light
            colour = colour * (1 - 0.35 * cam.overcast) + _OVERCAST * (0.35 * cam.overcast)
        img = colour.reshape(H, W, 3)
        depth = depth.reshape(H, W)
        for _ in range(rng.poisson(float(views.vehicles[i]))):
            self._vehicle(img, depth, cam, rng)
        if views.pedestrians[i] > 0:
            for _ in range(rng.poisson(float(views.pedestrians[i]))):
                self._pedestrian(img, depth, cam, rng)
        return _develop(img, views, i, rng)

    def _vehicle(self, img: np.ndarray, depth: np.ndarray, cam: _Camera, rng: np.random.Generator) -> None:
        """Paint a car, van or bus standing on the road ahead, behind nearer things."""
        W = depth.shape[1]
        z = rng.uniform(3.5, 40.0)
        xc = rng.uniform(0, W)
        c = int(xc)
        cell, inside = self._cells(*cam.grid_at(np.float32(z), np.array([c]), self.scene.gsd))
        if not (inside[0] and self._cls[cell[0]] in ROAD_CLASSES):
            return
        length, height = [(4.3, 1.5), (5.2, 2.2), (11.0, 3.1)][rng.choice(3, p=[0.82, 0.13, 0.05])]
        width = rng.uniform(1.8, length)  # seen from the side, the back, or at an angle
        half = cam.f * width / 2 / z
        box = _upright(cam, depth.shape, xc, z, height, half)
        if box is None:
            return
        (r0, r1, c0, c1), v = box
        u = ((np.arange(c0, c1) + 0.5 - (xc - half)) / (2 * half))[None, :]
        body = _CAR_RGB[rng.integers(0, _CAR_RGB.shape[0])] * (1.05 - 0.25 * v)[..., None]
        glass = (v > 0.08) & (v < 0.42) & (u > 0.06) & (u < 0.94)
        wheel = (v > 0.8) & ((np.abs(u - 0.18) < 0.1) | (np.abs(u - 0.82) < 0.1))
        _paint_in_front(img, depth, box[0], np.where(glass[..., None], _GLASS * 0.8, np.where(wheel[..., None], 22.0, body)), z)

    def _pedestrian(self, img: np.ndarray, depth: np.ndarray, cam: _Camera, rng: np.random.Generator) -> None:
        """Paint a person (about 1.7 m by 0.5 m) standing on the road or pavement ahead, behind nearer things."""
        z = rng.uniform(2.0, 25.0)
        xc = rng.uniform(0, depth.shape[1])
        box = _upright(cam, depth.shape, xc, z, rng.uniform(1.55, 1.9), cam.f * 0.25 / z)
        if box is None:
            return
        (r0, r1, c0, c1), v = box  # v: 0 head .. 1 feet
        shirt, trousers = _CLOTHES[rng.integers(0, len(_CLOTHES), 2)]
        paint = np.where((v < 0.13)[..., None], np.float32([190, 150, 120]), np.where((v < 0.5)[..., None], shirt, trousers))
        _paint_in_front(img, depth, box[0], np.broadcast_to(paint, (r1 - r0, c1 - c0, 3)), z)


def _upright(cam: _Camera, shape: tuple[int, int], xc: float, z: float, height: float, half: float):
    """The pixel box (r0, r1, c0, c1) of something ``height`` m tall standing on the ground ``z`` m
    ahead at column ``xc``, ``half`` pixels to either side, and each row's height in it (0 top ..
    1 ground, ``[rows, 1]``); None when it is off the picture."""
    H, W = shape
    c = int(xc)
    bottom = cam.hz[c] + cam.f * cam.cam_h / z
    top = cam.hz[c] - cam.f * (height - cam.cam_h) / z
    r0, r1 = int(max(0, np.floor(top))), int(min(H, np.ceil(bottom)))
    c0, c1 = int(max(0, np.floor(xc - half))), int(min(W, np.ceil(xc + half)))
    if r0 >= r1 or c0 >= c1:
        return None
    return (r0, r1, c0, c1), ((np.arange(r0, r1) + 0.5 - top) / (bottom - top))[:, None]


def _paint_in_front(img: np.ndarray, depth: np.ndarray, box: tuple[int, int, int, int], paint: np.ndarray, z: float) -> None:
    """Paint ``paint`` into ``box`` where nothing nearer than ``z`` is, and record its depth there."""
    r0, r1, c0, c1 = box
    region = (slice(r0, r1), slice(c0, c1))
    nearer = (depth[region] > z)[..., None]
    img[region] = np.where(nearer, paint, img[region])
    depth[region] = np.where(nearer[..., 0], z, depth[region])


def _develop(img: np.ndarray, views: Views, i: int, rng: np.random.Generator) -> np.ndarray:
    """Exposure, white balance, gamma, vignetting, lens blur and sensor noise → uint8."""
    scale = (views.gain[i] * views.tint[i] / 255.0).astype(np.float32)
    x = np.power(np.clip(img * scale, 0, 1), np.float32(views.gamma[i])) * np.float32(255)
    if views.vignette[i]:
        h, w = x.shape[:2]
        yy, xx = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32), indexing="ij")
        x *= (1 - np.float32(views.vignette[i]) * (xx**2 + yy**2) / 2)[..., None]
    for _ in range(int(views.blur[i])):
        x = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        x = (x[:-2] + 2 * x[1:-1] + x[2:]) / 4
        x = (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]) / 4
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(views.noise[i])
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    """JPEG bytes with fixed encoder settings (same pixels → same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
    return buf.getvalue()
