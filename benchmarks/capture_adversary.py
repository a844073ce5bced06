"""Does a capture adversary teach a street embedding places rather than captures?

A crowd-sourced city's captures each cover a few streets, so a capture's camera, light and weather name its
cells as well as the place does, and every model here learns the shortcut (``NOTES.md``). Domain-adversarial
training (DANN) removes what an adversary can read: a classifier of the *capture* reads the embedding through
a gradient reversal and the embedding is pushed to make it fail. Conditioned on the place, the adversary
chooses only among the captures with training photos in the photo's own cell, so that where a photo is cannot
give its capture away, only how it looks.

This probe trains a small head on the city's local cache (the street encoder's mid-level maps, what the photo
witness matches photos by: per location a 1×1, a depthwise 3×3 and a 1×1 convolution, GeM, a linear
projection) to name each training photo's cell one level above the terminal one, once per adversary weight
(0: none), and prints for the val and test photos the nearest training photo by the head's embedding (R@1
within 25 / 50 / 100 m, any heading) and how often the head names their cell. On the bench city's
``sequence`` split the adversary lifted the nearest photo 1.8 to 2.7 times; on the demo city split alike, with
30 captures, not at all (twenty-third session in ``NOTES.md``)::

    python benchmarks/capture_adversary.py CITY_DIR --model RUN [--adversary 0 0.5] [--steps 2000] [--seed 0]

CITY_DIR is a split city (``benchmarks/results/bench/sequence/city``), RUN a model trained on it (its street
encoder makes the local cache, built once if missing: 4 min for the bench city). The photos' maps are held in
memory (570 MB of float16 for the bench city's 20 000); 2000 steps take about 5 min on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoomloc.data.samples import Samples
from zoomloc.data.street_cache import StreetCache, local_cache
from zoomloc.geo.citydir import CityDir
from zoomloc.inference.localize import Localizer
from zoomloc.models.pooling import GeM

RADII_M = (25, 50, 100)
MASKED = -1e4  # the adversary's logit of a capture with no training photo in the photo's cell


class Head(nn.Module):
    """Maps ``[N, C, h, w]`` → embeddings ``[N, dim]`` (what the cells are named from; unit ones are compared)."""

    def __init__(self, channels: int, width: int = 256, dim: int = 256):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(channels, width, 1),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, groups=width),
            nn.Conv2d(width, width, 1),
            nn.ReLU(),
        )
        self.pool = GeM()
        self.proj = nn.Linear(width, dim)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.convs(maps.float())))


class Reversed(torch.autograd.Function):
    """The identity forward, the gradient times −``scale`` backward: what the adversary learns, the head unlearns."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


@dataclass(frozen=True)
class Trained:
    """A trained head, the classifier of cells on its embeddings and the cell ids it names."""

    head: Head
    namer: nn.Linear
    cell_ids: np.ndarray

    @torch.no_grad()
    def named(self, keys: torch.Tensor) -> np.ndarray:
        return self.cell_ids[self.namer(keys).argmax(1).numpy()]


def train_head(maps: torch.Tensor, cells: np.ndarray, captures: np.ndarray, adversary: float, steps: int, batch: int, seed: int) -> Trained:
    """A head naming ``cells`` of the training photos' ``maps`` ``[M, C, h, w]``, against a capture adversary of
    weight ``adversary`` choosing among the captures seen in the photo's cell (0: no adversary)."""
    cell_ids, cell_of = np.unique(cells, return_inverse=True)
    capture_ids, capture_of = np.unique(captures, return_inverse=True)
    seen = torch.zeros(len(cell_ids), len(capture_ids), dtype=torch.bool)
    seen[cell_of, capture_of] = True
    cell_t, capture_t = torch.from_numpy(cell_of.ravel()), torch.from_numpy(capture_of.ravel())
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    head = Head(maps.shape[1])
    dim = head.proj.out_features
    namer = nn.Linear(dim, len(cell_ids))
    guesser = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, len(capture_ids)))
    optimizer = torch.optim.AdamW([*head.parameters(), *namer.parameters(), *guesser.parameters()], lr=1e-3, weight_decay=0.05)
    batch = min(batch, len(maps))
    for _ in range(steps):
        pick = torch.from_numpy(rng.choice(len(maps), batch, replace=False))
        shown = F.dropout2d(torch.roll(maps[pick].float(), int(rng.integers(-2, 3)), dims=3), 0.1)  # a few metres along, parts hidden
        embedded = head(shown)
        loss = F.cross_entropy(namer(embedded), cell_t[pick], label_smoothing=0.1)
        if adversary:
            guess = guesser(Reversed.apply(embedded, adversary)).masked_fill(~seen[cell_t[pick]], MASKED)
            loss = loss + F.cross_entropy(guess, capture_t[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Trained(head.eval(), namer.eval(), cell_ids)


def read_maps(cache: StreetCache, image_ids: tuple[str, ...], chunk: int = 1024) -> torch.Tensor:
    """The photos' maps ``[N, C, h, w]`` (their one plain crop) in float16, read ``chunk`` at a time."""
    rows = cache.rows_of(image_ids)
    return torch.cat([cache.plain(rows[i : i + chunk])[:, 0].half() for i in range(0, len(rows), chunk)])


@torch.no_grad()
def embed(head: Head, maps: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Embeddings ``[N, dim]`` of maps ``[N, C, h, w]``, ``chunk`` at a time."""
    return torch.cat([head(maps[i : i + chunk]) for i in range(0, len(maps), chunk)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("city", help="a split city folder")
    ap.add_argument("--model", required=True, help="a model run trained on it (its street encoder makes the maps)")
    ap.add_argument("--adversary", type=float, nargs="+", default=[0.0, 0.5], help="adversary weights to train with (0: none)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    city = CityDir(args.city)
    loc = Localizer.load(args.model, city.pyramid_path, cache_dir=city.embeddings_dir, progress=False)
    grid = loc.model.grid
    cache = local_cache(loc.model.encoders, city, progress=False)
    split = {name: Samples.from_city(city, name, grid) for name in ("train", "val", "test")}
    maps = {name: read_maps(cache, s.image_ids) for name, s in split.items()}
    level = max(1, grid.levels - 1)
    cells = {name: s.paths[:, :level] @ (grid.k**2) ** np.arange(level)[::-1] for name, s in split.items()}
    train = split["train"]
    captures = len(np.unique(train.captures))
    print(f"{len(train)} training photos in {captures} captures; cells named: {grid.n_cells(level)} of {grid.cell_size(level):.0f} m")
    for adversary in args.adversary:
        start = time.perf_counter()
        trained = train_head(maps["train"], cells["train"], train.captures, adversary, args.steps, args.batch, args.seed)
        keys_train = embed(trained.head, maps["train"])
        line = [f"adversary {adversary:g}"]
        for name in ("val", "test"):
            keys = embed(trained.head, maps[name])
            nearest = (F.normalize(keys, dim=-1) @ F.normalize(keys_train, dim=-1).T).argmax(1).numpy()
            error = np.linalg.norm(train.xy(grid)[nearest] - split[name].xy(grid), axis=1)
            recall = " / ".join(f"{100 * np.mean(error <= r):.1f}" for r in RADII_M)
            line.append(f"{name} nearest photo {recall} % cells named {100 * np.mean(trained.named(keys) == cells[name]):.1f} %")
        print("  ".join(line) + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    cache.close()


if __name__ == "__main__":
    main()
