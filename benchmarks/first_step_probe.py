"""Can a photo tell which first-level cell it was taken in, on areas no model saw?

Zooming stands or falls with its first decisions: if nothing in a photo tells the quarter it
was taken in, every later step starts from a wrong cell. This probe asks that question of a
split city directly, without the zoom machinery: two classifiers learn the first-step cell
(one of k² children of the whole region) from the training photos and are scored on the test
photos, whose areas are disjoint from the training ones:

- ``colour``: a linear classifier on colour histograms (512 RGB bins, sky half and ground half
  of the photo) — district character such as materials and greenery, if it is there;
- ``cnn``: a small CNN trained from scratch on 64×128 photos, with the compass heading as an
  input (street orientations differ between quarters).

Each line prints training and test accuracy next to chance (1/k²) and to the share of test
photos in the most common training cell, and how often the guess is the true cell or one of its
eight neighbours ("near"), next to guesses drawn from the training cells' frequencies: a wrong
first step that lands next door is a signal a softer zoom could use; one that lands anywhere is
none. Test accuracy near or below chance means a first step cannot be learned from these
photos at this budget, whatever the policy.

    python benchmarks/first_step_probe.py CITY_DIR [--cnn-steps 1200] [--size 64 128]

CITY_DIR needs split.csv and pyramid.h5 (the bench city: benchmarks/results/bench/city). The
heading is read from metadata.csv's ``heading_deg`` column when there is one (0 otherwise).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from zoomloc.data.photos import load_photo
from zoomloc.data.samples import Samples
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.pyramid import PyramidReader

COLOUR_LEVELS = 8  # per channel: 8³ = 512 bins


@dataclass(frozen=True)
class Split:
    """One split's photos ``[N, h, w, 3]`` uint8, headings (radians) and first-step cells."""

    images: np.ndarray
    heading: np.ndarray
    cell: np.ndarray


def _small(path, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.asarray(load_photo(path).resize((w, h), Image.BILINEAR))


def load_split(city: CityDir, split: str, size: tuple[int, int]) -> Split:
    with PyramidReader(city.pyramid_path) as pyr:
        grid = pyr.grid
    samples = Samples.from_city(city, split, grid)
    meta = city.read_metadata().set_index("image_id")
    heading = meta["heading_deg"].reindex(list(samples.image_ids)).fillna(0) if "heading_deg" in meta else 0.0
    with ProcessPoolExecutor(2) as pool:
        images = np.stack(list(pool.map(partial(_small, size=size), samples.image_paths, chunksize=64)))
    return Split(images, np.radians(np.broadcast_to(np.asarray(heading, dtype=np.float64), len(samples))), samples.paths[:, 0])


def colour_histograms(images: np.ndarray) -> np.ndarray:
    """``[N, 1024]``: square roots of the normalised colour histograms of the top and bottom halves."""
    q = (images // (256 // COLOUR_LEVELS)).astype(np.int64)
    code = (q[..., 0] * COLOUR_LEVELS + q[..., 1]) * COLOUR_LEVELS + q[..., 2]
    half = images.shape[1] // 2
    bins = COLOUR_LEVELS**3
    hists = [np.stack([np.bincount(c.ravel(), minlength=bins) for c in part]) for part in (code[:, :half], code[:, half:])]
    h = np.concatenate(hists, axis=1).astype(np.float32)
    return np.sqrt(h / h.sum(axis=1, keepdims=True) * 2)


def fit_linear(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 300, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(model.parameters(), 1e-2, weight_decay=1e-5)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model


class SmallCNN(nn.Module):
    """Five stride-2 stages and an MLP over the flattened map plus (sin, cos) of the heading."""

    def __init__(self, size: tuple[int, int], classes: int):
        super().__init__()
        ch = [3, 32, 64, 96, 128, 192]
        self.stages = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(a, b, 3, 2, 1, bias=False),
                    nn.BatchNorm2d(b),
                    nn.ReLU(),
                    nn.Conv2d(b, b, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(b),
                    nn.ReLU(),
                )
                for a, b in zip(ch, ch[1:])
            ]
        )
        flat = ch[-1] * (size[0] // 32) * (size[1] // 32)
        self.head = nn.Sequential(nn.Linear(flat + 2, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, classes))

    def forward(self, images: torch.Tensor, heading: torch.Tensor) -> torch.Tensor:
        x = self.stages((images.float() / 255 - 0.45) / 0.25).flatten(1)
        return self.head(torch.cat([x, 3 * torch.stack([heading.sin(), heading.cos()], 1).float()], 1))


def fit_cnn(train: Split, classes: int, steps: int, batch: int = 64, seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(train.images.shape[1:3], classes)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    images = torch.from_numpy(train.images).permute(0, 3, 1, 2)
    heading, cell = torch.from_numpy(train.heading), torch.from_numpy(train.cell)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,))
        x = (images[idx].float() * torch.empty(batch, 3, 1, 1).uniform_(0.8, 1.2)).clamp(0, 255)  # exposure, tint
        loss = F.cross_entropy(model(x, heading[idx]), cell[idx], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def cnn_predict(model: SmallCNN, split: Split, batch: int = 256) -> np.ndarray:
    images = torch.from_numpy(split.images).permute(0, 3, 1, 2)
    heading = torch.from_numpy(split.heading)
    return torch.cat([model(images[i : i + batch], heading[i : i + batch]).argmax(1) for i in range(0, len(images), batch)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("city", help="a split city directory with its pyramid")
    parser.add_argument("--cnn-steps", type=int, default=1200, help="0 skips the CNN")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 128), metavar=("H", "W"), help="photo size (multiples of 32)")
    args = parser.parse_args()
    city = CityDir(args.city)
    with PyramidReader(city.pyramid_path) as pyr:
        classes = pyr.grid.k**2
    start = time.perf_counter()
    train, test = (load_split(city, split, tuple(args.size)) for split in ("train", "test"))
    majority = np.bincount(train.cell, minlength=classes).argmax()
    print(
        f"{city.root}: {len(train.cell)} training and {len(test.cell)} test photos; first step: {classes} cells, "
        f"{len(np.unique(test.cell))} of them hold test photos; chance {100 / classes:.1f}%, "
        f"the most common training cell {100 * np.mean(test.cell == majority):.1f}% of test photos"
    )

    def near(pred: np.ndarray) -> float:
        """Share (%) of test guesses in the true cell or one of its 8 neighbours."""
        k = int(round(np.sqrt(classes)))
        return 100 * np.mean(np.maximum(np.abs(pred // k - test.cell // k), np.abs(pred % k - test.cell % k)) <= 1)

    def line(name: str, train_pred: np.ndarray, test_pred: np.ndarray) -> None:
        print(
            f"  {name:<7} train {100 * np.mean(train_pred == train.cell):5.1f}%   test {100 * np.mean(test_pred == test.cell):5.1f}%"
            f"   near {near(test_pred):5.1f}%"
        )

    print(
        f"  (guesses drawn from the training cells' frequencies: "
        f"near {near(np.random.default_rng(0).choice(train.cell, len(test.cell))):.1f}%)"
    )

    hist_train, hist_test = colour_histograms(train.images), colour_histograms(test.images)
    linear = fit_linear(hist_train, train.cell, classes)
    with torch.no_grad():
        line("colour", linear(torch.from_numpy(hist_train)).argmax(1).numpy(), linear(torch.from_numpy(hist_test)).argmax(1).numpy())
    if args.cnn_steps:
        cnn = fit_cnn(train, classes, args.cnn_steps)
        line("cnn", cnn_predict(cnn, train), cnn_predict(cnn, test))
    print(f"  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
