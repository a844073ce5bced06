"""An encoder cut in two: a frozen trunk, whose outputs can be computed once and cached,
and the tail that trains.

An encoder frozen but for its last blocks gives the same trunk output for a photo or a map view
(and an augmentation of it) at every epoch, and that trunk is nearly all of a training step's
cost on a CPU. :func:`cut_backbone` finds the cut — right before the first module with a
trainable parameter — so :mod:`zoomloc.data.street_cache` and :mod:`zoomloc.data.sat_cache` can
store the trunk's output once and training runs only the tail. Fully frozen (``freeze: all``),
the trunk is the whole backbone and the cache holds the pooled embedding; a frozen backbone whose
pooling learns (NetVLAD) is cut at :data:`HEAD`, the cache holding its last feature map.

timm backbones run ``forward_features`` (a chain of modules: stem, stages, head convolution) and
then ``forward_head`` (pooling). The chain is read from the backbone's children before
``global_pool``, opening ``nn.Sequential`` containers that are partly frozen; the cut is then
checked once against the backbone's own forward, so a model whose ``forward_features`` is no such
chain is refused in one line instead of trained on wrong features.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoomloc.core.errors import InputError

POOLED = "pooled"  # the cut of a fully frozen backbone: the cache holds its pooled output
HEAD = "global_pool"  # the cut of a frozen backbone whose pooling trains: the cache holds its last feature map
_CHECK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class BackboneCut:
    """A backbone as ``tail(trunk(x))``; the modules are the backbone's own (no copies).

    ``at`` names the cut: the first trainable module (``blocks.6``, ``conv_head``), :data:`HEAD`
    when only the pooling trains, or :data:`POOLED` when nothing trains.
    """

    trunk: nn.Module
    tail: nn.Module
    at: str

    @property
    def pooled(self) -> bool:
        return self.at == POOLED


class _Tail(nn.Module):
    """The rest of ``forward_features`` from the cut on, then the backbone's own pooling head."""

    def __init__(self, backbone: nn.Module, rest: nn.Sequential):
        super().__init__()
        self.rest = rest
        self.head = backbone.forward_head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rest(x))


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _chain(backbone: nn.Module, opening: str | None = None, open_all: bool = False) -> list[tuple[str, nn.Module]]:
    """``forward_features``' modules in order, partly frozen ``nn.Sequential`` containers opened,
    and those holding the module named ``opening`` (every one with ``open_all``)."""
    children = list(backbone.named_children())
    names = [n for n, _ in children]
    if HEAD not in names or not hasattr(backbone, "forward_head"):
        return []
    chain: list[tuple[str, nn.Module]] = []

    def add(name: str, module: nn.Module) -> None:
        mixed = _trains(module) and not all(p.requires_grad for p in module.parameters())
        holds = opening is not None and opening.startswith(f"{name}.")
        if isinstance(module, nn.Sequential) and (mixed or holds or open_all):
            for child_name, child in module.named_children():
                add(f"{name}.{child_name}", child)
        else:
            chain.append((name, module))

    for name, module in children[: names.index(HEAD)]:
        add(name, module)
    return chain


def cut_backbone(backbone: nn.Module, model_name: str, input_size: tuple[int, int], view: str = "street") -> BackboneCut:
    """``backbone`` cut before its first trainable module; a one-line error if it cannot be cut.

    ``input_size`` (height, width) is what the check runs on; the check compares the two halves'
    composition with the backbone's forward in eval mode. ``view`` names the encoder in errors.
    """
    if not _trains(backbone):
        return BackboneCut(backbone, nn.Identity(), POOLED)
    chain = _chain(backbone)
    first = next((i for i, (_, m) in enumerate(chain) if _trains(m)), len(chain) if chain else None)
    refusal = f"the {view} encoder {model_name} cannot be cut at its freeze boundary for the {view} cache"
    if first is None or first == 0:
        raise InputError(f"{refusal} (its first layer trains or its forward is no chain of modules); use freeze: all or no cache")
    return _checked(_split(backbone, chain, first), backbone, input_size, refusal, "; use freeze: all or no cache")


def cut_backbone_at(backbone: nn.Module, at: str, model_name: str, input_size: tuple[int, int]) -> BackboneCut:
    """``backbone`` cut before its module ``at`` (a :attr:`BackboneCut.at` name) whatever trains.

    A fully frozen encoder's pooled embeddings are its tail at such a cut applied to a trunk cache
    made there: how :mod:`zoomloc.data.street_cache` derives them in seconds from the cache of a run
    that trained that tail, instead of encoding every photo again.
    """
    chain = _chain(backbone, opening=at)
    first = next((i for i, (name, _) in enumerate(chain) if name == at), len(chain) if at == HEAD and chain else None)
    refusal = f"the encoder {model_name} cannot be cut at {at}"
    if first is None or first == 0:
        raise InputError(f"{refusal} (no such module after its first one in its chain)")
    return _checked(_split(backbone, chain, first), backbone, input_size, refusal, "")


def cut_backbone_at_stride(backbone: nn.Module, stride: int, model_name: str, input_size: tuple[int, int]) -> BackboneCut | None:
    """``backbone`` cut after the last module of its chain whose output is a feature map at ``stride`` (one
    location per ``stride`` × ``stride`` input pixels), whatever trains; None where no module's is (a vision
    transformer's tokens, a backbone whose forward is no chain). The trunk's output is then the backbone's
    mid-level map at that resolution, found by shape alone, so any convolutional timm backbone has one."""
    chain = _chain(backbone, open_all=True)
    last = None
    with evaluating(backbone), torch.no_grad():
        x = torch.zeros(1, 3, *input_size, device=next(backbone.parameters()).device)
        for i, (_, module) in enumerate(chain):
            x = module(x)
            if x.dim() == 4 and x.shape[-2:] == (input_size[0] // stride, input_size[1] // stride):
                last = i
    if last is None or last + 1 >= len(chain):
        return None
    return cut_backbone_at(backbone, chain[last + 1][0], model_name, input_size)


def _split(backbone: nn.Module, chain: list[tuple[str, nn.Module]], first: int) -> BackboneCut:
    trunk = nn.Sequential(*(m for _, m in chain[:first]))
    at = chain[first][0] if first < len(chain) else HEAD
    return BackboneCut(trunk, _Tail(backbone, nn.Sequential(*(m for _, m in chain[first:]))), at)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block, then every submodule back in the mode it had (a plain
    ``train()`` would wake the frozen norm layers that :class:`~zoomloc.models.encoders.ViewEncoders` keeps in eval)."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes.items():
            m.training = mode


def _checked(cut: BackboneCut, backbone: nn.Module, input_size: tuple[int, int], refusal: str, advice: str) -> BackboneCut:
    """``cut``, once its halves are seen to compose to ``backbone``'s forward in eval mode; else ``refusal`` and ``advice``."""
    with evaluating(backbone), torch.no_grad():
        x = torch.rand(1, 3, *input_size, generator=torch.Generator().manual_seed(0))
        x = x.to(next(backbone.parameters()).device)
        same = torch.allclose(cut.tail(cut.trunk(x)), backbone(x), atol=_CHECK_TOLERANCE, rtol=_CHECK_TOLERANCE)
    if not same:
        raise InputError(f"{refusal} (trunk and tail do not compose to its forward){advice}")
    return cut
