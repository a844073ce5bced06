"""Two street photos compared location by location: how the photo witness re-ranks the training photos
that a place embedding found.

A place embedding pools a photo into one vector, and pooling throws away where things are: what a new
capture of a street shares with an old one (a façade, a corner, seen a few metres on, under another
sun and through another camera) is a part of the photo, not its average. Matched location by
location, the street encoder's mid-level features (:attr:`~zoomloc.models.encoders.ViewEncoders.street_local_cut`,
stride 16: 112 × 8 × 16 for Lite0 at 128 × 256) find the same place across captures far more often
(``benchmarks/results/bench/NOTES.md``, eighteenth session: on the bench city's ``sequence`` split the
nearest training photo by the zoom's cell head, facing within 30°, is within 25 m for 6.4 % of the test
photos; its best 100 re-ranked by these matches, 14.4 %), as re-rankers of visual place recognition
do (Patch-NetVLAD, SuperGlue-style verification), at a fraction of their cost.

The score of a candidate for a query: each location's descriptor is matched to its most similar one
in the other photo, both ways; a mutual pair counts when its column offset lies within
:data:`MATCH_COLUMNS` of the pairs' median offset and its rows within :data:`MATCH_ROWS` (two photos of
one place along a street see it shifted sideways, not scattered: the spatial check of Patch-NetVLAD's
RAPID scoring, reduced to one shift); the counted pairs' cosines are summed over the query's
locations, so 1 is a photo matched with itself and 0 one with nothing in common.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoomloc.core.errors import InputError
from zoomloc.data.photos import street_input
from zoomloc.data.street_cache import StreetCache
from zoomloc.models.encoders import ViewEncoders

MATCH_COLUMNS = 2  # a pair counts this many map columns from the median shift or closer (32 px at stride 16)…
MATCH_ROWS = 1  # …and this many rows from its own (a camera's pitch and height move the view up and down a little)
RERANK = 100  # the candidates re-ranked per query: the frozen maps' best (30 → 13.2, 100 → 13.6, 200 → 13.1 % within 50 m);
# through a fitted head a deeper list can pay, which the witness's fit tries (photo_prior.FIT_DEEPER_RERANKS)
MATCHED_PAIRS = 1600  # (query, candidate) pairs matched at once: 16 queries × 100 candidates, 92 MB of Lite0's maps
# in float32 and 105 MB of similarities; a deeper re-ranking matches fewer queries at once
DESCRIBED_PHOTOS = 2048  # candidate photos read and described at once, each once for the queries that share it
# (neighbouring photos of a capture share most of theirs); 2048 maps of Lite0 are 120 MB in float32, a few times that while read


def unit_locations(maps: Tensor) -> Tensor:
    """``[N, n, C, h, w]`` maps (n crops of a photo, side by side) → ``[N, h, n·w, C]`` unit descriptors (float16)."""
    n = maps.shape[1]
    grid = torch.cat([maps[:, i] for i in range(n)], dim=-1) if n > 1 else maps[:, 0]
    return F.normalize(grid.float().permute(0, 2, 3, 1), dim=-1).half()


def match_scores(query: Tensor, candidates: Tensor) -> Tensor:
    """``[Q, K]`` scores of candidates ``[Q, K, h, w, C]`` for queries ``[Q, h, w, C]`` (see the module docstring)."""
    q, k, h, w, c = candidates.shape
    sims = torch.einsum("qlc,qkmc->qklm", query.reshape(q, h * w, c).float(), candidates.reshape(q, k, h * w, c).float())
    best, forward = sims.max(dim=3)  # each query location's most similar candidate location [Q, K, L]
    # each candidate location's most similar query location [Q, K, L]: max's indices, the same as argmax's (the
    # first of equals) in a third of its time over a dimension that is not the last
    backward = sims.max(dim=2).indices
    here = torch.arange(h * w)
    mutual = torch.gather(backward, 2, forward) == here
    column_shift = (forward % w - here % w).float()
    row_shift = forward // w - here // w
    median = torch.where(mutual, column_shift, torch.nan).nanmedian(dim=2, keepdim=True).values
    counted = mutual & ((column_shift - median).abs() <= MATCH_COLUMNS) & (row_shift.abs() <= MATCH_ROWS)
    return (best * counted).sum(dim=2) / (h * w)


class LocalHead(nn.Module):
    """Unit descriptors ``[..., C]`` mapped to the ones the matcher compares: a linear map added to them, renormalised
    (:mod:`zoomloc.inference.local_head` fits it across captures). It starts at zero: an unfitted head changes nothing."""

    def __init__(self, channels: int):
        super().__init__()
        self.map = nn.Linear(channels, channels)
        nn.init.zeros_(self.map.weight)
        nn.init.zeros_(self.map.bias)

    def forward(self, units: Tensor) -> Tensor:
        x = units.float()
        return F.normalize(x + self.map(x), dim=-1)


@dataclass(frozen=True)
class LocalMaps:
    """A city's photos' mid-level maps (its local cache: :func:`~zoomloc.data.street_cache.local_cache`), read by
    cache row, and any other photo's, encoded live by ``encoders`` (the ones that made the cache); as unit
    descriptors, or through ``head`` where one was fitted (``of_*`` give what the matcher compares)."""

    cache: StreetCache
    encoders: ViewEncoders
    head: LocalHead | None = None

    def of_rows(self, rows: np.ndarray) -> Tensor:
        """Descriptors ``[len(rows), h, w, C]`` of the cache's photos ``rows``."""
        return self.describe(unit_locations(self.cache.plain(rows)))

    def of_ids(self, image_ids: Sequence[str]) -> Tensor:
        """Descriptors ``[N, h, w, C]`` of the city's photos ``image_ids``."""
        return self.of_rows(self.cache.rows_of(image_ids))

    @torch.no_grad()
    def of_inputs(self, crops: Tensor) -> Tensor:
        """Descriptors ``[N, h, w, C]`` of street encoder inputs ``[N, 3, H, W]`` or ``[N, n, 3, H, W]`` (any photo)."""
        if crops.dim() == 4:
            crops = crops[:, None]
        return self.describe(unit_locations(self.encoders.eval().street_local(crops)))

    def of_photos(self, photos: Sequence[str]) -> Tensor:
        """Descriptors ``[N, h, w, C]`` of photo files (plain crops, as the cache holds them)."""
        transforms = self.encoders.transforms()
        return self.of_inputs(torch.stack([street_input(p, transforms) for p in photos]))

    @torch.no_grad()
    def describe(self, units: Tensor) -> Tensor:
        """Unit descriptors ``[..., C]`` (:func:`unit_locations`) as the matcher compares them: through the head, if any."""
        return units if self.head is None else self.head(units).half()


def candidate_scores(local: LocalMaps, query: Tensor, rows: np.ndarray) -> np.ndarray:
    """:func:`match_scores` ``[Q, K]`` of the candidates (cache rows ``[Q, K]``) of queries ``[Q, h, w, C]``, in the
    candidates' order: the caller ranks them (a re-ranking at several depths ranks each depth's first candidates)."""
    scores = np.empty(rows.shape)
    chunk = _query_chunk(rows.shape[1])
    for block, photos in _blocks(rows, chunk):
        # in float32 once per photo, not once per query that has it among its candidates
        described = local.of_rows(photos).float()
        if described.shape[1:] != query.shape[1:]:
            raise InputError(f"the query maps {tuple(query.shape[1:])} do not fit the local cache's {tuple(described.shape[1:])}")
        which = torch.from_numpy(np.searchsorted(photos, rows[block]))
        for start in range(0, len(which), chunk):
            part = slice(block.start + start, block.start + start + chunk)
            scores[part] = match_scores(query[part], described[which[start : start + chunk]]).numpy()
    return scores


def _query_chunk(candidates: int) -> int:
    """The queries matched at once when each has ``candidates``: :data:`MATCHED_PAIRS` pairs, at least one query."""
    return max(1, MATCHED_PAIRS // max(candidates, 1))


def _blocks(rows: np.ndarray, chunk: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Runs of queries (in whole chunks of ``chunk``) whose candidates ``rows[run]`` are at most
    :data:`DESCRIBED_PHOTOS` distinct photos (or one chunk's, however many), with those photos, sorted."""
    start = 0
    while start < len(rows):
        end = min(start + chunk, len(rows))
        photos = np.unique(rows[start:end])
        while end < len(rows) and len(more := np.union1d(photos, rows[end : end + chunk])) <= DESCRIBED_PHOTOS:
            photos, end = more, min(end + chunk, len(rows))
        yield slice(start, end), photos
        start = end
