"""The models: the zoom model (view encoders plus the zoom policy) and the retrieval baseline.

A model is defined by its :class:`ModelConfig` and the :class:`~zoomloc.geo.grid.ZoomGrid` it
localizes on (k and levels fix the policy's action space and sequence length, and the
retrieval database's cells), so checkpoints carry both and :func:`build_model` rebuilds either
kind from them: :func:`zoomloc.models.checkpoint.load_model`, the trainer and the
:class:`~zoomloc.inference.localize.Localizer` need nothing else.

Both kinds share the encoders and this training interface, so one trainer serves both:
``encoders``, ``grid``, ``cfg``, ``encode_street(images, trunk=)``, ``sat_prefixes`` (which views of
its path a training sample's satellite input holds) and ``forward(images, paths, sats, trunk=)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from torch import Tensor, nn

from zoomloc.geo.grid import ZoomGrid
from zoomloc.models.encoders import EncoderConfig, build_encoder
from zoomloc.models.policy import PolicyConfig, ZoomPolicy
from zoomloc.models.retrieval import RetrievalConfig, RetrievalModel


@dataclass(frozen=True)
class ModelConfig:
    """Which model: its kind, encoders and its kind's own section (``policy`` or ``retrieval``).

    The policy's ``k``, ``levels`` and ``embed_dim`` are not taken from here: they follow the
    pyramid's grid and the encoder's feature size when the model is built. Setting the other
    kind's section is refused: it would silently change nothing.
    """

    kind: Literal["zoom", "retrieval"] = "zoom"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def __post_init__(self) -> None:
        if self.kind == "zoom" and self.retrieval != RetrievalConfig():
            raise ValueError("the retrieval section applies to kind retrieval, this model is kind zoom")
        if self.kind == "retrieval" and self.policy != PolicyConfig():
            raise ValueError("the policy section applies to kind zoom, this model is kind retrieval")


class ZoomModel(nn.Module):
    """Street and satellite encoders and the autoregressive policy over ``grid``."""

    def __init__(self, cfg: ModelConfig, grid: ZoomGrid):
        super().__init__()
        self.encoders = build_encoder(cfg.encoder)
        policy_cfg = replace(cfg.policy, embed_dim=self.encoders.num_features, k=grid.k, levels=grid.levels)
        self.cfg = replace(cfg, policy=policy_cfg)
        self.grid = grid
        self.policy = ZoomPolicy(policy_cfg)

    @property
    def sat_prefixes(self) -> tuple[int, ...]:
        """The views teacher forcing feeds: every path prefix's, plus the terminal context crop when refining."""
        return tuple(range(self.grid.levels + (1 if self.policy.offset_head is not None else 0)))

    def encode_street(self, images: Tensor, *, trunk: bool = False) -> Tensor:
        """Street embeddings ``[B, D]`` of photos, or of their cached trunk outputs (``trunk``)."""
        return self.encoders.encode_street(images, trunk=trunk)

    def encode_sat(self, views: Tensor) -> Tensor:
        return self.encoders.encode_sat(views)

    def forward(self, images: Tensor, paths: Tensor, sats: Tensor, *, trunk: bool = False) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced training outputs: logits ``[B, L, k²]`` and, with refinement, offsets ``[B, 2]``.

        ``images`` are photos, or with ``trunk`` their street-cache entries (:mod:`zoomloc.data.street_cache`).
        ``paths`` are the actions fed (the last only with refinement). ``sats`` holds, for each path
        prefix of length 0..L-1 (and L, the terminal context, when
        refining), either its view embedding ``[B, n, D]`` (from a cache) or its view ``[B, n, 3, s, s]``
        (encoded here, when the satellite encoder trains). One call does it all so that
        DistributedDataParallel sees every trainable parameter used in its forward.
        """
        sats = self.encoders.sat_features(sats)
        street = self.encode_street(images, trunk=trunk)
        if self.policy.offset_head is not None:
            return self.policy.forward_with_offset(street, sats, paths)
        return self.policy(street, sats, paths), None


Model = ZoomModel | RetrievalModel


def build_model(cfg: ModelConfig, grid: ZoomGrid) -> Model:
    """The model of ``cfg.kind`` over ``grid``, encoder weights loaded as ``cfg.encoder`` says."""
    return RetrievalModel(cfg, grid) if cfg.kind == "retrieval" else ZoomModel(cfg, grid)
