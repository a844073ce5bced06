"""A capture's photos localized together: a hidden Markov model over each photo's candidates.

One photo of a new capture is rarely placed right, but the truth is often among its K best
cells, and along a capture the true positions follow each other a few metres apart. The fusion
picks, for every photo, one of its candidates, or none (an *outlier*: every candidate wrong),
such that consecutive picks are as far apart as the time between the photos allows.

The model (a hybrid HMM, as speech recognisers use networks' posteriors):

- **Evidence.** A candidate's probability p (the model's posterior for that cell, a prior of
  1/N over the map's N terminal cells) counts as the likelihood ratio p·N; "none of them" as
  the photo's remaining mass 1 − Σp (at least ``outlier_floor``), since a model that spreads
  its probability beyond its K best says so. ``evidence`` < 1 tempers both: consecutive frames
  look alike, so their errors repeat, and K frames are worth less than K independent photos.
- **Motion.** Between photos Δt seconds apart the camera moved at most ``speed_mps``·Δt plus a
  terminal cell (the candidates are cell centres): within that reach every cell is as likely,
  beyond it the density falls off exponentially over ``tail_m`` — a soft limit, so a wrong
  time or a fast stretch costs a penalty instead of breaking the track. Normalised over the
  plane, a cell within reach gets (cell area)/(reach area), so an answer that agrees with its
  neighbour's gains log(N·cell area/reach area) nats: several nats on a city map.
- **Outliers** are bridged: a pick may follow any of the last ``max_skip`` frames' picks, the
  frames between paying their "none" weight and the motion model spanning the whole gap, so
  one absurd frame neither moves the track nor breaks it. Beyond that, the track may restart
  anywhere for ``restart_nats``.

Viterbi gives the track (the most probable sequence of picks), forward-backward each photo's
posterior. An outlier frame's fused position is interpolated in time between its neighbours on
the track. Everything is in log space, vectorised over candidates and gaps; the loop runs over
the photos once each way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CAPTURE_SPEEDS_MPS = {"car": 20.0, "walk": 4.0}  # the fastest a dashcam (town traffic) or a walker moves
NONE = -1  # the state of an outlier frame


@dataclass(frozen=True)
class FusionConfig:
    """How a capture moves and how far its photos' evidence is trusted (see the module docstring)."""

    speed_mps: float = CAPTURE_SPEEDS_MPS["car"]
    tail_m: float | None = None  # the soft penalty's scale beyond the reach; None: one terminal cell
    max_skip: int = 8  # outlier frames in a row a pick may bridge with the motion model kept
    outlier_floor: float = 0.05  # the least weight of "every candidate of this photo is wrong"
    evidence: float = 1.0  # exponent on every photo's probabilities
    restart_nats: float = 12.0  # the cost of breaking the track and starting anywhere

    def __post_init__(self) -> None:
        if not (self.speed_mps > 0 and math.isfinite(self.speed_mps)):
            raise ValueError(f"speed_mps must be a positive number, got {self.speed_mps}")
        if self.tail_m is not None and not self.tail_m > 0:
            raise ValueError(f"tail_m must be positive, got {self.tail_m}")
        if self.max_skip < 1:
            raise ValueError(f"max_skip must be at least 1, got {self.max_skip}")
        if not 0 < self.outlier_floor < 1 or not 0 < self.evidence <= 1 or not self.restart_nats >= 0:
            raise ValueError("outlier_floor must lie in (0, 1), evidence in (0, 1], restart_nats be ≥ 0")


@dataclass(frozen=True)
class FusedTrack:
    """The fusion of one capture of T photos with K candidates each.

    ``state[t]`` is the candidate the track picks for photo t, or :data:`NONE`; ``xy`` the fused
    positions (grid metres; an outlier's interpolated); ``probability[t]`` the posterior of that
    state; ``posterior`` ``[T, K]`` every candidate's, ``outlier_posterior`` ``[T]`` the rest.
    """

    state: np.ndarray
    xy: np.ndarray
    probability: np.ndarray
    posterior: np.ndarray
    outlier_posterior: np.ndarray
    log_evidence: float  # log Σ over every path of its weight: how well the motion explains the evidence
    log_score: float  # the track's own log-weight (the best path's)


def fuse(xy: np.ndarray, probs: np.ndarray, times_s: np.ndarray, cfg: FusionConfig, *, cell_m: float, n_cells: int) -> FusedTrack:
    """Fuse one capture: candidates' positions ``xy`` ``[T, K, 2]`` (metres, a conformal CRS such as the
    grid's), their probabilities ``[T, K]`` (a photo's sum at most 1; 0 pads a photo with fewer), the
    photos' times ``[T]`` (seconds, non-decreasing), over a map of ``n_cells`` cells of side ``cell_m``."""
    xy, probs, times_s = np.asarray(xy, float), np.asarray(probs, float), np.asarray(times_s, float)
    t_len, k = probs.shape
    if xy.shape != (t_len, k, 2) or times_s.shape != (t_len,):
        raise ValueError(f"xy must be [T, K, 2] and times [T] for probabilities {probs.shape}, got {xy.shape}, {times_s.shape}")
    if np.any(np.diff(times_s) < 0):
        raise ValueError("a capture's times must be non-decreasing")
    with np.errstate(divide="ignore"):
        emit = cfg.evidence * np.log(probs)  # [T, K]; -inf pads
        none = cfg.evidence * np.log(np.maximum(1.0 - probs.sum(1), cfg.outlier_floor))  # [T]
    lattice = _Lattice(emit, none, _transitions(xy, times_s, cfg, cell_m, n_cells), cfg.restart_nats)
    state, log_score = lattice.viterbi()
    posterior, outlier, log_evidence = lattice.posteriors()
    picked = state != NONE
    chosen = np.where(picked[:, None], xy[np.arange(t_len), np.maximum(state, 0)], np.nan)
    probability = np.where(picked, posterior[np.arange(t_len), np.maximum(state, 0)], outlier)
    return FusedTrack(state, _fill_outliers(chosen, picked, times_s, xy, probs), probability, posterior, outlier, log_evidence, log_score)


def _transitions(xy: np.ndarray, times_s: np.ndarray, cfg: FusionConfig, cell_m: float, n_cells: int) -> np.ndarray:
    """Log-weight ``[G, T, K, K]`` of picking candidate j of photo t after candidate i of photo t − g − 1
    (:func:`motion_log_weight`); pairs before the first photo are -inf."""
    t_len, k = xy.shape[:2]
    tail = cell_m if cfg.tail_m is None else cfg.tail_m
    out = np.full((cfg.max_skip, t_len, k, k), -np.inf, np.float32)
    for g in range(1, min(cfg.max_skip, t_len - 1) + 1):
        d = np.linalg.norm(xy[:-g, :, None, :] - xy[g:, None, :, :], axis=-1)  # [T-g, K, K]
        reach = cfg.speed_mps * (times_s[g:] - times_s[:-g]) + cell_m  # [T-g]
        out[g - 1, g:] = motion_log_weight(d, reach[:, None, None], tail, cell_m, n_cells)
    return out


def motion_log_weight(d: np.ndarray, reach: np.ndarray, tail: float, cell_m: float, n_cells: int) -> np.ndarray:
    """log(N · P(a cell ``d`` metres away | the previous one)), the camera able to move ``reach`` metres.

    The motion density is uniform within the reach D and falls off as exp(−(r − D)/λ) beyond it
    (λ = ``tail``), normalised over the plane (π D² + 2π λ (D + λ)); times a cell's area, times N
    for the evidence's prior (see the module docstring).
    """
    area = np.pi * reach**2 + 2 * np.pi * tail * (reach + tail)
    return math.log(n_cells * cell_m**2) - np.log(area) - np.maximum(d - reach, 0) / tail


class _Lattice:
    """The HMM's lattice: node (t, j) picks candidate j of photo t; arcs skip up to G frames or restart.

    A path's log-weight is its picks' evidence, its arcs' motion terms, the "none" weight of every
    frame it skips (before its first pick and after its last one too) and ``restart`` per restart.
    ``cum[t]`` is the "none" weight of frames 0..t-1, so frames s+1..t-1 cost cum[t] − cum[s+1].
    """

    def __init__(self, emit: np.ndarray, none: np.ndarray, trans: np.ndarray, restart: float):
        self.emit, self.none, self.trans, self.restart = emit, none, trans, restart
        self.t_len, self.k = emit.shape
        self.g = trans.shape[0]
        self.cum = np.concatenate([[0.0], np.cumsum(none)])

    def _gaps(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The frames s that may precede a pick at t by a skip arc, and the frames between them's weight."""
        s = np.arange(max(0, t - self.g), t)
        return s, self.cum[t] - self.cum[s + 1]

    def forward(self) -> tuple[np.ndarray, float]:
        """Log α ``[T, K]`` (every path into a node, the node's evidence included) and log Z."""
        alpha = np.full((self.t_len, self.k), -np.inf)
        restart = -np.inf  # log Σ over earlier nodes of α + the skipped frames up to t
        for t in range(self.t_len):
            if t:
                restart = np.logaddexp(restart + self.none[t - 1], _lse(alpha[t - 1]))
            s, skipped = self._gaps(t)
            into = [np.full(self.k, self.cum[t]), np.full(self.k, restart - self.restart)]
            if len(s):  # [n, K_i, K_j] → [K_j]
                arcs = alpha[s][:, :, None] + self.trans[t - s - 1, t] + skipped[:, None, None]
                into.append(_lse(arcs.reshape(-1, self.k), axis=0))
            alpha[t] = self.emit[t] + _lse(np.stack(into), axis=0)
        ends = alpha + (self.cum[-1] - self.cum[1:])[:, None]
        return alpha, float(np.logaddexp(self.cum[-1], _lse(ends)))

    def backward(self) -> np.ndarray:
        """Log β ``[T, K]``: every path out of a node to the end, the node's own evidence excluded."""
        beta = np.full((self.t_len, self.k), -np.inf)
        restart = -np.inf  # log Σ over later nodes of evidence + β + the skipped frames from s
        for s in range(self.t_len - 1, -1, -1):
            if s + 1 < self.t_len:
                restart = np.logaddexp(restart + self.none[s + 1], _lse(self.emit[s + 1] + beta[s + 1]))
            t = np.arange(s + 1, min(self.t_len, s + 1 + self.g))
            out = [np.full(self.k, self.cum[-1] - self.cum[s + 1]), np.full(self.k, restart - self.restart)]
            if len(t):  # [n, K_i, K_j] → [K_i]
                later = self.emit[t] + beta[t] + (self.cum[t] - self.cum[s + 1])[:, None]
                arcs = self.trans[t - s - 1, t] + later[:, None, :]
                out.append(_lse(arcs.transpose(1, 0, 2).reshape(self.k, -1), axis=1))
            beta[s] = _lse(np.stack(out), axis=0)
        return beta

    def posteriors(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Each candidate's posterior ``[T, K]``, each frame's outlier posterior ``[T]``, and log Z."""
        alpha, log_z = self.forward()
        posterior = np.exp(alpha + self.backward() - log_z)
        return posterior, np.clip(1.0 - posterior.sum(1), 0.0, 1.0), log_z

    def viterbi(self) -> tuple[np.ndarray, float]:
        """The best path's pick per frame (:data:`NONE` where it skips the frame) and its log-weight."""
        best = np.full((self.t_len, self.k), -np.inf)
        back = np.full((self.t_len, self.k, 2), -1)  # predecessor node (s, i); (-1, -1): the start
        restart, restart_from = -np.inf, (-1, -1)
        for t in range(self.t_len):
            if t:
                i = int(np.argmax(best[t - 1]))
                if best[t - 1, i] > restart + self.none[t - 1]:
                    restart, restart_from = best[t - 1, i], (t - 1, i)
                else:
                    restart += self.none[t - 1]
            s, skipped = self._gaps(t)
            score = np.full(self.k, self.cum[t])
            pred = np.full((self.k, 2), -1)
            if restart - self.restart > self.cum[t]:
                score[:], pred[:] = restart - self.restart, restart_from
            if len(s):
                arcs = (best[s][:, :, None] + self.trans[t - s - 1, t] + skipped[:, None, None]).reshape(-1, self.k)
                top = np.argmax(arcs, axis=0)
                better = arcs[top, np.arange(self.k)] > score
                score = np.where(better, arcs[top, np.arange(self.k)], score)
                pred[better] = np.stack([s[top[better] // self.k], top[better] % self.k], axis=1)
            best[t], back[t] = self.emit[t] + score, pred
        ends = best + (self.cum[-1] - self.cum[1:])[:, None]
        state = np.full(self.t_len, NONE)
        if not np.isfinite(ends).any() or ends.max() <= self.cum[-1]:
            return state, float(self.cum[-1])  # every frame an outlier
        node = tuple(int(v) for v in np.unravel_index(np.argmax(ends), ends.shape))
        score = float(ends[node])
        while node[0] >= 0:
            state[node[0]] = node[1]
            node = tuple(int(v) for v in back[node])
        return state, score


def _lse(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """log Σ exp, -inf for an empty or all -inf sum (no NaN, no warning)."""
    m = np.max(x, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - safe), axis=axis, keepdims=True)) + safe
    return out.squeeze(axis) if axis is not None else float(out.squeeze())


def _fill_outliers(chosen: np.ndarray, picked: np.ndarray, times_s: np.ndarray, xy: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Fused positions ``[T, 2]``: the picks, outliers interpolated in time between the picks around them
    (held at the nearest pick at the ends); a capture with no pick keeps each photo's best candidate."""
    if not picked.any():
        return xy[np.arange(len(probs)), np.argmax(probs, axis=1)]
    known = np.flatnonzero(picked)
    t = times_s + 1e-9 * np.arange(len(times_s))  # equal times keep their order
    return np.stack([np.interp(t, t[known], chosen[known, axis]) for axis in (0, 1)], axis=1)
