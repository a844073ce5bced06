"""The autoregressive zoom policy: a small causal transformer over street, view and action tokens.

The token sequence for a path of L actions is ``[g, s0, a0, s1, a1, …, s_{L-1}]``: ``g`` the
street-view embedding, ``s_i`` the satellite view of the cell visited at step i (``s0`` the whole
region), ``a_i`` the action taken there (one of k² children). The hidden state at each ``s_i``
predicts ``a_i``. With the optional refinement head the sequence goes on with ``a_{L-1}, s_L``
(the terminal cell's view), and the hidden state at ``s_L`` predicts where in that cell the
camera stands.

Positions are learned embeddings of the token index only: the layout is fixed, so the index
already says both the token's type (street, view, action) and its level, and a separate type or
level embedding would add nothing. The three kinds of token get their own input projection.

Inputs are precomputed encoder embeddings (:mod:`zoomloc.models.encoders`), projected here to the
decoder width, so satellite views can be embedded once and cached. Decoding at inference runs
token by token with a key/value cache (:class:`KVCache`), and equals the teacher-forced pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class PolicyConfig:
    """Sizes of the policy. Defaults are small for CPU; the paper uses 6 layers, 8 heads, width 768.

    ``embed_dim``, ``k`` and ``levels`` follow the encoder's feature size and the pyramid's grid:
    a model config leaves them out (None) and the zoom model fills them in
    (:func:`zoomloc.models.zoom.derived_policy`); a :class:`ZoomPolicy` needs them set.
    """

    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.1
    refine: bool = False  # predict the camera's offset inside the terminal cell
    # The cell head beside the policy (:class:`~zoomloc.models.contrastive.CellHeads`): street and
    # terminal-cell embeddings of match_dim (0: none) trained with InfoNCE, weighted by match_weight
    # beside the zoom's cross-entropy; what the photo witness compares photos by.
    match_dim: int = 0
    match_weight: float = 1.0
    embed_dim: int | None = None  # the encoder's feature size (EfficientNet-Lite0: 1280)
    k: int | None = None
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        derived = [v for v in (self.embed_dim, self.levels) if v is not None]
        if min(self.width, self.layers, self.heads, self.mlp_ratio, *derived) < 1 or (self.k is not None and self.k < 2):
            raise ValueError("sizes must be positive and k >= 2")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.match_dim < 0 or self.match_weight < 0:
            raise ValueError(f"match_dim and match_weight must be ≥ 0, got {self.match_dim} and {self.match_weight}")

    @property
    def actions(self) -> int:
        return self.k * self.k

    @property
    def max_tokens(self) -> int:
        """``g`` plus a view and an action per level, plus the terminal view."""
        return 2 * self.levels + 2


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens decoded so far (``[B, heads, T, head_dim]``)."""

    layers: list[tuple[Tensor, Tensor]]

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def select(self, index: Tensor) -> KVCache:
        """The cache of the sequences ``index`` (beam search reorders and duplicates rows)."""
        return KVCache([(k[index], v[index]) for k, v in self.layers])


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention of new tokens over the cached ones and themselves, causally."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        t = k.shape[2]
        # New token j (at absolute index t-n+j) sees every index up to its own.
        mask = torch.arange(t, device=x.device)[None, :] <= torch.arange(t - n, t, device=x.device)[:, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, w)), (k, v)


class DecoderLayer(nn.Module):
    """Pre-norm transformer block: causal self-attention then MLP, each with a residual."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, kv = self.attn(self.norm1(x), past)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.norm2(x))), kv


class ZoomPolicy(nn.Module):
    """Chooses, level by level, which of the k² children holds the street view's camera.

    Teacher forcing (training) and cached stepwise decoding (inference) share every weight
    and give the same logits. Call :meth:`start` then :meth:`step` per level for decoding;
    :func:`zoomloc.models.beam.beam_search` does that for many queries and beams at once.
    """

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        if None in (cfg.embed_dim, cfg.k, cfg.levels):
            raise ValueError("a policy needs embed_dim, k and levels (the zoom model derives them)")
        self.cfg = cfg
        self.street_proj = nn.Linear(cfg.embed_dim, cfg.width)
        self.sat_proj = nn.Linear(cfg.embed_dim, cfg.width)
        self.action_emb = nn.Embedding(cfg.actions, cfg.width)
        self.pos_emb = nn.Embedding(cfg.max_tokens, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.actions)
        # The offset lies in [-0.5, 0.5] cell sides: a scaled tanh cannot leave the cell.
        self.offset_head = nn.Sequential(nn.Linear(cfg.width, 2), nn.Tanh()) if cfg.refine else None
        for emb in (self.action_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)

    # ------------------------------------------------------------------ core
    def _decode(self, tokens: Tensor, cache: KVCache | None) -> tuple[Tensor, KVCache]:
        """Hidden states of ``tokens`` ``[B, n, width]`` placed after the cached ones."""
        start = 0 if cache is None else cache.length
        if start + tokens.shape[1] > self.cfg.max_tokens:
            raise ValueError(f"sequence longer than {self.cfg.max_tokens} tokens ({self.cfg.levels} levels)")
        x = self.drop(tokens + self.pos_emb.weight[start : start + tokens.shape[1]])
        layers = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if cache is None else cache.layers[i])
            layers.append(kv)
        return self.norm(x), KVCache(layers)

    def _sequence(self, street: Tensor, sats: Tensor, fed_actions: Tensor) -> Tensor:
        """Tokens ``[g, s0, a0, s1, …, a_{n-2}, s_{n-1}]`` for n views and n-1 fed actions."""
        b, n = sats.shape[:2]
        if fed_actions.shape != (b, n - 1):
            raise ValueError(f"{n} views need {n - 1} fed actions, got shape {tuple(fed_actions.shape)}")
        tokens = street.new_empty(b, 2 * n, self.cfg.width)
        tokens[:, 0] = self.street_proj(street)
        tokens[:, 1::2] = self.sat_proj(sats)
        tokens[:, 2::2] = self.action_emb(fed_actions)
        return tokens

    def _view_states(self, street: Tensor, sats: Tensor, fed_actions: Tensor) -> Tensor:
        """Hidden states at the view tokens ``s_i``: ``[B, n, width]``."""
        hidden, _ = self._decode(self._sequence(street, sats, fed_actions), None)
        return hidden[:, 1::2]

    # ------------------------------------------------------------------ training
    def forward(self, street: Tensor, sats: Tensor, actions: Tensor) -> Tensor:
        """Teacher-forced logits ``[B, l, k²]`` of every step in one causal pass.

        ``street`` ``[B, D]``; ``sats`` ``[B, l, D]`` the views of the cells on the path (the
        region first); ``actions`` ``[B, l]`` the path. ``actions[:, -1]`` is only a target:
        it is not fed.
        """
        return self.head(self._view_states(street, sats, actions[:, :-1]))

    forward_teacher = forward

    def forward_with_offset(self, street: Tensor, sats: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits ``[B, l, k²]`` and the offset ``[B, 2]`` in the terminal cell.

        ``sats`` here has ``l + 1`` views: the last is the cell the full path ends in. All
        actions are fed; the state at that last view predicts the offset (see :meth:`offset`).
        """
        states = self._view_states(street, sats, actions)
        return self.head(states[:, :-1]), self.offset(states[:, -1])

    # ------------------------------------------------------------------ inference
    def start(self, street: Tensor, sat0: Tensor) -> tuple[Tensor, KVCache]:
        """Feed ``[g, s0]``; the hidden state at ``s0`` ``[B, width]`` and the cache."""
        tokens = torch.stack([self.street_proj(street), self.sat_proj(sat0)], dim=1)
        hidden, cache = self._decode(tokens, None)
        return hidden[:, -1], cache

    def step(self, action: Tensor, sat: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """Feed ``[a_i, s_{i+1}]`` (``[B]``, ``[B, D]``); the hidden state at ``s_{i+1}`` and the cache."""
        tokens = torch.stack([self.action_emb(action), self.sat_proj(sat)], dim=1)
        hidden, cache = self._decode(tokens, cache)
        return hidden[:, -1], cache

    def logits(self, hidden: Tensor) -> Tensor:
        """Next-action logits ``[..., k²]`` from view states."""
        return self.head(hidden)

    def offset(self, hidden: Tensor) -> Tensor:
        """Camera offset ``[..., 2]`` = (dx, dy) from the terminal view's state, in cell sides.

        dx runs east (along columns), dy south (along rows), 0 at the cell centre, each in
        [-0.5, 0.5]. Needs ``PolicyConfig(refine=True)``.
        """
        if self.offset_head is None:
            raise ValueError("this policy has no refinement head (PolicyConfig.refine is off)")
        return 0.5 * self.offset_head(hidden)


# ---------------------------------------------------------------------- losses
def zoom_loss(logits: Tensor, actions: Tensor, label_smoothing: float = 0.1, lost: Tensor | None = None) -> Tensor:
    """Cross-entropy of every step's logits ``[B, l, k²]`` against ``actions`` ``[B, l]``, averaged.

    Label smoothing keeps the policy from becoming overconfident at coarse levels, where
    neighbouring children are often equally plausible; beam search needs calibrated scores.
    Steps marked ``lost`` ``[B, l]`` (taken from a wrong parent, :mod:`zoomloc.training.rollout`) have the
    uniform distribution as their target instead: no child there holds the camera.
    """
    if lost is None:
        return F.cross_entropy(logits.flatten(0, 1), actions.flatten(), label_smoothing=label_smoothing)
    n = logits.shape[-1]
    target = F.one_hot(actions, n).float() * (1 - label_smoothing) + label_smoothing / n
    target = torch.where(lost[..., None], torch.full_like(target, 1 / n), target)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten(0, 1))


def offset_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 distance of predicted and true offsets ``[B, 2]`` (cell sides), averaged.

    L1 rather than L2: a geo-tag error of many metres should not dominate the batch.
    """
    return F.l1_loss(pred, target)
