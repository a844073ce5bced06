"""Street-view samples of a city split, labelled on the zoom grid, and their augmentation.

A sample is a photo plus its label on the grid: the action path of the terminal cell holding
the camera and the camera's offset inside that cell. Augmentation imitates crowd-sourced
photos (exposure and colour shifts, blur, JPEG artefacts; the encoder's transform adds the
random crop), because a model trained on clean renders would fail on a phone's snapshot.
"""

from __future__ import annotations

import io
import os
import random
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler

from zoomloc.citydir import CityDir, capture_codes
from zoomloc.encoders import ViewTransforms
from zoomloc.errors import InputError
from zoomloc.grid import ZoomGrid
from zoomloc.pyramid import PyramidReader


@dataclass(frozen=True)
class AugmentConfig:
    """Photometric augmentation of street views at training time (probabilities and strengths)."""

    colour: float = 0.3  # ColorJitter strength for brightness, contrast, saturation (hue: a third)
    blur_p: float = 0.2
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 90)

    def __post_init__(self) -> None:
        if not (0 <= self.colour <= 1 and 0 <= self.blur_p <= 1 and 0 <= self.jpeg_p <= 1):
            raise ValueError("augment strengths and probabilities must lie in [0, 1]")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be [low, high] within 1..100, got {self.jpeg_quality}")

    def build(self) -> T.Transform:
        """The transform on uint8 ``[3, H, W]`` tensors."""
        c = self.colour
        return T.Compose(
            [
                T.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 3, 0.5)),
                T.RandomApply([T.GaussianBlur(5, sigma=(0.3, 1.5))], p=self.blur_p),
                T.RandomApply([_Jpeg(self.jpeg_quality)], p=self.jpeg_p),
            ]
        )


class _Jpeg(torch.nn.Module):
    """Re-encode a uint8 ``[3, H, W]`` image as JPEG at a random quality (Pillow's codec).

    torchvision's own JPEG transform goes through its deprecated image I/O; Pillow's encoder is
    also what most photo pipelines that produce the artefacts use.
    """

    def __init__(self, quality: tuple[int, int]):
        super().__init__()
        self.quality = quality

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        q = int(torch.randint(self.quality[0], self.quality[1] + 1, ()))
        buffer = io.BytesIO()
        T.functional.to_pil_image(image).save(buffer, format="JPEG", quality=q)
        buffer.seek(0)
        with Image.open(buffer) as img:
            return T.functional.pil_to_tensor(img.convert("RGB"))


@dataclass(frozen=True)
class Samples:
    """Photos of one split with their grid labels (arrays aligned by row)."""

    image_ids: tuple[str, ...]
    image_paths: tuple[Path, ...]
    lon: np.ndarray
    lat: np.ndarray
    paths: np.ndarray  # [N, L] int64 action paths of the terminal cells
    offsets: np.ndarray  # [N, 2] float32 (dx east, dy south) in terminal-cell sides, in [-0.5, 0.5)
    outside: int  # photos of the split dropped because they lie outside the grid's region
    captures: np.ndarray  # [N] capture (sequence) codes: what an interval resamples (citydir.capture_codes)

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_city(cls, city: CityDir, split: str, grid: ZoomGrid) -> Samples:
        """The photos of ``split`` (per split.csv) inside the grid's region."""
        meta = city.read_metadata()
        ids = city.read_split()
        ids = ids.loc[ids["split"] == split, "image_id"]
        meta = meta.assign(capture=capture_codes(meta)).set_index("image_id").loc[lambda m: m.index.isin(set(ids))]
        if meta.empty:
            raise InputError(f"no photo of the {split!r} split", city.split_csv)
        x, y = grid.to_xy(meta["lon"].to_numpy(), meta["lat"].to_numpy())
        inside = grid.contains_xy(x, y)
        x, y, meta = x[inside], y[inside], meta[inside]
        if meta.empty:
            raise InputError(f"every photo of the {split!r} split lies outside the pyramid's region", city.split_csv)
        rows, cols = grid.rowcol_of_xy(x, y)
        bounds = grid.bounds_of_rowcol(rows, cols, grid.levels)
        size = grid.terminal_m
        offsets = np.stack([(x - bounds[:, 0]) / size - 0.5, (bounds[:, 3] - y) / size - 0.5], axis=1)
        return cls(
            image_ids=tuple(meta.index),
            image_paths=tuple(city.image_path(i) for i in meta.index),
            lon=meta["lon"].to_numpy(),
            lat=meta["lat"].to_numpy(),
            paths=grid.path_of_rowcol(rows, cols, grid.levels),
            offsets=offsets.astype(np.float32),
            outside=int((~inside).sum()),
            captures=meta["capture"].to_numpy(),
        )

    def subset(self, n: int, seed: int = 0) -> Samples:
        """At most ``n`` samples drawn without replacement (a fixed validation subset)."""
        if n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Samples(
            tuple(self.image_ids[i] for i in idx),
            tuple(self.image_paths[i] for i in idx),
            self.lon[idx],
            self.lat[idx],
            self.paths[idx],
            self.offsets[idx],
            self.outside,
            self.captures[idx],
        )


def load_photo(path: str | Path) -> Image.Image:
    """An RGB photo, upright per its EXIF orientation; one-line error for unreadable files."""
    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    except FileNotFoundError:
        raise InputError("no such photo", path) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"not a readable image ({str(exc).splitlines()[0]})", path) from None


def quiet_on_sigterm(worker_id: int) -> None:
    """A data loader's ``worker_init_fn``: on SIGTERM its workers leave at once and silently.

    A terminal's or a scheduler's SIGTERM goes to the whole process group; the main process
    unwinds (``zoomloc.cli``) and prints its one-line notice. A worker must neither die *of* the
    signal (torch's SIGCHLD handler in the main process would then raise "DataLoader worker is
    killed by signal" during the shutdown) nor keep running (its threads print tracebacks once the
    main process stops talking to them); exiting with status 0, which torch does not report, does
    neither.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))


def street_input(photo: str | Path, transforms: ViewTransforms, augment: T.Transform | None = None, key: int | None = None) -> torch.Tensor:
    """The street encoder's input ``[n, 3, h, w]`` for a photo: plain (centre crop) without ``key``,
    else ``augment`` and a random crop drawn from a generator seeded by ``key``.

    Seeded by ``key`` alone, an augmentation is the same in any process, worker or resumed run:
    the live training loader and the street cache (:mod:`zoomloc.street_cache`) draw it alike.
    """
    image = T.functional.pil_to_tensor(load_photo(photo))
    if augment is None or key is None:
        return transforms.street(image)
    with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
        torch.manual_seed(key)
        image = augment(image)
        return transforms.street(image, train=True, rng=random.Random(key))


class StreetDataset(Dataset):
    """Street views of :class:`Samples` as encoder inputs, with their labels.

    Items are asked for as ``i`` (no augmentation) or ``(i, key)``: the augmentation of a
    training item is drawn from a generator seeded by ``key``, so it depends on the sample and
    the training step alone — not on worker processes or on where a resumed run restarted.

    With a ``pyramid`` (a satellite encoder that trains), each item also carries ``sats``: the
    views of its path's prefixes of the lengths ``sat_prefixes`` (the model's: 0..L-1 for the
    zoom policy; L, the terminal cell's context crop, for refinement and retrieval), read and
    transformed here, in the loader's workers.
    """

    def __init__(
        self,
        samples: Samples,
        transforms: ViewTransforms,
        augment: AugmentConfig | None = None,
        pyramid: PyramidReader | None = None,
        sat_prefixes: Sequence[int] = (),
    ):
        self.samples = samples
        self.transforms = transforms
        self.augment = augment.build() if augment is not None else None
        self.pyramid = pyramid
        self.sat_prefixes = tuple(sat_prefixes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, key = item if isinstance(item, tuple) else (item, None)
        item = {
            "image": street_input(self.samples.image_paths[i], self.transforms, self.augment, key),
            "path": torch.from_numpy(self.samples.paths[i]),
            "offset": torch.from_numpy(self.samples.offsets[i]),
            "index": torch.tensor(i),
        }
        if self.pyramid is not None:
            item["sats"] = self._sat_views(self.samples.paths[i])
        return item

    def _sat_views(self, path: np.ndarray) -> torch.Tensor:
        """``[n, 3, s, s]`` encoder inputs of the views of ``path``'s prefixes (a full path: its context crop)."""
        pyramid, levels = self.pyramid, self.pyramid.grid.levels
        views = []
        for n in self.sat_prefixes:
            cell = [pyramid.grid.cell_of_path(path[:n])]
            views.append(pyramid.context(cell)[0] if n == levels else pyramid.views(n, cell)[0])
        return torch.stack([self.transforms.sat(torch.from_numpy(v).permute(2, 0, 1)) for v in views])


EpochOrder = Callable[[torch.Generator], torch.Tensor]
"""An epoch's order of the samples (a permutation of 0..n-1) drawn from the epoch's seeded generator."""


class StepBatches(Sampler):
    """Training batches of ``(sample, augmentation key)``, a pure function of (seed, step).

    Each epoch is a seeded order of the samples (by default a random permutation; ``order``
    may group them, see :class:`NeighbourOrder`), cut into batches of ``batch_size`` per
    process (the last, incomplete batch dropped) and dealt to ranks in turn. Starting at
    ``start_step`` yields exactly what an uninterrupted run would from there: ``--resume``
    continues bit for bit.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        start_step: int,
        steps: int,
        rank: int = 0,
        world: int = 1,
        order: EpochOrder | None = None,
    ):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.steps, self.rank, self.world = start_step, steps, rank, world
        self.order = order or (lambda generator: torch.randperm(n, generator=generator))
        self.per_epoch = n // (batch_size * world)
        if self.per_epoch < 1:
            raise InputError(f"{n} training photos cannot fill one batch of {batch_size} on {world} process(es)")

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)

    def __iter__(self):
        perm, perm_epoch = None, -1
        for step in range(self.start_step, self.steps):
            epoch, b = divmod(step, self.per_epoch)
            if epoch != perm_epoch:
                perm = self.order(torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
                perm_epoch = epoch
            first = (b * self.world + self.rank) * self.batch_size
            yield [(int(i), (self.seed * 1_000_003 + step) * 1_000_003 + int(i)) for i in perm[first : first + self.batch_size]]


class NeighbourOrder:
    """Epoch orders in runs of ``group`` photos taken near each other, each in another terminal cell.

    Sample4Geo's GPS sampling for contrastive training: with batches cut from such an order
    (``batch_size`` a multiple of ``group``), every photo meets in its batch photos of other
    cells within ``radius_m`` of it — negatives that differ in detail, not in district, which
    random batches rarely offer. Built greedily: anchors in a random order each take their
    unused neighbours (in that random order too) from cells not yet in the group; full groups
    come first, then the photos that found too few neighbours. Deterministic in the generator,
    so every DDP rank computes the same order.
    """

    def __init__(self, xy: np.ndarray, cells: np.ndarray, radius_m: float, group: int):
        self.cells, self.group = np.asarray(cells), group
        self.neighbours = _within(np.asarray(xy, dtype=float), radius_m)

    @classmethod
    def of_samples(cls, samples: Samples, grid: ZoomGrid, radius_m: float, group: int) -> NeighbourOrder:
        return cls(np.column_stack(grid.to_xy(samples.lon, samples.lat)), grid.cell_of_path(samples.paths), radius_m, group)

    def groups(self, generator: torch.Generator) -> list[list[int]]:
        """The epoch's groups, in order: each an anchor then its neighbours."""
        n = len(self.cells)
        ranked = torch.randperm(n, generator=generator).numpy()
        rank = np.empty(n, np.int64)
        rank[ranked] = np.arange(n)
        used = np.zeros(n, bool)
        full, rest = [], []
        for anchor in ranked:
            if used[anchor]:
                continue
            members, cells = [int(anchor)], {self.cells[anchor]}
            used[anchor] = True
            near = self.neighbours[anchor]
            for j in near[np.argsort(rank[near])]:
                if len(members) == self.group:
                    break
                if not used[j] and self.cells[j] not in cells:
                    members.append(int(j))
                    cells.add(self.cells[j])
                    used[j] = True
            (full if len(members) == self.group else rest).append(members)
        return full + rest

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        return torch.tensor([i for g in self.groups(generator) for i in g], dtype=torch.long)


def _within(xy: np.ndarray, radius_m: float) -> list[np.ndarray]:
    """For each point ``[N, 2]``, the other points within ``radius_m`` (buckets of the radius: 3×3 looked at)."""
    keys = np.floor(xy / radius_m).astype(np.int64)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(map(tuple, keys)):
        buckets.setdefault(key, []).append(i)
    out: list[np.ndarray] = [np.empty(0, np.int64)] * len(xy)
    for (bx, by), members in buckets.items():
        near = np.array([j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in buckets.get((bx + dx, by + dy), ())])
        d2 = ((xy[members][:, None, :] - xy[near][None, :, :]) ** 2).sum(-1)
        for row, i in enumerate(members):
            out[i] = near[(d2[row] <= radius_m**2) & (near != i)]
    return out
