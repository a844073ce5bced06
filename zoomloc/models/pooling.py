"""How an encoder turns its feature map ``[B, C, h, w]`` into one vector: the aggregators.

``avg`` is ImageNet's average (timm's own), :class:`GeM` the place-recognition field's default, and
:class:`NetVLAD` the learned aggregator of Arandjelović et al.: each local feature is softly assigned
to K learned cluster centres and the residuals to each centre are summed, so that a descriptor
records *which kinds* of local features a view holds and how they sit around their centres instead
of one mean over everything. That matters here because the invariance a new capture asks for lives
in mid-level local features and pooling throws it away (``benchmarks/results/bench/NOTES.md``,
twelfth and thirteenth sessions): matched one by one, ``blocks.4`` features of two captures of a
place agree twice as often as their GeM vectors, and a NetVLAD trained on the frozen ``blocks.5``
maps finds a new capture's nearest training photo twice as often as their GeM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KMEANS_ITERATIONS = 20


class GeM(nn.Module):
    """Generalised mean pooling ``(mean x^p)^(1/p)`` over a feature map ``[B, C, h, w]`` → ``[B, C]``.

    Radenović et al.'s pooling for image retrieval: p = 1 is the average, p → ∞ the maximum; p
    starts at 3 and learns. Activations are clamped at ``eps`` first (GeM needs positive inputs;
    EfficientNet's activations are non-negative anyway).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, trains: bool = True):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=trains)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        p = self.p.float()
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / p).to(x.dtype)


class NetVLAD(nn.Module):
    """NetVLAD over a feature map ``[B, C, h, w]`` → ``[B, out_features]``, L2-normalised.

    Local features are L2-normalised, softly assigned to ``clusters`` centres (a 1×1 convolution and
    a softmax), their residuals summed per centre, each centre's sum normalised (intra-normalisation)
    and the whole flattened; ``dim`` > 0 projects the K·C values to ``dim`` (the learned stand-in for
    NetVLAD's PCA-whitening, and what keeps the policy's input layer small), 0 keeps them.

    The centres start at random directions; :meth:`fit` sets them, as the NetVLAD paper does, to the
    k-means centres of local features of the training data, with the assignment's sharpness
    ``alpha`` chosen from their spacing (a softmax that is nearly the hard assignment).
    """

    def __init__(self, channels: int, clusters: int = 32, dim: int = 512):
        super().__init__()
        self.centroids = nn.Parameter(F.normalize(torch.randn(clusters, channels), dim=1))
        self.assign = nn.Conv2d(channels, clusters, 1)
        self.project = nn.Linear(clusters * channels, dim) if dim else nn.Identity()
        self.out_features = dim or clusters * channels
        # Whether the centres came from data (fit, or a checkpoint that had them fitted): a run fits a fresh one once.
        self.register_buffer("fitted", torch.tensor(False))
        self._set_assignment()

    @torch.no_grad()
    def fit(self, maps: Tensor, seed: int = 0) -> None:
        """Centres from the k-means (cosine, seeded) of the local features of ``maps`` ``[N, C, h, w]``;
        with fewer features than centres (a tiny city), as many centres as features, the rest kept."""
        local = F.normalize(maps.float().flatten(2).transpose(1, 2).reshape(-1, maps.shape[1]), dim=1)
        k = min(len(self.centroids), len(local))
        centres = local[torch.randperm(len(local), generator=torch.Generator().manual_seed(seed))[:k]].clone()
        for _ in range(KMEANS_ITERATIONS):
            nearest = (local @ centres.T).argmax(1)
            sums = torch.zeros_like(centres).index_add_(0, nearest, local)
            filled = torch.bincount(nearest, minlength=k) > 0  # an empty cluster keeps its centre
            centres[filled] = F.normalize(sums[filled], dim=1)
        self.centroids[:k] = centres
        self._set_assignment()
        self.fitted.fill_(True)

    @torch.no_grad()
    def _set_assignment(self) -> None:
        """The assignment convolution of the current centres: ``softmax(2α c·x − α|c|²)`` is the soft
        nearest centre, sharp for ``α`` = 30 over the centres' mean squared spacing (NetVLAD's init)."""
        c = self.centroids
        k = len(c)
        spacing = (c[:, None] - c[None]).pow(2).sum(-1).sum() / max(k * (k - 1), 1)
        alpha = 30.0 / spacing.clamp(min=1e-6).sqrt()
        self.assign.weight.copy_((2 * alpha * c)[:, :, None, None])
        self.assign.bias.copy_(-alpha * c.pow(2).sum(1))

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):  # a sharp softmax and sums of residuals: float32
            return self._aggregate(F.normalize(x.float(), dim=1))

    def _aggregate(self, x: Tensor) -> Tensor:
        weights = F.softmax(self.assign(x), dim=1).flatten(2)  # [B, K, hw]
        residuals = torch.einsum("bkn,bcn->bkc", weights, x.flatten(2)) - weights.sum(-1, keepdim=True) * self.centroids
        vlad = F.normalize(F.normalize(residuals, dim=-1).flatten(1), dim=-1)
        return F.normalize(self.project(vlad), dim=-1)
