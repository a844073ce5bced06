"""Street-photo augmentation spanning what two captures of one street differ in (camera, light, tilt).

Each transform is checked on an image whose answer is known: a grey card for the colour ones, a
vertical bar for the roll; the defaults add none of the newer ones, so existing configs train as before.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2 as T

from zoomloc.data.photos import AugmentConfig

GREY = torch.full((3, 64, 96), 100, dtype=torch.uint8)
OFF = {"colour": 0.0, "blur_p": 0.0, "jpeg_p": 0.0}  # the older transforms, neutral


def _apply(cfg: AugmentConfig, image: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return cfg.build()(image)


def test_the_defaults_build_the_transforms_configs_trained_with_before():
    kinds = [type(t) for t in AugmentConfig().build().transforms]
    assert kinds == [T.ColorJitter, T.RandomApply, T.RandomApply]


def test_white_balance_scales_each_channel_within_its_bounds():
    outs = [_apply(AugmentConfig(**OFF, white_balance=0.2), GREY, seed) for seed in range(20)]
    means = torch.stack([o.float().mean((1, 2)) for o in outs])  # [20, 3]
    assert means.min() >= 100 * 0.8 - 1 and means.max() <= 100 * 1.2 + 1
    assert (means[:, 0] != means[:, 2]).all()  # the channels move apart: a colour cast
    assert all(o.float().std((1, 2)).max() == 0 for o in outs)  # one gain per channel, over the whole image


def test_gamma_and_haze_move_the_tones_as_a_camera_and_a_haze_would():
    dark = _apply(AugmentConfig(**OFF, gamma=(2.0, 2.0)), GREY)
    assert dark.float().mean() == pytest.approx(255 * (100 / 255) ** 2, abs=1)
    black = torch.zeros_like(GREY)
    hazy = [_apply(AugmentConfig(**OFF, haze=0.5), black, seed).float().mean() for seed in range(20)]
    assert 0 <= min(hazy) and max(hazy) <= 0.5 * 0.85 * 255 + 1 and max(hazy) > 50  # towards light grey, at most halfway


def test_noise_is_zero_mean_and_bounded_in_strength():
    outs = torch.stack([_apply(AugmentConfig(**OFF, noise=8.0), GREY, seed).float() for seed in range(10)])
    assert outs.mean() == pytest.approx(100, abs=0.5)
    stds = outs.flatten(1).std(1)
    assert stds.max() <= 8.5 and stds.max() > 2


def test_roll_tilts_a_vertical_bar():
    bar = torch.zeros((3, 65, 65), dtype=torch.uint8)
    bar[:, :, 31:34] = 255
    rolled = _apply(AugmentConfig(**OFF, roll_deg=10.0), bar, seed=3)
    top, bottom = (torch.nonzero(rolled[0, row] > 128).float().mean() for row in (5, 59))
    assert abs(float(top - bottom)) > 1  # the bar leans
    assert abs(float(top - bottom)) <= 54 * torch.tan(torch.deg2rad(torch.tensor(10.0))) + 2


@pytest.mark.parametrize(
    "bad", [{"white_balance": 1.0}, {"haze": 1.5}, {"noise": -1.0}, {"roll_deg": 90.0}, {"gamma": (0.0, 1.0)}, {"gamma": (2.0, 1.0)}]
)
def test_impossible_strengths_are_refused(bad):
    with pytest.raises(ValueError):
        AugmentConfig(**bad)
