"""Training samples: grid labels, keyed augmentation and step-addressed batches."""

from __future__ import annotations

import numpy as np
import torch

from zoomloc.data.batches import StepBatches, StreetDataset
from zoomloc.data.photos import AugmentConfig
from zoomloc.data.samples import Samples
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import geodesic_m
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.inference.localize import positions_of
from zoomloc.models.encoders import EncoderConfig, build_encoder


def test_labels_put_each_photo_back_where_it_was(tiny_city):
    with PyramidReader(tiny_city / "pyramid.h5") as pyr:
        grid = pyr.grid
    samples = Samples.from_city(CityDir(tiny_city), "train", grid)
    assert samples.paths.shape == (len(samples), grid.levels)
    assert np.all((samples.offsets >= -0.5) & (samples.offsets < 0.5))
    lon, lat = positions_of(grid, samples.paths, samples.offsets)  # cell centre moved by the offset
    assert geodesic_m(lon, lat, samples.lon, samples.lat).max() < 0.01
    lon, lat = positions_of(grid, samples.paths)  # the centre alone: within half a diagonal
    assert geodesic_m(lon, lat, samples.lon, samples.lat).max() <= grid.terminal_m * 2**0.5 / 2 * 1.001


def test_augmentation_depends_on_the_key_alone(tiny_city):
    with PyramidReader(tiny_city / "pyramid.h5") as pyr:
        samples = Samples.from_city(CityDir(tiny_city), "train", pyr.grid).subset(4)
    transforms = build_encoder(EncoderConfig(weights="none", street_size=(32, 64))).transforms()
    ds = StreetDataset(samples, transforms, AugmentConfig(blur_p=1.0, jpeg_p=1.0))
    torch.manual_seed(1)
    a = ds[(2, 123)]["image"]
    torch.manual_seed(2)  # the global generator does not matter…
    b = ds[(2, 123)]["image"]
    c = ds[(2, 124)]["image"]  # …the key does
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    plain = StreetDataset(samples, transforms)[2]["image"]
    torch.testing.assert_close(plain, StreetDataset(samples, transforms)[2]["image"], rtol=0, atol=0)


def test_step_batches_resume_and_shard():
    full = list(StepBatches(50, 8, seed=3, start_step=0, steps=20))
    assert len(full) == 20 and all(len(b) == 8 for b in full)
    assert list(StepBatches(50, 8, seed=3, start_step=13, steps=20)) == full[13:]
    epoch = [i for batch in full[:6] for i, _ in batch]  # 50 // 8 = 6 batches per epoch
    assert len(set(epoch)) == len(epoch)
    keys = [k for batch in full for _, k in batch]
    assert len(set(keys)) == len(keys)
    rank0 = list(StepBatches(50, 8, seed=3, start_step=0, steps=3, rank=0, world=2))
    rank1 = list(StepBatches(50, 8, seed=3, start_step=0, steps=3, rank=1, world=2))
    for b0, b1 in zip(rank0, rank1):
        assert not {i for i, _ in b0} & {i for i, _ in b1}
