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
    "bad",
    [
        {"white_balance": 1.0},
        {"haze": 1.5},
        {"noise": -1.0},
        {"roll_deg": 90.0},
        {"gamma": (0.0, 1.0)},
        {"gamma": (2.0, 1.0)},
        {"erase_p": 2.0},
        {"fov_zoom": 0.5},
    ],
)
def test_impossible_strengths_are_refused(bad):
    with pytest.raises(ValueError):
        AugmentConfig(**bad)


def test_an_occluder_is_an_upright_box_of_one_colour():
    outs = [_apply(AugmentConfig(**OFF, erase_p=1.0), GREY, seed) for seed in range(10)]
    for out in outs:
        changed = (out != GREY).any(0)
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert changed.any(), "p = 1 always paints one"
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height >= width and changed.sum() == height * width  # one filled, upright rectangle
        assert 0.02 * GREY[0].numel() - height - width <= changed.sum() <= 0.12 * GREY[0].numel() + height + width
        assert len(torch.unique(out[:, changed], dim=1).T) == 1  # of one colour
    assert not any((o != GREY).any() for o in (_apply(AugmentConfig(**OFF, erase_p=0.0), GREY, s) for s in range(5)))


def test_a_narrower_field_of_view_is_a_window_of_the_photo():
    ramp = torch.arange(96, dtype=torch.uint8).repeat(3, 64, 1)  # each column holds its index
    sizes = []
    for seed in range(20):
        out = _apply(AugmentConfig(**OFF, fov_zoom=2.0), ramp, seed)
        h, w = out.shape[-2:]
        assert 32 <= h <= 64 and 48 <= w <= 96 and abs(h / 64 - w / 96) < 0.03  # 1/z of each side, the aspect kept
        first = int(out[0, 0, 0])
        assert torch.equal(out[0, 0], torch.arange(first, first + w, dtype=torch.uint8))  # a window, not a resampling
        sizes.append(w)
    assert min(sizes) < 60 and max(sizes) > 80  # zooms spread over [1, 2]
