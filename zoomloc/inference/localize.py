"""The Python API: load a trained model with a city's pyramid, localize photos.

::

    loc = Localizer.load("runs/demo", pyramid="cities/demo/pyramid.h5")
    for r in loc.localize(["photo.jpg"], beam=4, topk=4):
        print(r.lat, r.lon, r.probability)
    track = loc.localize_track(["f1.jpg", "f2.jpg", "f3.jpg"], times_s=[0.0, 1.5, 3.0])

Satellite view embeddings come from a cache beside the pyramid (computed on first use for the
model's satellite-encoder weights), so a query costs one street-view encoder pass and L policy
steps per beam, whatever the size of the map. A retrieval model (:mod:`zoomloc.models.retrieval`)
goes through the same class: its database is built from the same cache when it loads, and a
query is one street pass and one exact search; ``beam`` does not apply to it.

A capture (photos of one camera along a street, with their times) is localized as one
:class:`~zoomloc.inference.localization.Track`: each photo's K best cells, fused by
:mod:`zoomloc.inference.fusion`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from zoomloc.core.errors import InputError
from zoomloc.data.batches import StreetDataset
from zoomloc.data.photos import Photo, load_photo, quiet_on_sigterm
from zoomloc.data.samples import Samples
from zoomloc.data.street_cache import StreetCache
from zoomloc.geo.grid import ZoomGrid
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.inference.confidence import guess_warning
from zoomloc.inference.fusion import FusionConfig, fuse
from zoomloc.inference.local_match import LocalMaps
from zoomloc.inference.localization import Candidate, Localization, Step, Track, TrackPoint
from zoomloc.models.base import Clues, LocalizationModel
from zoomloc.models.beam import BeamResult
from zoomloc.models.checkpoint import load_model
from zoomloc.models.embeddings import SatEmbeddings, cached_embeddings

BATCH = 32
TRACK_CANDIDATES = 32  # candidates per photo a capture's fusion chooses among (the truth is among them far more often than first)

Query = str | os.PathLike | Image.Image | Photo
"""A photo to localize: a file, a decoded image, or a :class:`~zoomloc.data.photos.Photo` read already."""


def _pixels(query: Query) -> Image.Image:
    if isinstance(query, Photo):
        return query.image
    return query if isinstance(query, Image.Image) else load_photo(query)


def _name(query: Query) -> str:
    if isinstance(query, Photo):
        return str(query.path)
    return getattr(query, "filename", "") or "<image>" if isinstance(query, Image.Image) else str(query)


def positions_xy(grid: ZoomGrid, paths: np.ndarray, offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grid metres of terminal cells' centres, moved by ``offsets`` (cell sides, dx east, dy south) if given."""
    x, y = grid.centre_xy_of_path(paths)
    if offsets is not None:
        x = x + offsets[..., 0] * grid.terminal_m
        y = y - offsets[..., 1] * grid.terminal_m
    return x, y


def positions_of(grid: ZoomGrid, paths: np.ndarray, offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of terminal cells' centres, moved by ``offsets`` (:func:`positions_xy`)."""
    return grid.to_lonlat(*positions_xy(grid, paths, offsets))


def off_map_warning(grid: ZoomGrid, outside_m: float) -> str:
    """Why an answer says nothing for a photo whose known position is ``outside_m`` metres off the map."""
    lon, lat = grid.region_polygon_lonlat().centroid.coords[0]
    far = f"{outside_m / 1000:,.0f} km" if outside_m >= 10_000 else f"{outside_m:,.0f} m"
    return (
        f"its GPS position lies {far} outside the map ({grid.side_m / 1000:g} km square around lat {lat:.4f}, lon {lon:.4f}): "
        "the answer is the map's closest match, not where the photo was taken"
    )


def predicted_positions(grid: ZoomGrid, result: BeamResult) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat ``[K]`` of a query's K candidates."""
    return positions_of(grid, result.paths.cpu().numpy(), None if result.offsets is None else result.offsets.cpu().numpy())


class Localizer:
    """A trained model (any kind) bound to a city's pyramid through its view embeddings."""

    def __init__(
        self,
        model: LocalizationModel,
        sat: SatEmbeddings,
        device: torch.device | str = "cpu",
        guess_factor: float | None = None,
        temperature: float = 1.0,
    ):
        """``sat`` needs the tables the model reads; its index (:meth:`LocalizationModel.index`)
        keeps what it searches. A ``guess_factor`` and a ``temperature`` (:mod:`zoomloc.inference.confidence`,
        calibrated when the model was selected) make answers no surer than a guess carry a warning
        and the candidates' probabilities mean what they say."""
        self.model = model.to(device).eval()
        self.guess_factor = guess_factor if model.first_step_calibrated else None
        self.device = torch.device(device)
        self.transforms = model.encoders.transforms()
        start = time.perf_counter()
        self.index = model.index(sat.to(device))
        self.index.temperature = temperature
        self.local: LocalMaps | None = None  # where the index reads the queries' mid-level maps (the photo witness's re-ranking)
        # Embedding every view (whenever the cache was made) plus building the index.
        self.index_build_s = sat.build_s + time.perf_counter() - start

    @classmethod
    def load(
        cls,
        model_path: str | os.PathLike,
        pyramid: str | os.PathLike | PyramidReader,
        *,
        cache_dir: str | os.PathLike | None = None,
        device: str = "cpu",
        progress: bool = True,
    ) -> Localizer:
        """A run folder (or checkpoint) and the pyramid it zooms over (built for the same grid): its
        file, or a reader the caller keeps open (to draw a map from it too)."""
        model, info = load_model(model_path, device)
        with PyramidReader(pyramid) if not isinstance(pyramid, PyramidReader) else nullcontext(pyramid) as pyr:
            pyr.check_grid(model.grid)
            sat = cached_embeddings(model.encoders, pyr, cache_dir, lengths=model.searched_prefixes, progress=progress)
        val = info.get("val", {})
        return cls(model, sat, device, guess_factor=val.get("guess_factor"), temperature=val.get("temperature", 1.0))

    @torch.no_grad()
    def embed_photos(self, images: Sequence[Query]) -> Tensor:
        """Street embeddings ``[N, D]`` of photos (paths, PIL images or read photos), in batches."""
        return torch.cat([self.model.encode_street(x) for x in self._inputs(images)])

    def _inputs(self, images: Sequence[Query]) -> Iterator[Tensor]:
        """The street encoder's inputs ``[b, 3, h, w]`` of photos, :data:`BATCH` at a time."""
        for start in range(0, len(images), BATCH):
            yield torch.stack([self.transforms.street(_pixels(img)) for img in images[start : start + BATCH]]).to(self.device)

    def clues_of_photos(self, images: Sequence[Query], headings: Sequence[float] | None = None) -> Clues:
        """What photos tell besides their embeddings: the compass ``headings`` given (degrees, NaN unknown) and,
        where the index reads them, their maps."""
        local = None if self.local is None else torch.cat([self.local.of_inputs(x) for x in self._inputs(images)])
        return Clues(None if headings is None else np.asarray(headings, dtype=float), local)

    def clues_of(self, samples: Samples) -> Clues:
        """What a split's photos tell besides their embeddings: their recorded headings and, where the index
        reads them, their maps from the city's local cache."""
        return Clues(samples.heading_deg, None if self.local is None else self.local.of_ids(samples.image_ids))

    @torch.no_grad()
    def embed_samples(self, samples: Samples, *, workers: int = 2, progress: bool = False, cache: StreetCache | None = None) -> Tensor:
        """Street embeddings ``[N, D]`` of a split's photos (no augmentation): the photos encoded, or the
        tail run on their plain crops' trunk outputs from the street ``cache``."""
        self.model.eval()
        if cache is not None:
            rows = cache.rows_of(samples.image_ids)
            chunks = np.array_split(rows, max(1, len(rows) // 256))
            return torch.cat([self.model.encode_street(cache.plain(r).to(self.device), trunk=True) for r in chunks])
        loader = torch.utils.data.DataLoader(
            StreetDataset(samples, self.transforms),
            batch_size=BATCH,
            num_workers=workers,
            worker_init_fn=quiet_on_sigterm,
            generator=torch.Generator(),
        )
        batches = tqdm(loader, desc="encode photos", unit="batch", disable=not progress, leave=False)
        return torch.cat([self.model.encode_street(b["image"].to(self.device)) for b in batches])

    def localize(
        self,
        images: Sequence[Query],
        *,
        beam: int = 4,
        topk: int = 4,
        truths: Sequence[tuple[float, float] | None] | None = None,
        headings: Sequence[float] | None = None,
    ) -> list[Localization]:
        """Localize photos; ``truths`` (lon, lat) per photo, when known, sets each result's error; ``headings``
        (compass degrees, NaN unknown) go to the search with the photos' other clues (:meth:`embed_photos`)."""
        names = [_name(img) for img in images]
        clues = self.clues_of_photos(images, headings)
        return self.localize_embeddings(self.embed_photos(images), names, beam=beam, topk=topk, truths=truths, clues=clues)

    def search(self, street_emb: Tensor, *, beam: int, topk: int, clues: Clues | None = None) -> list[BeamResult]:
        """The ``topk`` best terminal cells of each query ``[Q, D]``, best first (:meth:`MapIndex.search`)."""
        return self.index.search(street_emb, beam=beam, topk=topk, clues=clues)

    @torch.no_grad()
    def localize_embeddings(
        self,
        street_emb: Tensor,
        names: Sequence[str],
        *,
        beam: int = 4,
        topk: int = 4,
        truths: Sequence[tuple[float, float] | None] | None = None,
        clues: Clues | None = None,
    ) -> list[Localization]:
        """Localize from precomputed street embeddings ``[N, D]`` and what else the photos tell (see :meth:`search`)."""
        grid = self.model.grid
        results = self.search(street_emb.to(self.device), beam=beam, topk=topk, clues=clues)
        out = []
        for i, r in enumerate(results):
            lon, lat = predicted_positions(grid, r)
            paths = r.paths.cpu().numpy()
            probs = r.log_probs.exp().cpu().numpy()
            steps = tuple(
                Step(level + 1, int(grid.cell_of_path(paths[0, : level + 1])), float(r.step_probs[0, level]))
                for level in range(grid.levels)
            )
            candidates = tuple(
                Candidate(float(lon[j]), float(lat[j]), float(probs[j]), tuple(int(a) for a in paths[j])) for j in range(len(paths))
            )
            truth = truths[i] if truths is not None else None
            outside_m = None if truth is None else grid.outside_m(*truth)
            guess = None if self.guess_factor is None else guess_warning(steps[0].probability, self.guess_factor, grid.k**2)
            out.append(
                Localization(
                    image=names[i],
                    lon=candidates[0].lon,
                    lat=candidates[0].lat,
                    cell_size_m=grid.terminal_m,
                    probability=candidates[0].probability,
                    path=steps,
                    candidates=candidates,
                    true_lon=None if truth is None else float(truth[0]),
                    true_lat=None if truth is None else float(truth[1]),
                    inside_map=None if outside_m is None else outside_m == 0,
                    warnings=tuple(w for w in (outside_m and off_map_warning(grid, outside_m), guess) if w),
                )
            )
        return out

    def localize_track(
        self,
        images: Sequence[Query],
        times_s: Sequence[float],
        *,
        capture: str = "capture",
        candidates: int = TRACK_CANDIDATES,
        truths: Sequence[tuple[float, float] | None] | None = None,
        fusion: FusionConfig | None = None,
        headings: Sequence[float] | None = None,
    ) -> Track:
        """Localize the photos of one capture, in capture order, taken at ``times_s`` (seconds,
        non-decreasing) and facing ``headings`` (compass degrees, NaN unknown), as one track (see :meth:`track_embeddings`)."""
        names = [_name(img) for img in images]
        street, clues = self.embed_photos(images), self.clues_of_photos(images, headings)
        return self.track_embeddings(
            street, names, times_s, capture=capture, candidates=candidates, truths=truths, fusion=fusion, clues=clues
        )

    @torch.no_grad()
    def track_embeddings(
        self,
        street_emb: Tensor,
        names: Sequence[str],
        times_s: Sequence[float],
        *,
        capture: str = "capture",
        candidates: int = TRACK_CANDIDATES,
        truths: Sequence[tuple[float, float] | None] | None = None,
        fusion: FusionConfig | None = None,
        clues: Clues | None = None,
    ) -> Track:
        """A capture's track from its photos' street embeddings ``[T, D]`` (and ``clues``), in capture order.

        Each photo's answer is the best of its ``candidates`` (a zoom model's beam is that wide);
        the fusion chooses among them by the times alone: no photo's GPS is read (``truths`` set
        the errors only).
        """
        if candidates < 1:
            raise InputError(f"candidates must be at least 1, got {candidates}")
        photos = self.localize_embeddings(street_emb, names, beam=candidates, topk=candidates, truths=truths, clues=clues)
        grid = self.model.grid
        k = max(len(p.candidates) for p in photos)  # a photo with fewer (answers merged) is padded with probability 0
        pad = [k - len(p.candidates) for p in photos]
        lonlat = np.array([[(c.lon, c.lat) for c in (*p.candidates, *[p.candidates[0]] * n)] for p, n in zip(photos, pad)])  # [T, K, 2]
        x, y = grid.to_xy(lonlat[..., 0], lonlat[..., 1])
        probs = np.array([[c.probability for c in p.candidates] + [0.0] * n for p, n in zip(photos, pad)])
        times = np.asarray(times_s, dtype=float)
        start = time.perf_counter()
        fused = fuse(
            np.stack([x, y], -1), probs, times, fusion or FusionConfig(), cell_m=grid.terminal_m, n_cells=grid.n_cells(grid.levels)
        )
        lon, lat = grid.to_lonlat(fused.xy[:, 0], fused.xy[:, 1])
        fusion_s = time.perf_counter() - start
        points = tuple(
            TrackPoint(
                image=p.image,
                lon=float(lon[i]),
                lat=float(lat[i]),
                probability=float(fused.probability[i]),
                candidate=None if fused.state[i] < 0 else int(fused.state[i]),
                time_s=float(times[i] - times[0]),
            )
            for i, p in enumerate(photos)
        )
        return Track(capture, tuple(photos), points, fusion_s)
