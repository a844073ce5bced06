"""The photo witness's matcher taught what stays the same across captures, on the training photos that
several captures saw.

The witness matches photos by the frozen ImageNet descriptors of the street encoder's mid-level map
(:mod:`zoomloc.inference.local_match`): nothing there was ever shown two captures of one place. The
training photos were, and their GPS and compass say which: a training photo's **positives** are the
photos of *other* captures taken within :attr:`LocalHeadConfig.positive_m` and facing within
:attr:`~LocalHeadConfig.positive_deg` of it (on the bench city's ``sequence`` split 4417 of 15 962
training photos have one); its **negatives** are photos facing its way farther than
:attr:`~LocalHeadConfig.negative_m`, drawn from the :attr:`~LocalHeadConfig.candidates` most like it by
their pooled descriptors (the look-alikes a lookup has to rank below the place itself). A
:class:`~zoomloc.inference.local_match.LocalHead` (a linear map of the descriptors, added to them) is fitted
with the cross-entropy of the positive among them, scored as the matcher scores (the gradient through the
counted pairs' cosines), the GSV-Cities recipe on the matcher's own score. It starts as the identity, so
an unfitted head is the frozen matcher; the witness's fit keeps it only where it finds more val photos.

On the bench city's ``sequence`` split it lifts the witness's lookup from 14.6 to 17.2 % within 25 m on
new captures (``benchmarks/results/bench/NOTES.md``, nineteenth session). It depends on the city's maps
and training photos only, not on a model, so a zoom and a retrieval model of one split share it: it is
fitted once (a couple of minutes on 2 cores) and kept beside the local cache
(``local_head_<key>.safetensors``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import shapely
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from zoomloc.core.atomic import atomic_path
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.headings import heading_gap_deg
from zoomloc.inference.local_match import LocalHead, LocalMaps, match_scores, unit_locations

HEAD_VERSION = 1  # what a kept head was fitted by; a head of another version is fitted anew
POOL_CHUNK = 512  # photos' maps read and pooled at once (29 MB of float16 for Lite0)


@dataclass(frozen=True)
class LocalHeadConfig:
    """What a local head is fitted on and how (see the module docstring)."""

    positive_m: float = 15.0  # a photo of another capture this close and…
    positive_deg: float = 30.0  # …facing this close to a training photo's heading shows its place
    negative_m: float = 50.0  # a photo farther than this shows another place
    candidates: int = 100  # negatives are drawn from this many photos most like a training photo (facing its way)
    negatives: int = 15  # per training photo and step, beside its one positive
    batch: int = 32  # training photos per step
    steps: int = 300  # at most: the bench city's val peaked at 300 steps, 2.2 passes over its 4417 photos with a positive (600: lower)…
    passes: float = 3.0  # …and at most this many passes over the photos with a positive (a small city overfits sooner)
    lr: float = 1e-3
    temperature: float = 0.02  # of the softmax over match scores (1: a photo matched with itself)
    seed: int = 0


def cross_capture_positives(xy: np.ndarray, heading_deg: np.ndarray, captures: np.ndarray, cfg: LocalHeadConfig) -> list[np.ndarray]:
    """Each photo's positives (indices, see the module docstring) among photos at ``xy`` ``[M, 2]`` (metres) facing
    ``heading_deg`` ``[M]`` (NaN: unknown, then never a positive) of ``captures`` ``[M]``."""
    points = shapely.points(xy)
    near = shapely.STRtree(points).query(points, predicate="dwithin", distance=cfg.positive_m)
    a, b = near
    turn = heading_gap_deg(heading_deg[a], heading_deg[b])
    keep = (captures[a] != captures[b]) & (turn <= cfg.positive_deg)
    a, b = a[keep], b[keep]
    return np.split(b[np.argsort(a, kind="stable")], np.cumsum(np.bincount(a, minlength=len(xy)))[:-1])


@torch.no_grad()
def look_alike_negatives(
    local: LocalMaps, rows: np.ndarray, xy: np.ndarray, heading_deg: np.ndarray, cfg: LocalHeadConfig
) -> list[np.ndarray]:
    """Each photo's negatives (indices, see the module docstring) among the photos at cache rows ``rows`` ``[M]``,
    by the mean of their unit descriptors: facing within :attr:`~LocalHeadConfig.positive_deg` of it (or either
    heading unknown), farther than :attr:`~LocalHeadConfig.negative_m`."""
    pooled = torch.cat([_pooled(local, rows[i : i + POOL_CHUNK]) for i in range(0, len(rows), POOL_CHUNK)])
    out = []
    for start in range(0, len(rows), POOL_CHUNK):
        part = np.arange(start, min(start + POOL_CHUNK, len(rows)))
        sims = pooled[part] @ pooled.T
        turn = heading_gap_deg(heading_deg[part, None], heading_deg[None])
        sims -= 2.0 * torch.from_numpy(turn > cfg.positive_deg)
        sims[torch.arange(len(part)), torch.from_numpy(part)] = -9.0
        top = sims.topk(min(cfg.candidates, len(rows) - 1), dim=1).indices.numpy()
        far = np.linalg.norm(xy[top] - xy[part, None], axis=-1) > cfg.negative_m
        out.extend(t[f] for t, f in zip(top, far))
    return out


def _pooled(local: LocalMaps, rows: np.ndarray) -> torch.Tensor:
    """Unit means ``[len(rows), C]`` of the photos' unit descriptors: what a look-alike is judged by."""
    return F.normalize(unit_locations(local.cache.plain(rows)).float().mean((1, 2)), dim=-1)


def fit_local_head(
    local: LocalMaps,
    rows: np.ndarray,
    xy: np.ndarray,
    heading_deg: np.ndarray,
    captures: np.ndarray,
    cfg: LocalHeadConfig = LocalHeadConfig(),
) -> LocalHead | None:
    """A head fitted on the training photos at cache rows ``rows`` ``[M]`` (positions ``xy`` in metres, headings,
    captures): deterministic for a seed. None where no photo has both a positive and a negative."""
    positives = cross_capture_positives(xy, heading_deg, captures, cfg)
    negatives = look_alike_negatives(local, rows, xy, heading_deg, cfg)
    anchors = np.flatnonzero([len(p) > 0 and len(n) > 0 for p, n in zip(positives, negatives)])
    if len(anchors) == 0:
        return None
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = LocalHead(local.cache.plain(rows[:1]).shape[2])
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    batch = min(cfg.batch, len(anchors))
    for _ in range(min(cfg.steps, math.ceil(cfg.passes * len(anchors) / batch))):
        a = rng.choice(anchors, batch, replace=False)
        shown = np.stack(
            [
                np.concatenate(
                    [rng.choice(positives[i], 1), rng.choice(negatives[i], cfg.negatives, replace=len(negatives[i]) < cfg.negatives)]
                )
                for i in a
            ]
        )
        queries = head(unit_locations(local.cache.plain(rows[a])))
        candidates = head(unit_locations(local.cache.plain(rows[shown.ravel()]))).unflatten(0, shown.shape)
        loss = F.cross_entropy(match_scores(queries, candidates) / cfg.temperature, torch.zeros(batch, dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval().requires_grad_(False)


def local_head(
    local: LocalMaps, city: CityDir, image_ids: tuple[str, ...], xy: np.ndarray, heading_deg: np.ndarray, captures: np.ndarray,
    cfg: LocalHeadConfig = LocalHeadConfig(),
) -> LocalHead | None:  # fmt: skip
    """The head fitted on ``city``'s training photos ``image_ids`` (their positions, headings and captures):
    read back if kept, else fitted and kept beside the local cache (None: nothing to fit it on)."""
    key = hashlib.sha256(
        json.dumps(
            {"maps": local.cache.path.name, **city.provenance(), "cfg": dataclasses.asdict(cfg), "v": HEAD_VERSION}, sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    path = city.embeddings_dir / f"local_head_{key}.safetensors"
    if path.is_file():
        state = load_file(path)
        head = LocalHead(state["map.weight"].shape[0])
        head.load_state_dict(state)
        return head.eval().requires_grad_(False)
    head = fit_local_head(local, local.cache.rows_of(image_ids), xy, heading_deg, captures, cfg)
    if head is not None:
        with atomic_path(path) as tmp:
            save_file(head.state_dict(), tmp)
    return head
