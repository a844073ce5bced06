"""The capture fusion (zoomloc.inference.fusion): a track from candidates and times alone.

The lattice's sums are checked against every path enumerated by hand on a small capture; the
behaviour a user relies on on made-up captures whose truth is known: a route walked by a
model right half the time comes out right everywhere, and one absurd frame moves nothing.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from zoomloc.inference.fusion import NONE, FusionConfig, _transitions, fuse, motion_log_weight

CELL, N_CELLS = 39.0, 4096  # a 2.5 km map of 39 m cells


def _route_capture(frames: int, seed: int, right_every: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A car at 8 m/s along a straight street, one photo a second; each photo's 32 candidates are
    spread over the map, the truth among them (within its cell) at rank 0 on every ``right_every``-th
    frame and at rank 1-5 otherwise: the model's answer is right on 1 frame in ``right_every``."""
    rng = np.random.default_rng(seed)
    truth = np.stack([300 + 8.0 * np.arange(frames), np.full(frames, 1200.0)], axis=1)
    xy = rng.uniform(0, 2500, (frames, 32, 2))
    probs = np.sort(rng.dirichlet(np.ones(32) * 0.5, frames) * 0.7, axis=1)[:, ::-1]
    for t in range(frames):
        rank = 0 if t % right_every == 0 else int(rng.integers(1, 6))
        xy[t, rank] = truth[t] + rng.uniform(-CELL / 2, CELL / 2, 2)
    return xy, probs, np.arange(frames, dtype=float), truth


def test_a_route_right_half_the_time_comes_out_right_everywhere():
    xy, probs, times, truth = _route_capture(40, seed=1)
    per_photo = np.linalg.norm(xy[:, 0] - truth, axis=1)
    assert 0.4 <= np.mean(per_photo < CELL) <= 0.6  # the model alone: right half the time
    track = fuse(xy, probs, times, FusionConfig(), cell_m=CELL, n_cells=N_CELLS)
    errors = np.linalg.norm(track.xy - truth, axis=1)
    assert errors.max() < CELL, errors.round()
    assert np.all(track.state != NONE)
    assert track.probability.min() > 0.5  # and the capture is sure of it


def test_one_absurd_frame_does_not_move_the_track():
    xy, probs, times, truth = _route_capture(30, seed=2, right_every=1)
    clean = fuse(xy, probs, times, FusionConfig(), cell_m=CELL, n_cells=N_CELLS)
    xy[15] = [2400.0, 100.0]  # every candidate of one frame 1.6 km off, and the model sure of it
    probs[15] = 0.0
    probs[15, 0] = 0.99
    track = fuse(xy, probs, times, FusionConfig(), cell_m=CELL, n_cells=N_CELLS)
    assert track.state[15] == NONE and track.outlier_posterior[15] > 0.9
    assert np.linalg.norm(track.xy[15] - truth[15]) < CELL  # placed between its neighbours on the street
    others = np.arange(30) != 15
    np.testing.assert_array_equal(track.state[others], clean.state[others])


def test_a_slower_capture_mode_refuses_jumps_a_car_could_make():
    """Two candidate streets 150 m apart: a 15 m/s jump between them each second fits a car, not a walker."""
    frames = 6
    xy = np.zeros((frames, 2, 2))
    xy[:, 0] = np.stack([np.arange(frames) * 2.0, np.zeros(frames)], 1)  # a walker's street
    xy[:, 1] = np.stack([np.arange(frames) * 2.0, np.where(np.arange(frames) % 2, 150.0, 0.0) + 500], 1)  # zig-zag
    probs = np.tile([0.3, 0.5], (frames, 1))  # the zig-zag candidate scores higher on every photo
    times = np.arange(frames, dtype=float)
    walk = fuse(xy, probs, times, FusionConfig(speed_mps=4.0), cell_m=CELL, n_cells=N_CELLS)
    car = fuse(xy, probs, times, FusionConfig(speed_mps=200.0), cell_m=CELL, n_cells=N_CELLS)
    assert np.all(walk.state == 0)
    assert np.all(car.state == 1)


def _paths(t_len: int, k: int, g: int):
    """Every path of the lattice: picked frames, a candidate each, and per consecutive pair a skip arc
    (only within ``g`` frames) or a restart."""
    for picked in itertools.chain.from_iterable(itertools.combinations(range(t_len), n) for n in range(t_len + 1)):
        for cands in itertools.product(range(k), repeat=len(picked)):
            gaps = [b - a for a, b in zip(picked, picked[1:])]
            for arcs in itertools.product(("skip", "restart"), repeat=len(gaps)):
                if all(arc == "restart" or gap <= g for arc, gap in zip(arcs, gaps)):
                    yield picked, cands, arcs


def test_the_lattice_sums_every_path_and_viterbi_finds_the_best_one():
    rng = np.random.default_rng(3)
    t_len, k = 4, 2
    cfg = FusionConfig(speed_mps=5.0, max_skip=2, outlier_floor=0.1, evidence=0.8, restart_nats=3.0)
    xy = rng.uniform(0, 200, (t_len, k, 2))
    probs = rng.dirichlet(np.ones(k + 1), t_len)[:, :k]
    times = np.cumsum(rng.uniform(0.5, 3, t_len))
    emit = cfg.evidence * np.log(probs)
    none = cfg.evidence * np.log(np.maximum(1 - probs.sum(1), cfg.outlier_floor))
    trans = _transitions(xy, times, cfg, CELL, N_CELLS)
    weights = []
    for picked, cands, arcs in _paths(t_len, k, cfg.max_skip):
        w = sum(none[t] for t in range(t_len) if t not in picked) + sum(emit[t, j] for t, j in zip(picked, cands))
        for (s, i), (t, j), arc in zip(zip(picked, cands), zip(picked[1:], cands[1:]), arcs):
            w += -cfg.restart_nats if arc == "restart" else trans[t - s - 1, t, i, j]
        weights.append(w)
    track = fuse(xy, probs, times, cfg, cell_m=CELL, n_cells=N_CELLS)
    assert track.log_evidence == pytest.approx(float(np.logaddexp.reduce(weights)), abs=1e-4)
    assert track.log_score == pytest.approx(max(weights), abs=1e-4)
    np.testing.assert_allclose(track.posterior.sum(1) + track.outlier_posterior, 1.0, atol=1e-6)
    assert np.all((track.posterior >= 0) & (track.posterior <= 1 + 1e-9))


def test_the_motion_model_is_a_density_over_the_plane():
    """P(cell | previous) integrated over the plane (rings of radius r, area 2πr dr) is 1."""
    reach, tail, cell = 70.0, 39.0, 39.0
    r = np.linspace(0, reach + 40 * tail, 200_001)
    density = np.exp(motion_log_weight(r, reach, tail, cell, n_cells=1)) / cell**2  # per square metre
    assert math.isclose(float(np.trapezoid(density * 2 * np.pi * r, r)), 1.0, rel_tol=1e-4)


def test_times_that_go_back_are_refused():
    xy, probs, times, _ = _route_capture(5, seed=4)
    with pytest.raises(ValueError, match="non-decreasing"):
        fuse(xy, probs, times[::-1], FusionConfig(), cell_m=CELL, n_cells=N_CELLS)
