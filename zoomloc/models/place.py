"""The place loss: street embeddings of one place close together across captures, of other places apart.

The zoom's cross-entropy and retrieval's InfoNCE both reach the street encoder only through the
map, and a crowd-sourced city has few photos per terminal cell, most of them from one capture: the
encoder can fit a cell by how its one capture looked. Place recognition's answer (GSV-Cities,
MixVPR) is a metric loss between photos: two photos of *other captures* taken within
``radius_m`` of each other, looking the same way (within ``heading_deg``), are a positive pair;
photos more than twice the radius apart a negative one; everything in between says nothing.
The loss is Wang et al.'s multi-similarity loss with its pair miner, as GSV-Cities trains it
(α = 1, β = 50, λ = 0, margin 0.1), over the pairs of a batch that
:class:`~zoomloc.data.batches.PlaceOrder` fills with such positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoomloc.geo.headings import heading_gap_deg

MS_ALPHA, MS_BETA, MS_BASE, MS_MARGIN = 1.0, 50.0, 0.0, 0.1


@dataclass(frozen=True)
class PlaceConfig:
    """The place loss's weight beside the model's own loss (0: off) and what makes two photos one place."""

    weight: float = 0.0
    radius_m: float = 25.0
    heading_deg: float = 60.0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.radius_m <= 0 or not 0 < self.heading_deg <= 180:
            raise ValueError(f"place: weight must be ≥ 0, radius_m > 0, heading_deg in (0, 180], got {self}")


def place_pairs(xy: np.ndarray, heading_deg: np.ndarray, captures: np.ndarray, cfg: PlaceConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative pair masks ``[B, B]`` of photos at ``xy`` ``[B, 2]`` (metres), with their
    headings (NaN: unknown, taken to agree) and capture codes: the one definition of "one place",
    which the loss's batches (:class:`~zoomloc.data.batches.PlaceOrder`) and the loss both read.

    Distances are differences of float64 coordinates, pair by pair: projected metres are millions
    (UTM northings), and float32 or a matrix-product distance would lose them to cancellation
    (every photo "within 25 m" of every other).
    """
    xy = np.asarray(xy, dtype=np.float64)
    heading, captures = np.asarray(heading_deg, dtype=np.float64), np.asarray(captures)
    distance = np.hypot(*np.moveaxis(xy[:, None, :] - xy[None, :, :], -1, 0))
    turn = heading_gap_deg(heading[:, None], heading[None, :])
    positive = (captures[:, None] != captures[None, :]) & (distance <= cfg.radius_m) & ~(turn > cfg.heading_deg)
    return positive, distance > 2 * cfg.radius_m


def multi_similarity_loss(embeddings: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """The multi-similarity loss of ``embeddings`` ``[B, D]`` over the mined pairs of the masks; 0 without any.

    Mining keeps a negative more similar than the anchor's least similar positive less the margin,
    and a positive less similar than its most similar negative plus the margin: the pairs that
    still teach something. Each anchor with both kinds kept contributes
    ``log(1 + Σ_pos e^{-α(s - λ)}) / α + log(1 + Σ_neg e^{β(s - λ)}) / β``; the loss is their mean.
    """
    e = F.normalize(embeddings.float(), dim=-1)
    sim = e @ e.T
    inf = torch.tensor(float("inf"), device=sim.device)
    hardest_pos = torch.where(positive, sim, inf).min(1, keepdim=True).values
    hardest_neg = torch.where(negative, sim, -inf).max(1, keepdim=True).values
    pos = positive & (sim - MS_MARGIN < hardest_neg)
    neg = negative & (sim + MS_MARGIN > hardest_pos)
    anchors = pos.any(1) & neg.any(1)
    if not anchors.any():
        return sim.sum() * 0.0  # keeps the graph: every rank's backward sees the same parameters
    zero = torch.zeros(len(sim), 1, device=sim.device)
    pos_term = torch.cat([zero, torch.where(pos, -MS_ALPHA * (sim - MS_BASE), -inf)], 1).logsumexp(1) / MS_ALPHA
    neg_term = torch.cat([zero, torch.where(neg, MS_BETA * (sim - MS_BASE), -inf)], 1).logsumexp(1) / MS_BETA
    return (pos_term + neg_term)[anchors].mean()
