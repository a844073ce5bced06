"""What a training step reads: street views of samples as encoder inputs, and the order of batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from zoomloc.core.errors import InputError
from zoomloc.data.photos import AugmentConfig, street_input
from zoomloc.data.samples import Samples
from zoomloc.geo.grid import ZoomGrid
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.models.encoders import ViewTransforms
from zoomloc.models.place import PlaceConfig, place_pairs


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
        return cls(samples.xy(grid), grid.cell_of_path(samples.paths), radius_m, group)

    def groups(self, generator: torch.Generator) -> list[list[int]]:
        """The epoch's groups, in order: each an anchor then its neighbours."""
        ranked, rank = _random_ranks(len(self.cells), generator)
        used = np.zeros(len(self.cells), bool)
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


class PlaceOrder:
    """Epoch orders in twos: a photo next to a photo of its place from another capture, where it has one.

    The place loss (:mod:`zoomloc.models.place`) learns from positive pairs inside a batch, and in
    random batches of a city's thousands of photos two of one place and other captures rarely
    meet. Here anchors in a random order each take one unused partner (a positive of
    :func:`~zoomloc.models.place.place_pairs`: another capture, near and facing the same way,
    drawn at random); photos left without one go in twos too, so that with an even batch size no
    pair is cut between batches; the twos are then shuffled. Deterministic in the generator, as
    every epoch order.
    """

    def __init__(self, xy: np.ndarray, heading_deg: np.ndarray, captures: np.ndarray, cfg: PlaceConfig):
        xy, heading, captures = np.asarray(xy, dtype=float), np.asarray(heading_deg, dtype=float), np.asarray(captures)
        near = _within(xy, cfg.radius_m)

        def partners(i: int, n: np.ndarray) -> np.ndarray:
            rows = np.concatenate([[i], n])
            return n[place_pairs(xy[rows], heading[rows], captures[rows], cfg)[0][0, 1:]]

        self.partners = [partners(i, n) for i, n in enumerate(near)]

    @classmethod
    def of_samples(cls, samples: Samples, grid: ZoomGrid, cfg: PlaceConfig) -> PlaceOrder:
        return cls(samples.xy(grid), samples.heading_deg, samples.captures, cfg)

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        ranked, rank = _random_ranks(len(self.partners), generator)
        used = np.zeros(len(self.partners), bool)
        pairs, alone = [], []
        for anchor in ranked:
            if used[anchor]:
                continue
            used[anchor] = True
            free = self.partners[anchor][~used[self.partners[anchor]]]
            if len(free):
                partner = free[np.argmin(rank[free])]
                used[partner] = True
                pairs.append([int(anchor), int(partner)])
            else:
                alone.append(int(anchor))
        twos = pairs + [alone[i : i + 2] for i in range(0, len(alone), 2)]
        order = torch.randperm(len(twos), generator=generator).tolist()
        return torch.tensor([i for t in order for i in twos[t]], dtype=torch.long)


def _random_ranks(n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random order of 0..n-1 drawn from ``generator``, and each item's place in it: the greedy batch
    orders visit anchors in that order and draw their partners by it."""
    ranked = torch.randperm(n, generator=generator).numpy()
    rank = np.empty(n, np.int64)
    rank[ranked] = np.arange(n)
    return ranked, rank


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
