"""Photos and map cells in one embedding space: the cell heads and their in-batch contrastive loss.

Two linear heads, one per view, map the encoders' features to unit ``dim``-d embeddings, and a
learnable scale sharpens their cosine similarities; training pulls each photo towards its terminal
cell's context crop and away from every other pair of its batch (symmetric InfoNCE). That is the
retrieval baseline's whole method (:mod:`zoomloc.models.retrieval`), and the zoom model's optional
cell head (``PolicyConfig.match_dim``): an embedding of the photo trained against the map, the
one positive that every capture of a place shares, which the photo witness and the nearest-photo
reference compare photos by.

False negatives: two photos of one terminal cell in a batch have the same satellite crop, so
each would be the other's "negative" although it is the very image of its own positive.
:func:`contrastive_logits` masks those pairs out. Masking rather than batches of unique cells:
forbidding repeats would under-sample the cells with many photos and tie the batching to the
kind of model, while the mask costs one comparison of the batch's cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: a temperature below 0.01 makes the loss unstable


class CellHeads:
    """The two heads and the scale, for a :class:`~zoomloc.models.base.LocalizationModel` to add to itself.

    A mixin rather than a submodule so that the retrieval model's parameters keep their names
    (``street_head``, ``sat_head``, ``logit_scale``) and its checkpoints load as before.
    """

    street_head: nn.Linear
    sat_head: nn.Linear
    logit_scale: nn.Parameter

    def _add_cell_heads(self, features: int, dim: int, init_temperature: float) -> None:
        self.street_head = nn.Linear(features, dim)
        self.sat_head = nn.Linear(features, dim)
        # Learned in log space, as CLIP: the scale stays positive and moves by ratios.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    def scale(self) -> Tensor:
        """The similarity scale (1 / temperature), clamped at :data:`MAX_LOGIT_SCALE`."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def match_street(self, features: Tensor) -> Tensor:
        """Unit-length embeddings ``[..., dim]`` of street encoder features ``[..., D]``."""
        return F.normalize(self.street_head(features), dim=-1)

    def embed_sat(self, features: Tensor) -> Tensor:
        """Unit-length embeddings ``[..., dim]`` of satellite backbone features ``[..., D]`` (e.g. cached)."""
        return F.normalize(self.sat_head(features), dim=-1)

    def cell_logits(self, street: Tensor, sat: Tensor, paths: Tensor, k: int) -> Tensor:
        """In-batch logits ``[B, B]`` of street embeddings ``[B, dim]`` (unit) against the satellite features
        ``[B, D]`` of their terminal cells' context crops, with pairs of one cell masked (``paths`` ``[B, L]``)."""
        return contrastive_logits(street, self.embed_sat(sat), self.scale(), cell_ids(paths, k))


def cell_ids(paths: Tensor, k: int) -> Tensor:
    """One integer per path ``[B, L]``, equal for equal paths (the path read as a base-k² number)."""
    weights = (k * k) ** torch.arange(paths.shape[1] - 1, -1, -1, device=paths.device)
    return (paths * weights).sum(1)


def contrastive_logits(street: Tensor, sat: Tensor, logit_scale: Tensor | float, cells: Tensor | None = None) -> Tensor:
    """Scaled cosine similarities ``[B, B]`` of photos (rows) and satellite crops (columns): float32, or the
    product's lower precision under autocast (:func:`info_nce` takes them back to float32).

    With ``cells`` (``[B]``, each pair's terminal cell), a photo's similarity to another pair's
    crop of its own cell is masked (-inf): that crop is its own positive's image, no negative.
    The mask is symmetric, so columns (crop → photos) are masked alike.
    """
    logits = logit_scale * street.float() @ sat.float().T
    if cells is not None:
        same = (cells[:, None] == cells[None, :]) & ~torch.eye(len(cells), dtype=torch.bool, device=cells.device)
        logits = logits.masked_fill(same, float("-inf"))
    return logits


def info_nce(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE of in-batch logits ``[B, B]`` (pair i on the diagonal): photo → crop and crop → photo.

    No label smoothing (unlike the zoom steps): it would spread target mass onto masked pairs. The
    logits are taken in float32 whatever autocast made them: a softmax over a batch of scaled
    cosines in bfloat16 (8 bits of mantissa) loses the small differences the loss is about.
    """
    logits = logits.float()
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def own_pair_accuracy(logits: Tensor) -> float:
    """The share of photos whose own crop is the most similar of the batch."""
    return (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean().item()
