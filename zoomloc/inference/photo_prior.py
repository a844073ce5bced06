"""The city's geotagged photos as a second witness beside the map.

A model trained on a city's street photos reads the map; the same photos, kept with their GPS
positions, can also be asked directly: which of them looks most like the query? On the bench
city's ``photo`` protocol each witness alone is right (within 50 m) for about half of the test
photos, and one of the two is right for 68 % of them (``benchmarks/results/bench/NOTES.md``):
they fail on different photos, and each knows when it is sure. So a query's answer weighs both:

- the model's candidates (a zoom's beam, a retrieval's best cells) with their calibrated
  probabilities, times ``1 − weight``;
- the ``neighbours`` training photos most similar to the query (cosine of the model's place
  embeddings, :meth:`~zoomloc.models.base.LocalizationModel.place_embedding`), at their recorded
  positions, with a softmax of their similarities at ``temperature``, times ``weight``. Where the
  query's compass heading is known, photos facing more than ``heading_deg`` away from it rank after
  every photo facing its way: a photo looking the other way down a street shows other things, and
  on the bench city leaving such photos out lifts the lookup by a half on new captures and by ten
  points within 100 m on the paper's protocol (``benchmarks/results/bench/NOTES.md``). Where the
  query's mid-level maps are known too, the ``rerank`` most similar photos are re-ranked by matching
  them location by location (:mod:`zoomloc.inference.local_match`), and their scores stand for the
  similarities.

Candidates closer than :data:`SAME_ANSWER_CELLS` terminal cells are the same answer (a photo
inside a cell lies that close to its centre, the centres of two neighbouring cells do not): each is
scored by the mass that close to it, the best is taken with everything around it (its position their
mass-weighted mean, so photos pull a cell's centre towards where they were taken), and so on
(non-maximum suppression). The result is a :class:`~zoomloc.models.base.MapIndex` like any other,
so evaluation, a capture's fusion, the CLI and the map use it unchanged. ``temperature`` and
``weight`` are chosen on validation photos (:func:`fit_photo_prior`), as the model's own
temperature is, and ``heading_deg`` and ``rerank`` (whether, and how deep) before them, by the lookup's own accuracy;
:mod:`zoomloc.inference.photo_witness` builds it for a city.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoomloc.geo.grid import ZoomGrid
from zoomloc.geo.headings import heading_gap_deg
from zoomloc.inference.local_match import RERANK, LocalMaps, candidate_scores
from zoomloc.inference.localize import positions_xy
from zoomloc.models.base import Clues, MapIndex
from zoomloc.models.beam import BeamResult

SIMILARITY_CHUNK = 2**24  # query × photo similarities computed at once (64 MB of float32)
SAME_ANSWER_CELLS = 0.75  # candidates this many terminal cells apart or closer are one answer
FIT_TEMPERATURES = (0.01, 0.02, 0.03, 0.05, 0.1)
FIT_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
FIT_HEADINGS = (None, 90.0, 60.0, 45.0, 30.0)  # None: any heading
# Deeper re-rankings tried once the first pays, kept where they find more than DEEPER_GAIN more of the val photos (a
# share, relative): each costs its depth in every later query's matching time. Through the head, on the bench city's
# new captures, 200 candidates found 19.4 % within 50 m where 100 found 18.4 and 400 19.5 (NOTES.md, twentieth session)
FIT_DEEPER_RERANKS = (2 * RERANK,)
DEEPER_GAIN = 0.01
FACING_AWAY = 2.0  # taken off the cosine of a photo facing away: it ranks after every photo facing the query's way
MEMO_ROWS = 100_000  # queries whose photo neighbours a database remembers (a few hundred bytes each)


@dataclass(frozen=True)
class PhotoPriorConfig:
    """How much the training photos say about a query (see the module docstring)."""

    neighbours: int = 16  # the most similar training photos consulted per query
    temperature: float = 0.03  # of the softmax over their cosine similarities
    weight: float = 0.5  # the photos' share of the evidence; the model keeps 1 − weight
    heading_deg: float | None = None  # photos facing farther from a query's heading rank last (None: any heading)
    rerank: int = 0  # the most similar photos re-ranked by their mid-level maps, where a query's are known (0: none)
    local_head: bool = False  # the maps matched through the head fitted across captures (:mod:`zoomloc.inference.local_head`)

    def __post_init__(self) -> None:
        if self.neighbours < 1 or not self.temperature > 0 or not 0 <= self.weight <= 1 or self.rerank < 0:
            raise ValueError(f"need neighbours ≥ 1, temperature > 0, weight in [0, 1] and rerank ≥ 0, got {self}")
        if self.heading_deg is not None and not 0 < self.heading_deg <= 180:
            raise ValueError(f"heading_deg must be None or in (0, 180], got {self.heading_deg}")


@dataclass(frozen=True)
class PhotoDatabase:
    """Training photos as the model compares them: unit place embeddings ``[M, D']``, positions ``[M, 2]``
    (grid metres, as recorded: a GPS fix, not the truth) and compass headings ``[M]`` (degrees clockwise from
    north, NaN where unknown). ``place`` maps a street embedding to its place embedding (the model's
    :meth:`~zoomloc.models.base.LocalizationModel.place_embedding`), so that queries come as the model's
    search takes them; ``local`` holds the photos' mid-level maps, at rows ``local_rows`` ``[M]`` of its cache
    (None: the photos are not re-ranked).

    A query's neighbours are remembered by its content (embedding and clues): an evaluation asks for the same
    test photos' neighbours several times (the best answer, the top 5, each capture's track, the lookup alone),
    and a re-ranked lookup costs about 15 ms a query."""

    embeddings: Tensor
    xy: np.ndarray
    heading_deg: np.ndarray
    place: Callable[[Tensor], Tensor] | None = None
    local: LocalMaps | None = None
    local_rows: np.ndarray | None = None
    _memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(
        cls,
        street: Tensor,
        lon: np.ndarray,
        lat: np.ndarray,
        grid: ZoomGrid,
        place: Callable[[Tensor], Tensor] | None = None,
        heading_deg: np.ndarray | None = None,
        local: tuple[LocalMaps, np.ndarray] | None = None,
    ) -> PhotoDatabase:
        """The photos with street embeddings ``[M, D]`` taken at ``lon``/``lat`` (facing ``heading_deg``, None:
        unknown; their mid-level maps at ``local``'s rows ``[M]`` of its cache) that lie on ``grid``'s map."""
        x, y = grid.to_xy(lon, lat)
        inside = grid.contains_xy(x, y)
        if not inside.any():
            raise ValueError("a photo database needs at least one photo on the map")
        keep = torch.as_tensor(np.flatnonzero(inside))
        heading = np.full(len(x), np.nan) if heading_deg is None else np.asarray(heading_deg, dtype=float)
        maps, rows = (None, None) if local is None else (local[0], np.asarray(local[1])[inside])
        return cls(place_keys(street[keep], place), np.stack([x[inside], y[inside]], axis=-1), heading[inside], place, maps, rows)

    def __len__(self) -> int:
        return len(self.embeddings)

    def nearest(
        self, street: Tensor, k: int, clues: Clues | None = None, within_deg: float | None = None, rerank_k: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and rows ``[Q, k']`` (k' = min(k, M)) of the k photos most like each query (street
        embeddings ``[Q, D]``), best first: their cosines, less :data:`FACING_AWAY` for a photo facing more than
        ``within_deg`` from the query's heading (``clues``; where both are known; None: any heading). With
        ``rerank_k`` and the queries' mid-level maps, the ``rerank_k`` most similar are re-ranked by matching
        their maps, whose scores stand for the cosines (:func:`~zoomloc.inference.local_match.candidate_scores`)."""
        return self.nearest_at(street, k, clues, within_deg, (rerank_k,))[rerank_k]

    @torch.no_grad()
    def nearest_at(
        self, street: Tensor, k: int, clues: Clues | None, within_deg: float | None, depths: Sequence[int]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """:meth:`nearest` at each re-ranking depth of ``depths``, the candidates matched once: a depth's candidates
        are the first of the deepest's, so a fit that compares depths pays for the deepest alone."""
        matchable = self.local is not None and clues is not None and clues.local is not None
        done_at = {depth: depth if matchable else 0 for depth in depths}  # nothing to match: the plain search
        k = min(k, len(self))
        digests = _query_digests(street, clues)
        keys = {depth: [(digest, within_deg, done) for digest in digests] for depth, done in done_at.items()}
        todo = [i for i in range(len(street)) if any(_short(self._memo.get(key[i]), k) for key in keys.values())]
        if todo:
            if len(self._memo) + len(todo) * len(keys) > MEMO_ROWS:
                self._memo.clear()
            found = self._search(street[todo], k, None if clues is None else clues[todo], within_deg, set(done_at.values()))
            for depth, done in done_at.items():
                self._memo.update((keys[depth][i], (s, r)) for i, s, r in zip(todo, *found[done]))
        return {depth: _stacked([self._memo[key] for key in keys[depth]], k) for depth in done_at}

    def _search(
        self, street: Tensor, k: int, clues: Clues | None, within_deg: float | None, depths: set[int]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """:meth:`nearest_at` computed (depths > 0 only where the queries' maps are known)."""
        headings = None if clues is None or within_deg is None else clues.heading_deg
        first = min(max(k, *depths), len(self))
        queries = place_keys(street, self.place).to(self.embeddings.device)
        step = max(1, SIMILARITY_CHUNK // len(self))
        parts = []
        for start in range(0, len(queries), step):
            sims = queries[start : start + step] @ self.embeddings.T
            if headings is not None:
                sims = sims - FACING_AWAY * torch.from_numpy(self._away(headings[start : start + step], slice(None), within_deg)).to(sims)
            parts.append(sims.topk(first, dim=1))
        sims, rows = torch.cat([p.values for p in parts]).cpu().numpy(), torch.cat([p.indices for p in parts]).cpu().numpy()
        found = {0: (sims[:, :k], rows[:, :k])} if 0 in depths else {}
        if max(depths):
            away = np.zeros(rows.shape, dtype=bool) if headings is None else self._away(headings, rows, within_deg)
            scores = candidate_scores(self.local, clues.local, self.local_rows[rows]) - FACING_AWAY * away
            for depth in depths - {0}:
                matched = min(max(k, depth), first)  # the first stage's best `matched`, as a re-ranking this deep sees them
                order = np.argsort(-scores[:, :matched], axis=1, kind="stable")[:, :k]
                found[depth] = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
        return found

    def _away(self, headings: np.ndarray, rows: np.ndarray | slice, within_deg: float) -> np.ndarray:
        """Whether photos ``rows`` (``[Q, K]``, or every photo) face more than ``within_deg`` from each query's
        heading ``headings`` ``[Q]``: ``[Q, K]`` (NaN on either side: never away)."""
        query = np.asarray(headings, dtype=float)[:, None]
        photos = self.heading_deg[rows] if isinstance(rows, np.ndarray) else self.heading_deg[None, rows]
        return heading_gap_deg(query, photos) > within_deg


def _query_digests(street: Tensor, clues: Clues | None) -> list[bytes]:
    """One digest per query of everything its neighbours depend on: its embedding, heading and maps."""
    parts = [street.detach().float().cpu().numpy()]
    if clues is not None and clues.heading_deg is not None:
        parts.append(np.asarray(clues.heading_deg, dtype=float)[:, None])
    if clues is not None and clues.local is not None:
        parts.append(clues.local.reshape(len(clues.local), -1).cpu().numpy())
    return [
        hashlib.blake2b(b"".join(np.ascontiguousarray(p[i]).tobytes() for p in parts), digest_size=16).digest() for i in range(len(street))
    ]


def _short(found: tuple[np.ndarray, np.ndarray] | None, k: int) -> bool:
    """Whether a remembered search (None: none) holds fewer than ``k`` neighbours."""
    return found is None or found[0].shape[0] < k


def _stacked(found: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` similarities and rows ``[Q, k]`` of each query's remembered search."""
    if not found:
        return np.empty((0, k)), np.empty((0, k), dtype=np.int64)
    return np.stack([s[:k] for s, _ in found]), np.stack([r[:k] for _, r in found])


@torch.no_grad()
def place_keys(street: Tensor, place: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Unit place embeddings ``[Q, D']`` of street embeddings ``[Q, D]`` (``place`` None: the street embeddings)."""
    return F.normalize((street if place is None else place(street)).float(), dim=-1)


class PhotoPriorIndex(MapIndex):
    """A model's index with the training photos as a second witness (see the module docstring)."""

    def __init__(self, inner: MapIndex, photos: PhotoDatabase, grid: ZoomGrid, cfg: PhotoPriorConfig):
        self.inner, self.photos, self.grid, self.cfg = inner, photos, grid, cfg

    @property
    def temperature(self) -> float:  # the model's own (what its probabilities are read at)
        return self.inner.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.inner.temperature = value

    def search(self, street: Tensor, *, beam: int, topk: int, clues: Clues | None = None) -> list[BeamResult]:
        """The ``topk`` best answers of each query ``[Q, D]`` by both witnesses; the model's own search takes
        ``beam`` and ``topk`` as asked (a zoom's greedy answer stays one candidate), the photos the ``clues``."""
        model = self.inner.search(street, beam=beam, topk=topk, clues=clues)
        sims, rows = self.photos.nearest(street, self.cfg.neighbours, clues, self.cfg.heading_deg, self.cfg.rerank)
        return [combine(self.grid, r, self.photos.xy[rw], s, self.cfg, topk) for r, s, rw in zip(model, sims, rows)]

    def lookup_xy(self, street: Tensor, clues: Clues | None = None) -> np.ndarray:
        """Grid metres ``[Q, 2]`` of each query's most similar photo as the witness looks it up (its heading limit
        and re-ranking): the witness's own answer, what its figures are read against."""
        return self.photos.xy[self.photos.nearest(street, 1, clues, self.cfg.heading_deg, self.cfg.rerank)[1][:, 0]]

    def shuffled(self, seed: int) -> PhotoPriorIndex:
        """The model's map ablation; the photos are no map and keep their places."""
        return PhotoPriorIndex(self.inner.shuffled(seed), self.photos, self.grid, self.cfg)

    @property
    def embedding_bytes(self) -> int:
        return self.inner.embedding_bytes + self.photos.embeddings.numel() * self.photos.embeddings.element_size()

    def calibration_logits(self, street: Tensor, truth: np.ndarray) -> tuple[Tensor, Tensor]:
        return self.inner.calibration_logits(street, truth)


def candidate_xy(grid: ZoomGrid, result: BeamResult) -> np.ndarray:
    """Grid metres ``[n, 2]`` of a search result's candidates: their cells' centres, moved by their offsets."""
    offsets = None if result.offsets is None else result.offsets.cpu().numpy()
    return np.stack(positions_xy(grid, result.paths.cpu().numpy(), offsets), axis=-1)


@dataclass(frozen=True, eq=False)
class Evidence:
    """One query's candidate points ``[n, 2]`` (grid metres: the model's candidates, then its photos'), which lie
    close enough to be one answer ``[n, n]``, the model's probabilities ``[m]`` and the photos' similarities
    ``[n − m]``: what :func:`combine` weighs, apart from the weights, so that a fit tries many on one query."""

    xy: np.ndarray
    near: np.ndarray
    model_probs: np.ndarray
    sims: np.ndarray

    @classmethod
    def of(cls, grid: ZoomGrid, model: BeamResult, photo_xy: np.ndarray, sims: np.ndarray) -> Evidence:
        xy = np.concatenate([candidate_xy(grid, model), photo_xy])
        near = np.linalg.norm(xy[:, None] - xy[None], axis=-1) <= SAME_ANSWER_CELLS * grid.terminal_m
        model_probs = np.maximum(model.log_probs.double().exp().cpu().numpy(), np.finfo(float).tiny)  # an answer even if it underflows
        return cls(xy, near, model_probs, sims)

    def answers(self, cfg: PhotoPriorConfig, topk: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``topk`` best points ``[t, 2]`` and their probabilities ``[t]`` under ``cfg``'s weight and temperature:
        non-maximum suppression over every candidate point, merging what lies close to the best."""
        photo_mass = np.exp((self.sims - self.sims.max()) / cfg.temperature)
        mass = np.concatenate([(1 - cfg.weight) * self.model_probs, cfg.weight * photo_mass / photo_mass.sum()])
        free = mass > 0
        points, probs = [], []
        while len(points) < topk and free.any():
            support = np.where(free, (self.near & free[None]) @ mass, -1.0)
            members = self.near[int(np.argmax(support))] & free
            probs.append(mass[members].sum())
            points.append(mass[members] @ self.xy[members] / probs[-1])
            free &= ~members
        return np.array(points), np.array(probs)


def combine(grid: ZoomGrid, model: BeamResult, photo_xy: np.ndarray, sims: np.ndarray, cfg: PhotoPriorConfig, topk: int) -> BeamResult:
    """One query's answers from the model's candidates and its most similar photos (positions ``[k, 2]``,
    similarities ``[k]``, best first; the first ``cfg.neighbours`` are read): :meth:`Evidence.answers`, as the
    cells (and offsets in them) a search result holds (see the module docstring)."""
    points, probs = Evidence.of(grid, model, photo_xy[: cfg.neighbours], sims[: cfg.neighbours]).answers(cfg, topk)
    paths = grid.path_of_xy(points[:, 0], points[:, 1])
    cx, cy = grid.centre_xy_of_path(paths)
    offsets = np.stack([points[:, 0] - cx, cy - points[:, 1]], axis=-1) / grid.terminal_m
    return BeamResult(
        torch.as_tensor(paths),
        torch.as_tensor(np.log(probs), dtype=torch.float32),
        torch.as_tensor(_step_probs(paths, probs), dtype=torch.float32),
        torch.as_tensor(offsets, dtype=torch.float32),
    )


def _step_probs(paths: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``[n, L]``: the answers' mass in each level's cell of an answer over that in its parent (the first
    level's over 1, the last the answer's own over its parent's), so that a row's product is its probability."""
    prefix = [[probs[(paths[:, :n] == p[:n]).all(1)].sum() for n in range(1, paths.shape[1])] for p in paths]
    chain = np.concatenate([np.ones((len(paths), 1)), np.array(prefix).reshape(len(paths), -1), probs[:, None]], axis=1)
    return chain[:, 1:] / chain[:, :-1]


def fit_photo_prior(
    index: MapIndex,
    photos: PhotoDatabase,
    grid: ZoomGrid,
    street: Tensor,
    truth_xy: np.ndarray,
    *,
    within_m: float,
    beam: int = 1,
    clues: Clues | None = None,
    through_head: Callable[[], LocalMaps | None] | None = None,
) -> tuple[PhotoPriorConfig, dict[str, float]]:
    """The temperature and weight under which ``index`` and ``photos`` place most validation queries (street
    embeddings ``[Q, D]``, true positions ``[Q, 2]`` in grid metres, what else they tell in ``clues``) within
    ``within_m`` at ``beam``; ties go to the smaller weight (the model alone unless the photos add). First the
    photo lookup itself, by the share of queries whose most similar photo lies within ``within_m`` (ties: the
    simpler lookup): the heading limit, then whether the best :data:`~zoomloc.inference.local_match.RERANK`
    are re-ranked by their maps (where the queries' and the photos' are known), and where that pays, whether
    through a head fitted across captures: ``through_head`` gives the photos' maps as the head describes them
    (called only then: fitting one takes minutes; None: no head to fit), the queries' clues hold their plain
    ones; then whether more candidates (:data:`FIT_DEEPER_RERANKS`) re-ranked so find enough more to pay for
    their time (:data:`DEEPER_GAIN`), matched with the shallower where they can be (through the head, which is
    fitted only once the shallower re-ranking pays). Returns it and each (weight, temperature) pair's share (%)."""
    model = index.search(street, beam=beam, topk=1, clues=clues)
    neighbours = PhotoPriorConfig().neighbours

    def lookup(limit: float | None, depths: tuple[int, ...], database: PhotoDatabase = photos, queries: Clues | None = clues):
        """Each depth's share whose most similar photo lies within ``within_m``, and the neighbours searched for
        it (the chosen one's neighbours are what the weights are fitted on), every depth matched at once."""
        found = database.nearest_at(street, neighbours, queries, limit, depths)
        return {
            depth: (float(np.mean(np.linalg.norm(database.xy[f[1][:, 0]] - truth_xy, axis=1) <= within_m)), f) for depth, f in found.items()
        }

    known_headings = clues is not None and clues.heading_deg is not None
    shares = {limit: lookup(limit, (0,))[0] for limit in (FIT_HEADINGS if known_headings else (None,))}
    heading = max(shares, key=lambda limit: (shares[limit][0], limit is None))
    share, (sims, rows) = shares[heading]
    base = PhotoPriorConfig(neighbours=neighbours, heading_deg=heading)
    if clues is not None and clues.local is not None and photos.local is not None:
        reranked = lookup(heading, (RERANK,))
        if reranked[RERANK][0] > share:
            base, (share, (sims, rows)) = replace(base, rerank=RERANK), reranked[RERANK]
            fitted = through_head() if through_head is not None else None
            headed = {}
            if fitted is not None:  # the deeper candidates matched with the shallower (a depth's are the first of the deepest's)
                described = Clues(clues.heading_deg, fitted.describe(clues.local))
                headed = lookup(heading, (RERANK, *FIT_DEEPER_RERANKS), replace(photos, local=fitted), described)
            if headed and headed[RERANK][0] > share:
                base, (share, (sims, rows)), reranked = replace(base, local_head=True), headed[RERANK], headed
            else:
                reranked |= lookup(heading, FIT_DEEPER_RERANKS)
            for depth in FIT_DEEPER_RERANKS:
                if reranked[depth][0] > (1 + DEEPER_GAIN) * share:
                    base, (share, (sims, rows)) = replace(base, rerank=depth), reranked[depth]
    evidence = [Evidence.of(grid, r, photos.xy[rw], s) for r, s, rw in zip(model, sims, rows)]
    tried: dict[str, float] = {}
    best, best_share = replace(base, weight=0.0), -1.0
    # weight 0 is the model alone at any temperature: tried once
    pairs = [(0.0, FIT_TEMPERATURES[0]), *((w, t) for w, t in itertools.product(FIT_WEIGHTS, FIT_TEMPERATURES) if w > 0)]
    for weight, temperature in pairs:
        cfg = replace(base, weight=weight, temperature=temperature)
        answers = np.stack([e.answers(cfg, 1)[0][0] for e in evidence])
        share = float(np.mean(np.linalg.norm(answers - truth_xy, axis=1) <= within_m))
        tried[f"weight {weight:g}, temperature {temperature:g}"] = 100 * share
        if share > best_share:
            best, best_share = cfg, share
    return best, tried
