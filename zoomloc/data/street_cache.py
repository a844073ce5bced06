"""The street cache: the frozen street trunk's output for every photo of a city, computed once.

A street encoder frozen but for its last blocks (:mod:`zoomloc.models.trunk`) spends nearly all of a
CPU training step on layers whose output never changes. Here they run once per photo and
augmentation: ``views`` augmented crops per photo (colour, blur, JPEG, random crop — the live
loader's augmentation, drawn from the same keys; none for evaluation alone) plus one plain
centre crop, stored as float16.
Training then runs only the tail, drawing one stored variant per photo and epoch; validation
reads the plain crops. With ``freeze: all`` the trunk is the whole backbone, the cache holds the
pooled embedding and a training step is the policy (or the retrieval heads) alone.

The cache covers every photo of ``metadata.csv``, not one split's: the zoom and the retrieval
model, and every split protocol of the same photos, share one file (as they share the satellite
view cache). Its name hashes what makes it — encoder, trunk weights, cut, input size, crop,
augmentation, views, seed and the photo list — so a change of any of them builds another.

A fully frozen encoder that another run trained on a trunk cache (``weights:`` that run's
checkpoint) has the same trunk as that cache: its pooled cache is then derived from it, the trained
tail run over the stored maps (seconds, where encoding every photo again takes minutes), equal to a
direct build within float16 rounding of the stored maps.

The file is a trunk cache (:mod:`zoomloc.data.trunk_cache`: built resumably, read batch by batch,
memory bounded whatever the city's size) at ``CITY_DIR/embeddings/street_{key}.h5``::

    image_ids  [N] str                    metadata.csv's photos, in its order
    plain      [N, n, ...] float16        the centre crop's trunk output (n crops: 1, or 2 halves)
    augmented  [N·V, n, ...] float16      V augmented crops per photo: row i·V + v
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from zoomloc.core.config import from_mapping, non_defaults
from zoomloc.core.errors import InputError, PyramidError
from zoomloc.data.photos import AugmentConfig, street_input
from zoomloc.data.trunk_cache import CacheSpec, TrunkCache, augment_key, build_trunk_cache
from zoomloc.geo.citydir import CityDir
from zoomloc.models.embeddings import weights_fingerprint
from zoomloc.models.encoders import ViewEncoders, ViewTransforms
from zoomloc.models.trunk import POOLED, BackboneCut, cut_backbone_at


@dataclass(frozen=True)
class StreetCacheSpec(CacheSpec):
    """Everything a cached trunk output depends on; its hash names the file."""

    encoder: str
    trunk_weights: str  # fingerprint of the trunk's tensors
    cut: str  # the first module of the tail, or "pooled"
    street_size: tuple[int, int]
    street_crop: str
    train_zoom: float
    augment: dict
    views: int
    seed: int
    photos: str  # digest of metadata.csv

    @classmethod
    def of(
        cls, encoders: ViewEncoders, city: CityDir, augment: AugmentConfig, views: int, seed: int, cut: BackboneCut | None = None
    ) -> StreetCacheSpec:
        """The spec of ``encoders``' street trunk (``cut``'s where given) over ``city``'s photos."""
        if views < 0:
            raise InputError(f"the street cache's augmented views per photo cannot be negative, got {views}")
        cfg, cut = encoders.cfg, cut or encoders.street_cut
        return cls(
            encoder=cfg.name,
            trunk_weights=weights_fingerprint(cut.trunk),
            cut=cut.at,
            street_size=tuple(cfg.street_size),
            street_crop=cfg.street_crop,
            train_zoom=cfg.train_zoom,
            augment=non_defaults(augment),  # fields added later, off by default, rename no cache
            views=views,
            seed=seed,
            photos=city.photos_digest(),
        )


class StreetCache(TrunkCache):
    """A finished street cache, read batch by batch; rows are photos, found by id."""

    what = "street cache"

    def _open(self, f: h5py.File) -> None:
        self._row = {image_id: row for row, image_id in enumerate(f["image_ids"].asstr()[()])}

    def __len__(self) -> int:
        return len(self._row)

    @property
    def image_ids(self) -> list[str]:
        """Its photos, in row order."""
        return list(self._row)

    def rows_of(self, image_ids: Sequence[str]) -> np.ndarray:
        """The cache rows of photos (by id); an error naming the first photo it lacks."""
        try:
            return np.array([self._row[i] for i in image_ids], dtype=np.int64)
        except KeyError as exc:
            raise InputError(f"the street cache has no photo {exc.args[0]!r}; delete it to recompute", self.path) from None


class _Crops(Dataset):
    """Photo ``start + j`` as ``[1 + views, n, 3, h, w]``: its plain crop, then its augmented ones."""

    def __init__(self, photos: Sequence[Path], start: int, transforms: ViewTransforms, augment: AugmentConfig, views: int, seed: int):
        self.photos, self.start, self.transforms = photos, start, transforms
        self.augment, self.views, self.seed = augment.build(), views, seed

    def __len__(self) -> int:
        return len(self.photos) - self.start

    def __getitem__(self, j: int) -> Tensor:
        i = self.start + j
        crops = [street_input(self.photos[i], self.transforms)]
        crops += [street_input(self.photos[i], self.transforms, self.augment, augment_key(self.seed, i, v)) for v in range(self.views)]
        return torch.stack(crops)


@dataclass(frozen=True)
class CacheViews:
    """Which augmented crops a street cache holds besides the plain ones: what a training run asked
    for (``train.augment``, ``cache_views``, ``seed``). Kept in its checkpoints' ``info`` so that an
    evaluation reads that cache rather than encoding every photo again."""

    augment: AugmentConfig = AugmentConfig()
    views: int = 0
    seed: int = 0

    def to_info(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of_info(cls, info: dict[str, Any]) -> CacheViews:
        """A checkpoint's (its ``info``); the plain crops alone for one saved without it."""
        if "street_cache" not in info:
            return cls()
        return from_mapping(cls, info["street_cache"], source="checkpoint info", prefix="street_cache.")


def street_cache(
    encoders: ViewEncoders,
    city: CityDir,
    augment: AugmentConfig,
    views: int,
    seed: int,
    *,
    workers: int = 0,
    progress: bool = True,
) -> StreetCache:
    """The city's street cache for ``encoders``' trunk: read if built, else built (or resumed) first."""
    spec = StreetCacheSpec.of(encoders, city, augment, views, seed)
    path = city.embeddings_dir / f"street_{spec.key}.h5"
    if not path.is_file():
        source = _trunk_source(spec, encoders, city)
        if source is None:
            build_street_cache(path, spec, encoders.street_trunk, encoders, city, workers=workers, progress=progress)
        else:
            _derive_pooled(path, spec, source, encoders, progress=progress)
    return StreetCache(path)


def local_cache(encoders: ViewEncoders, city: CityDir, *, workers: int = 0, progress: bool = True) -> StreetCache:
    """The city's mid-level street maps (:meth:`~zoomloc.models.encoders.ViewEncoders.street_local`) of every
    photo's plain crop, a street cache at that cut: read if built, else built (or resumed) first. What the
    photo witness matches its training photos and the evaluated ones by (:mod:`zoomloc.inference.local_match`),
    at ``CITY_DIR/embeddings/local_{key}.h5``."""
    cut = encoders.street_local_cut
    if cut is None:
        raise InputError(f"the street encoder {encoders.cfg.name} has no feature map to match photos by")
    spec = StreetCacheSpec.of(encoders, city, AugmentConfig(), 0, 0, cut)
    path = city.embeddings_dir / f"local_{spec.key}.h5"
    if not path.is_file():
        build_street_cache(path, spec, encoders.street_local, encoders, city, workers=workers, progress=progress, desc="local maps")
    return StreetCache(path)


def _trunk_source(spec: StreetCacheSpec, encoders: ViewEncoders, city: CityDir) -> tuple[StreetCache, BackboneCut] | None:
    """A street cache of this city from which ``spec``'s pooled cache can be derived, with the cut of
    the encoder at its boundary: made of the same photos, crops and augmentation, at a cut whose trunk
    has this encoder's weights. None when ``spec`` is no pooled cache or no such file exists (an
    unreadable one is passed over: it is no source, and its own build would say what is wrong)."""
    if spec.cut != POOLED:
        return None
    same = {k: v for k, v in json.loads(spec.to_json()).items() if k not in ("cut", "trunk_weights")}
    cuts: dict[str, tuple[BackboneCut, str]] = {}  # the encoder cut at each cache's boundary, its trunk's fingerprint
    for path in sorted(city.embeddings_dir.glob("street_*.h5")):
        try:
            cache = StreetCache(path)
        except PyramidError:
            continue
        theirs = dict(cache.spec)
        at, weights = theirs.pop("cut"), theirs.pop("trunk_weights")
        if at != POOLED and theirs == same:
            if at not in cuts:
                cut = cut_backbone_at(encoders.backbone("street"), at, encoders.cfg.name, encoders.cfg.street_size)
                cuts[at] = cut, weights_fingerprint(cut.trunk)
            if cuts[at][1] == weights:
                return cache, cuts[at][0]
        cache.close()
    return None


class _StoredMaps(Dataset):
    """Item ``start + j`` of a street cache as ``[1 + V, ...]``: its plain map, then its V augmented ones."""

    def __init__(self, cache: StreetCache, start: int):
        self.cache, self.start = cache, start

    def __len__(self) -> int:
        return len(self.cache) - self.start

    def __getitem__(self, j: int) -> Tensor:
        row = np.array([self.start + j])
        views = np.arange(self.cache.views)
        return torch.cat([self.cache.plain(row), self.cache.augmented(row.repeat(len(views)), views)])


def build_street_cache(
    path: Path,
    spec: StreetCacheSpec,
    encode: Callable[[Tensor], Tensor],
    encoders: ViewEncoders,
    city: CityDir,
    *,
    workers: int = 0,
    progress: bool = True,
    desc: str = "street cache",
) -> None:
    """Encode every photo's crops with ``encode`` (``encoders``' trunk at ``spec``'s cut) into ``path``, resuming
    an interrupted build."""
    ids = city.read_metadata()["image_id"].tolist()
    photos = [city.image_path(i) for i in ids]
    transforms, augment = encoders.transforms(), AugmentConfig(**spec.augment)
    build_trunk_cache(
        path,
        spec.to_json(),
        len(ids),
        spec.views,
        lambda start: _Crops(photos, start, transforms, augment, spec.views, spec.seed),
        encoders,
        encode,
        prepare=_writes_ids(ids),
        workers=workers,
        progress=progress,
        desc=desc,
    )


def _derive_pooled(
    path: Path, spec: StreetCacheSpec, source: tuple[StreetCache, BackboneCut], encoders: ViewEncoders, *, progress: bool
) -> None:
    """Run the tail of ``source``'s cut over its stored maps into the pooled cache ``path`` (resumable as a build)."""
    cache, cut = source

    def encode(maps: Tensor) -> Tensor:  # [M, n, C, h, w] → [M, n, D]
        return cut.tail(maps.flatten(0, 1).contiguous(memory_format=torch.channels_last)).view(*maps.shape[:2], -1)

    try:
        build_trunk_cache(
            path,
            spec.to_json(),
            len(cache),
            spec.views,
            lambda start: _StoredMaps(cache, start),
            encoders,
            encode,
            prepare=_writes_ids(cache.image_ids),
            progress=progress,
            desc=f"street cache from {cache.path.name}",
        )
    finally:
        cache.close()


def _writes_ids(ids: list[str]) -> Callable[[h5py.File], None]:
    """A build's ``prepare``: the photo ids, once per build file."""

    def prepare(f: h5py.File) -> None:
        if "image_ids" not in f:
            f.create_dataset("image_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())

    return prepare
