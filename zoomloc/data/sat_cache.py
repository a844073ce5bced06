"""The satellite trunk cache: the frozen satellite trunk's output for every view of a pyramid, computed once.

A satellite encoder that trains its last blocks (``sat_freeze: all_but_last_N``) would run its
whole backbone on every view a training sample looks at, at every step. As the street cache does
for photos (:mod:`zoomloc.data.street_cache`), the frozen part runs once here: per view, one plain
copy and ``views`` augmented ones (:class:`SatAugmentConfig`), stored as float16; a training step
runs the tail on the distinct views of its batch (:class:`~zoomloc.models.encoders.SatTrunks`), and
validation turns the plain copies into the map's embeddings (:func:`trunk_embeddings`).

Every table of the pyramid is in it, in path length order — the views of levels 0..L-1, then the
terminal cells' context crops — so the zoom model (which reads the levels) and the retrieval model
(the terminal crops) share one file, as they share the street cache. Its name hashes what makes
it: encoder, trunk weights, cut, view size, augmentation, views, seed and the pyramid file.

The file is a trunk cache (:mod:`zoomloc.data.trunk_cache`) at ``embeddings/sattrunk_{key}.h5``
beside the pyramid: ``plain [N, C, h, w]``, ``augmented [N·V, C, h, w]``, the grid in its attributes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch import Tensor
from torch.utils.data import Dataset

from zoomloc.core.config import non_defaults
from zoomloc.core.errors import InputError
from zoomloc.data.photos import CameraColour
from zoomloc.data.trunk_cache import CacheSpec, TrunkCache, augment_key, build_trunk_cache, variant_of
from zoomloc.geo.grid import ZoomGrid
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.models.embeddings import SatEmbeddings, pyramid_identity, weights_fingerprint
from zoomloc.models.encoders import SatTrunks, ViewEncoders, ViewTransforms

TAIL_BATCH = 256  # views through the tail at once when the map's embeddings are computed


@dataclass(frozen=True)
class SatAugmentConfig:
    """How a map view is varied for training: what two orthophotos of one place differ in.

    Another flight, season or sensor changes the light and colour (``colour``: brightness, contrast
    and saturation jitter; ``white_balance``, ``gamma`` and ``haze`` as a street photo's, see
    :class:`~zoomloc.data.photos.AugmentConfig`), and a view never sits exactly where the camera's
    cell does (``shift``: a random square crop of at least ``1 - shift`` of the side, resized back —
    a shift and a slight zoom). No rotation or flip: a view's north is the grid's, which the zoom
    actions are laid out by.
    """

    colour: float = 0.2
    white_balance: float = 0.1
    gamma: tuple[float, float] = (0.8, 1.25)
    haze: float = 0.1
    shift: float = 0.06

    def __post_init__(self) -> None:
        if not (0 <= self.colour <= 1 and 0 <= self.white_balance < 1 and 0 <= self.haze <= 1 and 0 <= self.shift < 0.5):
            raise ValueError("sat_augment: colour and haze must lie in [0, 1], white_balance in [0, 1), shift in [0, 0.5)")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"sat_augment.gamma must be [low, high] with 0 < low <= high, got {self.gamma}")

    def build(self, size: int) -> T.Transform:
        """The transform on uint8 ``[3, size, size]`` views (random draws from torch's global generator)."""
        c, scale = self.colour, (1 - self.shift) ** 2
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=(scale, 1.0), ratio=(1.0, 1.0), antialias=True),
                T.ColorJitter(brightness=c, contrast=c, saturation=c),
                CameraColour(self.white_balance, self.gamma, self.haze),
            ]
        )


@dataclass(frozen=True)
class SatCacheSpec(CacheSpec):
    """Everything a cached view's trunk output depends on; its hash names the file."""

    encoder: str
    trunk_weights: str
    cut: str
    sat_size: int
    augment: dict
    views: int
    seed: int
    pyramid: str  # the pyramid file's identity (size and modification time)

    @classmethod
    def of(cls, encoders: ViewEncoders, pyramid: PyramidReader, augment: SatAugmentConfig, views: int, seed: int) -> SatCacheSpec:
        if views < 0:
            raise InputError(f"the satellite trunk cache's augmented views per view cannot be negative, got {views}")
        cut = encoders.sat_cut
        return cls(
            encoder=encoders.cfg.name,
            trunk_weights=weights_fingerprint(cut.trunk),
            cut=cut.at,
            sat_size=encoders.cfg.sat_size,
            augment=non_defaults(augment),  # fields added later, off by default, rename no cache
            views=views,
            seed=seed,
            pyramid=pyramid_identity(pyramid.path),
        )


def _offsets(grid: ZoomGrid) -> np.ndarray:
    """The first row of each table (paths of length 0..L), then the row count."""
    return np.concatenate([[0], np.cumsum([grid.n_cells(length) for length in range(grid.levels + 1)])])


class SatTrunkCache(TrunkCache):
    """A finished satellite trunk cache; rows are (path length, cell) pairs."""

    what = "satellite trunk cache"

    def _open(self, f: h5py.File) -> None:
        self.grid = ZoomGrid.from_attrs(f.attrs)
        self._offsets = _offsets(self.grid)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def rows(self, length: int, cells: np.ndarray) -> np.ndarray:
        """The rows of the views of paths of ``length`` ending in ``cells`` (L: the context crops)."""
        return self._offsets[length] + np.asarray(cells, dtype=np.int64)

    def batch(self, paths: np.ndarray, lengths: Sequence[int], key: int) -> SatTrunks:
        """The satellite input of training samples on ``paths`` ``[B, L]``: their prefixes of ``lengths``,
        each distinct view once, an augmented copy drawn by ``key`` (the step's) and the view."""
        rows = np.stack([self.rows(n, self.grid.cell_of_path(paths[:, :n])) for n in lengths], axis=1)
        unique, inverse = np.unique(rows, return_inverse=True)
        if self.views:
            maps = self.augmented(unique, variant_of(key * 1_000_003 + unique, self.views))
        else:
            maps = self.plain(unique)
        return SatTrunks(maps, torch.from_numpy(inverse.reshape(rows.shape)))


@torch.no_grad()
def trunk_embeddings(encoders: ViewEncoders, cache: SatTrunkCache, lengths: Sequence[int]) -> SatEmbeddings:
    """The map's view embeddings under the current satellite tail: the plain copies of the tables of
    paths of ``lengths`` through it (what validation searches, without reading a view again)."""
    was_training = encoders.training
    encoders.eval()
    device = next(encoders.parameters()).device
    grid = cache.grid

    def table(length: int) -> Tensor | None:
        if length not in lengths:
            return None
        rows = cache.rows(length, np.arange(grid.n_cells(length)))
        chunks = [
            encoders.encode_sat(cache.plain(part).to(device), trunk=True).float().cpu()
            for part in np.array_split(rows, -(-len(rows) // TAIL_BATCH))
        ]
        return torch.cat(chunks)

    try:
        return SatEmbeddings(grid, [table(level) for level in range(grid.levels)], table(grid.levels), cache.build_s)
    finally:
        encoders.train(was_training)


class _Views(Dataset):
    """View ``start + j`` (rows in length order) as ``[1 + views, 3, s, s]``: plain, then augmented."""

    def __init__(self, pyramid: PyramidReader, start: int, transforms: ViewTransforms, augment: SatAugmentConfig, views: int, seed: int):
        self.pyramid, self.start, self.transforms = pyramid, start, transforms
        self.offsets = _offsets(pyramid.grid)
        self.augment, self.views, self.seed = augment.build(pyramid.px), views, seed

    def __len__(self) -> int:
        return int(self.offsets[-1]) - self.start

    def __getitem__(self, j: int) -> Tensor:
        row = self.start + j
        length = int(np.searchsorted(self.offsets, row, side="right")) - 1
        cell = [row - int(self.offsets[length])]
        view = self.pyramid.context(cell)[0] if length == self.pyramid.grid.levels else self.pyramid.views(length, cell)[0]
        view = torch.from_numpy(view).permute(2, 0, 1).contiguous()
        copies = [self.transforms.sat(view)]
        for v in range(self.views):
            with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
                torch.manual_seed(augment_key(self.seed, row, v))
                copies.append(self.transforms.sat(self.augment(view)))
        return torch.stack(copies)


def sat_trunk_cache(
    encoders: ViewEncoders,
    pyramid: PyramidReader,
    augment: SatAugmentConfig,
    views: int,
    seed: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
    progress: bool = True,
) -> SatTrunkCache:
    """The pyramid's satellite trunk cache for ``encoders``' satellite trunk: read if built, else built
    (or resumed) first, in ``cache_dir`` (default: ``embeddings/`` beside the pyramid)."""
    spec = SatCacheSpec.of(encoders, pyramid, augment, views, seed)
    cache_dir = Path(cache_dir) if cache_dir is not None else pyramid.path.parent / "embeddings"
    path = cache_dir / f"sattrunk_{spec.key}.h5"
    if not path.is_file():
        build_sat_cache(path, spec, encoders, pyramid, workers=workers, progress=progress)
    return SatTrunkCache(path)


def build_sat_cache(
    path: Path, spec: SatCacheSpec, encoders: ViewEncoders, pyramid: PyramidReader, *, workers: int = 0, progress: bool = True
) -> None:
    """Encode every view of ``pyramid`` with the satellite trunk into ``path``, resuming an interrupted build."""
    grid, transforms, augment = pyramid.grid, encoders.transforms(), SatAugmentConfig(**spec.augment)

    def prepare(f: h5py.File) -> None:
        f.attrs.update(grid.to_attrs())

    build_trunk_cache(
        path,
        spec.to_json(),
        int(_offsets(grid)[-1]),
        spec.views,
        lambda start: _Views(pyramid, start, transforms, augment, spec.views, spec.seed),
        encoders,
        encoders.sat_trunk,
        prepare=prepare,
        workers=workers,
        progress=progress,
        desc="satellite trunk cache",
    )
