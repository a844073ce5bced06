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

HDF5 layout (``CITY_DIR/embeddings/street_{key}.h5``)::

    image_ids  [N] str                    metadata.csv's photos, in its order
    plain      [N, n, ...] float16        the centre crop's trunk output (n crops: 1, or 2 halves)
    augmented  [N·V, n, ...] float16      V augmented crops per photo: row i·V + v
    attrs: format_version, spec (JSON of :class:`StreetCacheSpec`), done (photos written), build_s

A build writes ``.street_{key}.h5.building`` photo chunk by photo chunk, recording how many
photos are done after each; interrupted, the next build goes on from there (a file left
unreadable by a hard kill is started anew), and the finished file is renamed into place.
Reads go batch by batch through h5py, so memory stays bounded whatever the city's size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from zoomloc.core.config import from_mapping
from zoomloc.core.errors import InputError, PyramidError
from zoomloc.core.hdf5 import take_rows
from zoomloc.data.photos import AugmentConfig, quiet_on_sigterm, street_input
from zoomloc.geo.citydir import CityDir
from zoomloc.models.embeddings import weights_fingerprint
from zoomloc.models.encoders import ViewEncoders, ViewTransforms

FORMAT_VERSION = 1
CHUNK = 64  # photos encoded and written at a time: an interrupted build redoes at most these


@dataclass(frozen=True)
class StreetCacheSpec:
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
    def of(cls, encoders: ViewEncoders, city: CityDir, augment: AugmentConfig, views: int, seed: int) -> StreetCacheSpec:
        if views < 0:
            raise InputError(f"the street cache's augmented views per photo cannot be negative, got {views}")
        cfg, cut = encoders.cfg, encoders.street_cut
        return cls(
            encoder=cfg.name,
            trunk_weights=weights_fingerprint(cut.trunk),
            cut=cut.at,
            street_size=tuple(cfg.street_size),
            street_crop=cfg.street_crop,
            train_zoom=cfg.train_zoom,
            augment=dataclasses.asdict(augment),
            views=views,
            seed=seed,
            photos=city.photos_digest(),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def key(self) -> str:
        return hashlib.blake2b(self.to_json().encode(), digest_size=10).hexdigest()


def augment_key(seed: int, photo: int, view: int) -> int:
    """The augmentation key of view ``view`` of photo ``photo`` (row in metadata.csv)."""
    return (seed * 1_000_003 + view) * 1_000_003 + photo


def variant_of(keys: np.ndarray, views: int) -> np.ndarray:
    """Which stored view a training item draws: a hash (splitmix64) of its step-and-photo key."""
    z = np.asarray(keys, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) % np.uint64(views)).astype(np.int64)


class StreetCache:
    """A finished street cache, read batch by batch."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
            self.spec = json.loads(self._file.attrs["spec"])
            self.build_s = float(self._file.attrs["build_s"])
            ids = self._file["image_ids"].asstr()[()]
            self._plain, self._augmented = self._file["plain"], self._file["augmented"]
        except (OSError, KeyError, ValueError) as exc:
            raise PyramidError(f"unreadable street cache ({exc}); delete it to recompute", self.path) from None
        self.views = int(self.spec["views"])
        self._row = {image_id: row for row, image_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self._row)

    def close(self) -> None:
        self._file.close()

    def rows_of(self, image_ids: Sequence[str]) -> np.ndarray:
        """The cache rows of photos (by id); an error naming the first photo it lacks."""
        try:
            return np.array([self._row[i] for i in image_ids], dtype=np.int64)
        except KeyError as exc:
            raise InputError(f"the street cache has no photo {exc.args[0]!r}; delete it to recompute", self.path) from None

    def plain(self, rows: np.ndarray) -> Tensor:
        """The centre crops' trunk outputs ``[len(rows), n, ...]`` (float32)."""
        return torch.from_numpy(take_rows(self._plain, rows)).float()

    def augmented(self, rows: np.ndarray, variants: np.ndarray) -> Tensor:
        """View ``variants[j]`` of photo ``rows[j]``: ``[len(rows), n, ...]`` (float32)."""
        return torch.from_numpy(take_rows(self._augmented, np.asarray(rows) * self.views + np.asarray(variants))).float()


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
        build_street_cache(path, spec, encoders, city, workers=workers, progress=progress)
    return StreetCache(path)


@torch.no_grad()
def build_street_cache(
    path: Path, spec: StreetCacheSpec, encoders: ViewEncoders, city: CityDir, *, workers: int = 0, progress: bool = True
) -> None:
    """Encode every photo's crops with the trunk into ``path``, resuming an interrupted build."""
    ids = city.read_metadata()["image_id"].tolist()
    photos = [city.image_path(i) for i in ids]
    building = path.with_name(f".{path.name}.building")
    f, done = _open_building(building, spec, len(ids))
    try:
        began = time.perf_counter() - (float(f.attrs["build_s"]) if "build_s" in f.attrs else 0.0)
        if "image_ids" not in f:
            f.create_dataset("image_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        device = next(encoders.parameters()).device
        was_training = encoders.training
        encoders.eval()
        crops = _Crops(photos, done, encoders.transforms(), AugmentConfig(**spec.augment), spec.views, spec.seed)
        # Its own generator: building the cache leaves the global RNG (the training's dropout) untouched.
        loader = DataLoader(crops, batch_size=CHUNK, num_workers=workers, worker_init_fn=quiet_on_sigterm, generator=torch.Generator())
        bar = tqdm(total=len(ids), initial=done, desc="street cache", unit="photo", disable=not progress, leave=False)
        try:
            for batch in loader:
                b, v = batch.shape[:2]
                out = encoders.street_trunk(batch.flatten(0, 1).to(device)).to(torch.float16).cpu().numpy()
                out = out.reshape(b, v, *out.shape[1:])
                _write_chunk(f, done, out, spec.views)
                done += b
                f.attrs["done"] = done
                f.attrs["build_s"] = time.perf_counter() - began
                f.flush()
                bar.update(b)
        finally:
            bar.close()
            encoders.train(was_training)
    finally:
        f.close()
    os.replace(building, path)


def _open_building(building: Path, spec: StreetCacheSpec, n: int) -> tuple[h5py.File, int]:
    """The build file to go on with and how many photos it holds; a new one if absent, unreadable or of another spec."""
    if building.is_file():
        try:
            f = h5py.File(building, "a")
        except OSError:
            building.unlink()
        else:
            if f.attrs.get("spec") == spec.to_json() and f.attrs.get("format_version") == FORMAT_VERSION:
                return f, int(f.attrs.get("done", 0))
            f.close()
            building.unlink()
    building.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(building, "w")
    f.attrs.update({"format_version": FORMAT_VERSION, "spec": spec.to_json(), "done": 0, "photos": n})
    return f, 0


def _write_chunk(f: h5py.File, start: int, out: np.ndarray, views: int) -> None:
    """Store photos ``start…`` (``out``: ``[b, 1 + views, n, ...]``), creating the tables on the first chunk."""
    n = int(f.attrs["photos"])
    shape = out.shape[2:]
    if "plain" not in f:
        f.create_dataset("plain", shape=(n, *shape), dtype=np.float16, chunks=(1, *shape))
        f.create_dataset("augmented", shape=(n * views, *shape), dtype=np.float16, chunks=(1, *shape) if views else None)
    b = len(out)
    f["plain"][start : start + b] = out[:, 0]
    f["augmented"][start * views : (start + b) * views] = out[:, 1:].reshape(b * views, *shape)
