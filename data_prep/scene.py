"""The procedural 2.5D city that both renderers draw: grids of surface class, height and material.

A city is a square of ``size_m`` metres rasterized at ``gsd`` metres per cell (row 0 north,
column 0 west). Every cell holds the class of its top surface (road, grass, roof, tree...), the
height of that surface above the ground and, for buildings, a material index into
:data:`MATERIALS`. The orthophoto and the street views are both rendered from these grids only,
so whatever a street view shows (a tall grey block beside a park, a river, a tower) is in the
orthophoto too.

The layout is a pure function of the coordinates (:func:`_layout`), driven by a small random
:class:`_Plan` and by integer hashes of block and lot indices. That is what keeps generation
fast and memory-bounded: the grid is filled strip by strip, and any point can be evaluated
alone (trees and landmarks look up the class under them that way).

The road network is not a grid: the city is cut into Voronoi districts, each with its own
orientation and irregular line spacing, joined by avenues along the district borders; some
segments are dropped, merging blocks and making T-junctions, and the whole plan is gently
warped so that streets curve.

Districts also have a *character*, as real neighbourhoods do: a density (suburb to downtown),
a mix of building materials drawn from one small palette shared by the whole city (an old
quarter of brick and terracotta, a business district of glass and steel) and a share of
greenery. No colour singles out a place — every material appears in many districts — but the
mix, the heights and the trees tell quarters apart at a glance from the street and from above,
which is what lets a zoom policy pick the right quarter before it looks at single buildings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np

# Surface classes (``Scene.cls``).
ROAD, MARKING, SIDEWALK, GRASS, PAVED, WATER, BUILDING, TREE = range(8)
ROAD_CLASSES = (ROAD, MARKING)
TRUNK = 1  # ``material`` of the cell under a tree's centre (tree cells have no other material)

# Building materials: (facade RGB, roof RGB), drawn for every lot from its district's mix. Each
# appears in four tones (index = 4 * material + tone), so a colour never singles out a block.
MATERIALS = np.array(
    [
        [(196, 186, 168), (92, 88, 86)],  # beige render, dark bitumen
        [(150, 72, 52), (160, 84, 62)],  # brick, terracotta tiles
        [(120, 128, 138), (150, 152, 155)],  # concrete, grey gravel
        [(222, 220, 212), (190, 188, 182)],  # white plaster, light membrane
        [(96, 116, 134), (70, 76, 82)],  # glass/steel, dark steel
        [(176, 150, 108), (120, 70, 52)],  # sandstone, red tiles
        [(130, 110, 96), (104, 108, 96)],  # brown render, moss green
        [(204, 170, 120), (130, 128, 132)],  # ochre, slate
    ],
    dtype=np.float32,
)
TONES = np.array([0.82, 0.92, 1.0, 1.1], dtype=np.float32)
FLOOR_M = 3.1
TREE_SPACING_M = 8.0


@dataclass(frozen=True)
class SceneParams:
    """What kind of city to generate (the ``scene:`` section of a city config)."""

    block_m: tuple[float, float] = (55.0, 130.0)  # spacing of parallel streets
    district_m: float = 700.0  # typical side of a district with one street orientation
    road_drop: float = 0.12  # share of minor street segments removed (merged blocks, T-junctions)
    park_share: float = 0.08  # share of blocks that are parks
    building_density: float = 0.85  # share of lots that carry a building
    max_floors: int = 24
    tree_density: float = 1.0  # multiplier on the tree probabilities
    river: bool = True
    landmarks_per_km2: float = 1.0  # tall towers visible from far away (at least one if > 0 and there is room)
    warp_m: float = 14.0  # amplitude of the smooth warp that curves the streets
    palette_alpha: float = 0.4  # Dirichlet concentration of a district's material mix (large: all alike)
    greenery_spread: float = 0.7  # districts' tree multipliers range over 1 ± this

    def validate(self) -> str | None:
        """Why these parameters cannot make a city, or None."""
        lo, hi = self.block_m
        if not 20 <= lo <= hi:
            return "block_m must be [min, max] with 20 <= min <= max"
        if self.district_m <= 0 or self.max_floors < 1 or self.landmarks_per_km2 < 0 or self.warp_m < 0:
            return "district_m, max_floors must be positive; landmarks_per_km2, warp_m not negative"
        for name in ("road_drop", "park_share", "building_density"):
            if not 0 <= getattr(self, name) <= 1:
                return f"{name} must be within [0, 1]"
        if self.tree_density < 0:
            return "tree_density must not be negative"
        if self.palette_alpha <= 0 or not 0 <= self.greenery_spread <= 1:
            return "palette_alpha must be positive and greenery_spread within [0, 1]"
        return None


@dataclass(frozen=True)
class Scene:
    """The rasterized city: ``cls``, ``height`` (m), ``material`` and ``facing`` grids of ``n × n`` cells."""

    size_m: float
    gsd: float
    cls: np.ndarray  # (n, n) uint8, a surface class
    height: np.ndarray  # (n, n) float32, top surface above ground in metres
    material: np.ndarray  # (n, n) uint8, 4 * MATERIALS index + tone (buildings), TRUNK (trees)
    facing: np.ndarray  # (n, n) uint8, outward normal of the nearest wall, 256ths of a turn from east

    @property
    def n(self) -> int:
        return self.cls.shape[0]

    def cell_index(self, south_m: np.ndarray, east_m: np.ndarray) -> np.ndarray:
        """Flat index of the cells at metres south/east of the north-west corner (clipped inside)."""
        r = np.clip(np.floor(south_m / self.gsd).astype(np.int64), 0, self.n - 1)
        c = np.clip(np.floor(east_m / self.gsd).astype(np.int64), 0, self.n - 1)
        return r * self.n + c


# ----------------------------------------------------------------------------- hashing
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash_uniform(seed: int, *keys) -> np.ndarray:
    """Uniform [0, 1) floats, a deterministic function of ``seed`` and integer keys (broadcast).

    Blocks, lots and trees draw their attributes from hashes of their indices instead of from
    a random stream, so that a strip of the city can be generated without the rest. Keys count
    modulo 4096 (a city has fewer streets, lots or tree rows than that); five of them are
    packed into each word that goes through one splitmix64 round.
    """
    arrays = np.broadcast_arrays(*(np.atleast_1d(np.asarray(k, dtype=np.int64)) for k in keys))
    with np.errstate(over="ignore"):
        h = np.full(arrays[0].shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN, dtype=np.uint64)
        for i in range(0, len(arrays), 5):
            word = np.zeros(arrays[0].shape, dtype=np.int64)
            for key in arrays[i : i + 5]:
                word = (word << 12) | (key & 4095)
            z = h ^ (word.astype(np.uint64) + _GOLDEN)
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            h = z ^ (z >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


class _Draws:
    """Hashed draws for items named by up to five integer columns, hashed once per distinct item.

    A strip of a million cells holds only a few hundred blocks or lots: hashing those and
    gathering back is several times cheaper than hashing every cell.
    """

    def __init__(self, seed: int, prefix: tuple[int, ...], *columns: np.ndarray):
        key = np.zeros(columns[0].shape, dtype=np.int64)
        for col in columns:
            key = (key << 12) | (col.astype(np.int64) & 4095)
        unique, self.inverse = np.unique(key, return_inverse=True)
        self.columns = [(unique >> (12 * i)) & 4095 for i in reversed(range(len(columns)))]
        self.seed, self.prefix = seed, prefix

    def __call__(self, k: int) -> np.ndarray:
        """The ``k``-th uniform draw of each item, spread back to every cell."""
        return hash_uniform(self.seed, *self.prefix, *self.columns, k)[self.inverse]


def _lerp(a, b, t):
    return a + (b - a) * t


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _District:
    cx: float
    cy: float
    cos: float
    sin: float
    density: float  # 0 suburb .. 1 downtown, before the pull towards the centre
    u_lines: np.ndarray  # street positions across u (sorted), metres from (cx, cy)
    u_half: np.ndarray  # their half widths
    v_lines: np.ndarray
    v_half: np.ndarray
    sidewalk: float
    palette: np.ndarray  # cumulative probabilities of the MATERIALS in this district's lots
    greenery: float  # multiplier on the tree probabilities


@dataclass(frozen=True)
class _Landmark:
    x: float
    y: float
    radius: float
    height: float
    material: int


@dataclass(frozen=True)
class _Plan:
    seed: int
    params: SceneParams
    size_m: float
    districts: tuple[_District, ...]
    warp_len: float
    warp_phase: tuple[float, float]
    river: tuple[float, ...] | None  # (angle, offset, amplitude, wavelength, phase, width)
    landmarks: tuple[_Landmark, ...] = ()


_ROAD_WIDTHS = np.array([8.0, 10.0, 12.0, 18.0])
_ROAD_WIDTH_P = np.array([0.35, 0.3, 0.2, 0.15])
_AVENUE_HALF = 7.0  # roads along district borders
_BRIDGE_HALF = 5.0  # roads at least this wide cross the river on bridges


def _lines(rng: np.random.Generator, reach: float, block_m: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Irregularly spaced parallel streets covering [-reach, reach], with their half widths."""
    steps = rng.uniform(*block_m, size=int(2 * reach / block_m[0]) + 4)
    pos = np.cumsum(steps) - reach - rng.uniform(0, block_m[1])
    return pos, rng.choice(_ROAD_WIDTHS, size=pos.size, p=_ROAD_WIDTH_P) / 2


def _make_plan(params: SceneParams, size_m: float, seed: int) -> _Plan:
    rng = np.random.default_rng([seed, 0x5CE7E])
    n_districts = max(1, round((size_m / params.district_m) ** 2))
    half = size_m / 2
    districts = []
    for _ in range(n_districts):
        cx, cy = rng.uniform(-half, half, 2)
        angle = rng.uniform(0, np.pi / 2)
        reach = size_m * 1.6
        u, uh = _lines(rng, reach, params.block_m)
        v, vh = _lines(rng, reach, params.block_m)
        palette, greenery = _character(params, seed, len(districts))
        districts.append(
            _District(
                cx,
                cy,
                np.cos(angle),
                np.sin(angle),
                rng.uniform(0, 1),
                u,
                uh,
                v,
                vh,
                rng.uniform(2.0, 4.0),
                palette,
                greenery,
            )
        )
    river = None
    if params.river:
        river = (
            rng.uniform(0, np.pi),
            rng.uniform(-0.25, 0.25) * size_m,
            rng.uniform(30, 90),
            rng.uniform(500, 1200),
            rng.uniform(0, 2 * np.pi),
            rng.uniform(28, 50),
        )
    plan = _Plan(seed, params, size_m, tuple(districts), rng.uniform(250, 450), tuple(rng.uniform(0, 2 * np.pi, 2)), river)
    return _with_landmarks(plan, rng)


def _character(params: SceneParams, seed: int, d: int) -> tuple[np.ndarray, float]:
    """District ``d``'s material mix (cumulative) and greenery, from a stream of its own.

    A separate stream keeps the street plan of a seed unchanged when only the character's
    parameters change.
    """
    rng = np.random.default_rng([seed, 0xC4A2, d])
    mix = rng.dirichlet(np.full(MATERIALS.shape[0], params.palette_alpha))
    cumulative = np.cumsum(mix)
    cumulative[-1] = 1.0
    return cumulative, 1.0 + params.greenery_spread * rng.uniform(-1, 1)


def _with_landmarks(plan: _Plan, rng: np.random.Generator) -> _Plan:
    """Place towers on points deep inside blocks, far apart, so they stand on land and are whole."""
    size = plan.size_m
    wanted = plan.params.landmarks_per_km2 * (size / 1000) ** 2
    count = max(1, round(wanted)) if wanted > 0 else 0
    if count == 0:
        return plan
    cand = rng.uniform(-0.42 * size, 0.42 * size, (400, 2))
    radius = rng.uniform(9, 16, 400)
    lay = _layout(plan, cand[:, 0], cand[:, 1])
    ok = lay.inner > radius + 8
    for angle in np.arange(8) * np.pi / 4:  # no water under the tower or its plaza
        rim = radius + 10
        ok &= _layout(plan, cand[:, 0] + rim * np.cos(angle), cand[:, 1] + rim * np.sin(angle)).cls != WATER
    chosen: list[_Landmark] = []
    min_gap = max(120.0, size / (2 * np.sqrt(count)))
    for i in np.flatnonzero(ok):
        if len(chosen) == count:
            break
        if all(np.hypot(cand[i, 0] - m.x, cand[i, 1] - m.y) > min_gap for m in chosen):
            chosen.append(_Landmark(*cand[i], radius[i], rng.uniform(90, 200), int(rng.integers(0, MATERIALS.shape[0])) * 4 + 2))
    return replace(plan, landmarks=tuple(chosen))


# ----------------------------------------------------------------------------- the layout
@dataclass
class _Layout:
    cls: np.ndarray
    height: np.ndarray
    material: np.ndarray
    facing: np.ndarray  # outward normal of the nearest wall, 256ths of a turn from east (buildings)
    inner: np.ndarray  # distance to the nearest road edge minus the sidewalk (block interior depth)
    district: np.ndarray  # index into plan.districts


_TAG_SEG_U, _TAG_SEG_V, _TAG_BLOCK, _TAG_LOT, _TAG_TREE = range(1, 6)
_SIDE_NORMALS = np.array([(-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)])  # (u, v) of the 4 streets


def _facing(east: np.ndarray, north: np.ndarray) -> np.ndarray:
    """A direction as 256ths of a turn counter-clockwise from east (the ``facing`` grid)."""
    return (np.round(np.arctan2(north, east) / (2 * np.pi) * 256) % 256).astype(np.uint8)


def _layout(plan: _Plan, x: np.ndarray, y: np.ndarray) -> _Layout:
    """Class, height, material and wall facing of the points (x east, y north, metres from the centre)."""
    p = plan.params
    n = x.size
    xw = x + p.warp_m * np.sin(y / plan.warp_len + plan.warp_phase[0])
    yw = y + p.warp_m * np.sin(x / plan.warp_len + plan.warp_phase[1])

    # Nearest and second-nearest district centre; the bisector between them is an avenue.
    best = np.full(n, np.inf)
    second = np.full(n, np.inf)
    did = np.zeros(n, dtype=np.int64)
    did2 = np.zeros(n, dtype=np.int64)
    for d, dist in enumerate(plan.districts):
        d2 = (xw - dist.cx) ** 2 + (yw - dist.cy) ** 2
        closer = d2 < best
        is_second = ~closer & (d2 < second)
        second = np.where(closer, best, np.where(is_second, d2, second))
        did2 = np.where(closer, did, np.where(is_second, d, did2))
        best = np.where(closer, d2, best)
        did = np.where(closer, d, did)
    # Per point: distance to the nearest road edge, that road's half width, the outward normal
    # of a building face turned to it, and (for markings) centreline distance and along-road position.
    if len(plan.districts) > 1:
        cx = np.array([d.cx for d in plan.districts])
        cy = np.array([d.cy for d in plan.districts])
        gap = np.hypot(cx[did2] - cx[did], cy[did2] - cy[did])
        edge = (second - best) / (2 * gap) - _AVENUE_HALF
        out_e, out_n = (cx[did2] - cx[did]) / gap, (cy[did2] - cy[did]) / gap
    else:
        edge = np.full(n, np.inf)
        out_e, out_n = np.ones(n), np.zeros(n)
    road_half = np.full(n, _AVENUE_HALF)
    centre_dist = np.full(n, np.inf)
    along = np.zeros(n)

    cls = np.full(n, GRASS, dtype=np.uint8)
    height = np.zeros(n, dtype=np.float32)
    material = np.zeros(n, dtype=np.uint8)
    facing = np.zeros(n, dtype=np.uint8)
    inner = np.zeros(n)
    sidewalk = np.zeros(n)
    for d, dist in enumerate(plan.districts):
        idx = np.flatnonzero(did == d)
        if idx.size == 0:
            continue
        dx, dy = xw[idx] - dist.cx, yw[idx] - dist.cy
        u = dx * dist.cos + dy * dist.sin
        v = -dx * dist.sin + dy * dist.cos
        ku = np.clip(np.searchsorted(dist.u_lines, u), 1, dist.u_lines.size - 1)
        kv = np.clip(np.searchsorted(dist.v_lines, v), 1, dist.v_lines.size - 1)
        # The four streets around the point's block; a dropped minor segment is no street.
        blocks = _Draws(plan.seed, (_TAG_BLOCK, d), ku, kv)
        e_all, c_all, a_all, h_all = [], [], [], []
        bu, bv = blocks.columns
        for (lines, half, k, w, ww), segment in zip(
            (
                (dist.u_lines, dist.u_half, ku - 1, u, v),
                (dist.u_lines, dist.u_half, ku, u, v),
                (dist.v_lines, dist.v_half, kv - 1, v, u),
                (dist.v_lines, dist.v_half, kv, v, u),
            ),
            ((_TAG_SEG_U, bu - 1, bv), (_TAG_SEG_U, bu, bv), (_TAG_SEG_V, bv - 1, bu), (_TAG_SEG_V, bv, bu)),
        ):
            cdist = np.abs(w - lines[k])
            drop_draw = hash_uniform(plan.seed, d, *segment)[blocks.inverse]
            dropped = (drop_draw < p.road_drop) & (half[k] < _BRIDGE_HALF)
            e_all.append(np.where(dropped, np.inf, cdist - half[k]))
            c_all.append(cdist)
            a_all.append(ww)
            h_all.append(half[k])
        pick = np.argmin(np.stack(e_all), axis=0)
        choose = partial(np.choose, pick)

        e_local = choose(e_all)
        take = e_local < edge[idx]
        nu, nv = _SIDE_NORMALS[pick].T
        edge[idx] = np.where(take, e_local, edge[idx])
        road_half[idx] = np.where(take, choose(h_all), road_half[idx])
        centre_dist[idx] = np.where(take, choose(c_all), np.inf)
        along[idx] = choose(a_all)
        out_e[idx] = np.where(take, nu * dist.cos - nv * dist.sin, out_e[idx])
        out_n[idx] = np.where(take, nu * dist.sin + nv * dist.cos, out_n[idx])
        sidewalk[idx] = dist.sidewalk
        inner[idx] = edge[idx] - dist.sidewalk
        _fill_block(plan, d, blocks, ku, kv, u, v, inner[idx], (out_e[idx], out_n[idx]), idx, (cls, height, material, facing))

    # Streets, sidewalks, lane markings (dashed centre lines of streets at least 10 m wide).
    on_road = edge < 0
    cls[edge < sidewalk] = SIDEWALK
    cls[on_road] = ROAD
    dashed = (centre_dist < 0.3) & (road_half >= 5) & (np.mod(along, 9.0) < 4.5)
    cls[on_road & dashed] = MARKING
    height[on_road | (edge < sidewalk)] = 0

    if plan.river is not None:
        _add_river(plan, x, y, on_road & (road_half >= _BRIDGE_HALF), cls, height)
    for mark in plan.landmarks:
        _add_landmark(mark, x, y, on_road, (cls, height, material, facing))
    not_building = cls != BUILDING
    material[not_building] = 0
    facing[not_building] = 0
    return _Layout(cls, height, material, facing, inner, did)


def _fill_block(plan: _Plan, d: int, hb: _Draws, ku, kv, u, v, inner, outward, idx, grids) -> None:
    """Lots, buildings, yards, parks and plazas of the blocks (ku, kv) of district ``d``.

    ``inner`` is the depth into the block, ``outward`` the world normal towards its nearest
    street; ``grids`` (cls, height, material, facing) are written at ``idx``.
    """
    p = plan.params
    dist = plan.districts[d]

    u0, v0 = dist.u_lines[ku - 1], dist.v_lines[kv - 1]
    span_u, span_v = dist.u_lines[ku] - u0, dist.v_lines[kv] - v0
    # Density (0 suburb .. 1 downtown) from the district and the block centre's distance to the city centre.
    uc, vc = u0 + span_u / 2, v0 + span_v / 2
    bx = dist.cx + uc * dist.cos - vc * dist.sin
    by = dist.cy + uc * dist.sin + vc * dist.cos
    dens = np.clip(0.55 * dist.density + 0.6 * np.exp(-(bx**2 + by**2) / (0.32 * plan.size_m) ** 2), 0, 1)

    kind = hb(0)
    park = kind < p.park_share
    plaza = (kind >= p.park_share) & (kind < p.park_share + 0.03)
    # Lots: a grid over the block, bigger downtown; suburbs have detached houses with gaps.
    lot = _lerp(11.0, 26.0, dens) * (0.8 + 0.4 * hb(1))
    n_u = np.maximum(1, np.round(span_u / lot))
    n_v = np.maximum(1, np.round(span_v / lot))
    lu = np.clip(np.floor((u - u0) / span_u * n_u), 0, n_u - 1)
    lv = np.clip(np.floor((v - v0) / span_v * n_v), 0, n_v - 1)
    hl = _Draws(plan.seed, (_TAG_LOT, d), ku, kv, lu, lv)

    detached = hl(0) < _lerp(0.85, 0.1, dens)
    gap = np.where(detached, 1.5 + 2.0 * hl(1), -np.inf)
    setback = _lerp(4.0, 0.0, dens) * hb(2)
    depth = _lerp(11.0, 28.0, dens) * (0.8 + 0.4 * hb(3))
    # Distance to each face of the footprint (street side, courtyard side, four lot sides).
    fu = (u - u0) - lu * span_u / n_u
    fv = (v - v0) - lv * span_v / n_v
    faces = np.stack(
        [
            inner - setback,
            setback + depth - inner,
            fu - gap,
            span_u / n_u - gap - fu,
            fv - gap,
            span_v / n_v - gap - fv,
        ]
    )
    present = hl(2) < p.building_density * (0.75 + 0.25 * dens)
    built = (faces.min(axis=0) >= 0) & present & ~park & ~plaza

    z = (hl(3) + hl(4) + hl(5) - 1.5) * 2.0  # roughly standard normal
    mean_floors = 1.5 + (p.max_floors - 1.5) * dens**2.4
    floors = np.clip(np.round(mean_floors * np.exp(0.4 * z)), 1, p.max_floors)
    pitched = (floors <= 3) & (hl(6) < 0.7)
    ridge = np.minimum(0.3 * depth, 4.0) * (1 - np.abs(2 * (inner - setback) / depth - 1))
    h = floors * FLOOR_M + 0.5 + np.where(pitched, ridge, 0.0)
    mat = (np.searchsorted(dist.palette, hl(7), side="right") * 4 + np.floor(hl(8) * 4)).astype(np.uint8)

    out_e, out_n = outward
    nearest = np.argmin(faces, axis=0)
    c, s = dist.cos, dist.sin
    normal_e = np.choose(nearest, [out_e, -out_e, -c, c, s, -s])
    normal_n = np.choose(nearest, [out_n, -out_n, -s, s, -c, c])

    cls, height, material, facing = grids
    yard = np.where(hb(4) < 0.35 + 0.45 * (1 - dens), GRASS, PAVED)
    cls[idx] = np.where(built, BUILDING, np.where(park, GRASS, np.where(plaza, PAVED, yard)))
    height[idx] = np.where(built, h, 0.0)
    material[idx] = mat
    facing[idx] = _facing(normal_e, normal_n)


def _add_river(plan: _Plan, x, y, bridge, cls, height) -> None:
    angle, offset, amp, wavelength, phase, width = plan.river
    s = x * np.cos(angle) + y * np.sin(angle)
    t = -x * np.sin(angle) + y * np.cos(angle) - offset
    off = np.abs(t - amp * np.sin(2 * np.pi * s / wavelength + phase))
    bank = (off < width / 2 + 10) & ~bridge
    cls[bank] = np.where(off[bank] < width / 2, WATER, GRASS)
    height[bank] = 0


def _add_landmark(mark: _Landmark, x, y, on_road, grids) -> None:
    """A stepped round tower with a spire on a paved plaza."""
    cls, height, material, facing = grids
    r = np.hypot(x - mark.x, y - mark.y)
    plaza = (r < mark.radius + 10) & ~on_road
    cls[plaza] = PAVED
    height[plaza] = 0
    tower = r < mark.radius
    cls[tower] = BUILDING
    material[tower] = mark.material
    facing[tower] = _facing(x[tower] - mark.x, y[tower] - mark.y)
    steps = np.where(r < 0.12 * mark.radius, 1.15, np.where(r < 0.6 * mark.radius, 1.0, 0.72))
    height[tower] = (mark.height * steps[tower]).astype(np.float32)


# ----------------------------------------------------------------------------- trees
@dataclass(frozen=True)
class _Trees:
    """Trees on a jittered lattice of ``TREE_SPACING_M``: (rows, cols) arrays."""

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray  # 0 where there is no tree
    height: np.ndarray


def _plant_trees(plan: _Plan) -> _Trees:
    """Parks get many trees, yards some, sidewalks a row of street trees."""
    half = plan.size_m / 2
    m = int(np.ceil(plan.size_m / TREE_SPACING_M)) + 2
    a, b = np.meshgrid(np.arange(m) - 1, np.arange(m) - 1, indexing="ij")

    def h(k: int) -> np.ndarray:  # a draw per lattice point
        return hash_uniform(plan.seed, _TAG_TREE, a, b, k)

    x = -half + (b + 0.5) * TREE_SPACING_M + (h(0) - 0.5) * 0.7 * TREE_SPACING_M
    y = half - (a + 0.5) * TREE_SPACING_M - (h(1) - 0.5) * 0.7 * TREE_SPACING_M
    lay = _layout(plan, x.ravel(), y.ravel())
    cls = lay.cls.reshape(x.shape)
    prob = np.select([cls == GRASS, cls == PAVED, cls == SIDEWALK], [0.45, 0.12, 0.5], 0.0)
    prob *= plan.params.tree_density * np.array([d.greenery for d in plan.districts])[lay.district.reshape(x.shape)]
    small = cls == SIDEWALK
    radius = np.where(h(2) < prob, np.where(small, 2.0, 2.5) + h(3) * np.where(small, 1.2, 2.5), 0.0)
    height = np.where(small, 5.0, 6.0) + np.where(small, 4.0, 7.0) * h(4)
    return _Trees(x, y, radius, height)


def _stamp_trees(trees: _Trees, scene: Scene, chunk: int = 2048) -> None:
    """Raise tree crowns (domes) over open ground, in place; crowns stop at walls, roads and water.

    Each tree is stamped over the square of cells around it, a few thousand trees at a time,
    so the cost follows the number of trees, not the size of the grid.
    """
    keep = trees.radius > 0
    tx, ty, tr, th = trees.x[keep], trees.y[keep], trees.radius[keep], trees.height[keep]
    if tx.size == 0:
        return
    n, gsd, half = scene.n, scene.gsd, scene.size_m / 2
    reach = int(np.ceil(tr.max() / gsd))
    offsets = np.arange(-reach, reach + 1)
    off_r, off_c = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
    flat_cls, flat_h = scene.cls.reshape(-1), scene.height.reshape(-1)
    for i in range(0, tx.size, chunk):
        x, y, r, h = (a[i : i + chunk, None] for a in (tx, ty, tr, th))
        rows = np.floor((half - y) / gsd).astype(np.int64) + off_r
        cols = np.floor((x + half) / gsd).astype(np.int64) + off_c
        q = np.hypot((cols + 0.5) * gsd - half - x, half - (rows + 0.5) * gsd - y) / r
        inside = (q < 1) & (rows >= 0) & (rows < n) & (cols >= 0) & (cols < n)
        cell = (rows * n + cols)[inside]
        dome = (h * (0.55 + 0.45 * np.sqrt(np.clip(1 - q * q, 0, 1))))[inside].astype(np.float32)
        open_ground = np.isin(flat_cls[cell], (GRASS, PAVED, SIDEWALK, TREE))
        np.maximum.at(flat_h, cell[open_ground], dome[open_ground])
        flat_cls[cell[open_ground]] = TREE
    centre = scene.cell_index(half - ty, tx + half)
    scene.material.reshape(-1)[centre[flat_cls[centre] == TREE]] = TRUNK


# ----------------------------------------------------------------------------- building
def build_scene(params: SceneParams, size_m: float, gsd: float, seed: int, rows_per_strip: int = 128) -> Scene:
    """Rasterize the city of ``seed`` at ``gsd``, strip by strip (bounded memory)."""
    plan = _make_plan(params, size_m, seed)
    n = int(round(size_m / gsd))
    cls = np.empty((n, n), dtype=np.uint8)
    height = np.empty((n, n), dtype=np.float32)
    material = np.empty((n, n), dtype=np.uint8)
    facing = np.empty((n, n), dtype=np.uint8)
    cols = np.arange(n)
    for r0 in range(0, n, rows_per_strip):
        rr, cc = np.meshgrid(np.arange(r0, min(n, r0 + rows_per_strip)) + 0.5, cols + 0.5, indexing="ij")
        x = cc.ravel() * gsd - size_m / 2
        y = size_m / 2 - rr.ravel() * gsd
        lay = _layout(plan, x, y)
        strip = slice(r0, r0 + rr.shape[0])
        cls[strip] = lay.cls.reshape(rr.shape)
        height[strip] = lay.height.reshape(rr.shape)
        material[strip] = lay.material.reshape(rr.shape)
        facing[strip] = lay.facing.reshape(rr.shape)
    scene = Scene(size_m, gsd, cls, height, material, facing)
    _stamp_trees(_plant_trees(plan), scene)
    return scene
