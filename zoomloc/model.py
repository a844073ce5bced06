"""The zoom model: view encoders plus the zoom policy, built from a config and a grid.

A model is defined by its :class:`ModelConfig` and the :class:`~zoomloc.grid.ZoomGrid` it
zooms over (k and levels fix the policy's action space and sequence length), so checkpoints
carry both and :func:`zoomloc.checkpoint.load_model` needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from torch import Tensor, nn

from zoomloc.encoders import EncoderConfig, build_encoder
from zoomloc.grid import ZoomGrid
from zoomloc.policy import PolicyConfig, ZoomPolicy


@dataclass(frozen=True)
class ModelConfig:
    """Which model: its kind, encoders and (for ``zoom``) policy sizes.

    The policy's ``k``, ``levels`` and ``embed_dim`` are not taken from here: they follow the
    pyramid's grid and the encoder's feature size when the model is built.
    """

    kind: Literal["zoom"] = "zoom"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)


class ZoomModel(nn.Module):
    """Street and satellite encoders and the autoregressive policy over ``grid``."""

    def __init__(self, cfg: ModelConfig, grid: ZoomGrid):
        super().__init__()
        self.encoders = build_encoder(cfg.encoder)
        policy_cfg = replace(cfg.policy, embed_dim=self.encoders.num_features, k=grid.k, levels=grid.levels)
        self.cfg = replace(cfg, policy=policy_cfg)
        self.grid = grid
        self.policy = ZoomPolicy(policy_cfg)

    def encode_street(self, images: Tensor) -> Tensor:
        return self.encoders.encode_street(images)

    def encode_sat(self, views: Tensor) -> Tensor:
        return self.encoders.encode_sat(views)

    def forward(self, images: Tensor, paths: Tensor, sats: Tensor) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced training outputs: logits ``[B, L, k²]`` and, with refinement, offsets ``[B, 2]``.

        ``sats`` holds, for each path prefix of length 0..L-1 (and L, the terminal context, when
        refining), either its view embedding ``[B, n, D]`` (from a cache) or its view ``[B, n, 3, s, s]``
        (encoded here, when the satellite encoder trains). One call does it all so that
        DistributedDataParallel sees every trainable parameter used in its forward.
        """
        if sats.dim() == 5:
            b, n = sats.shape[:2]
            sats = self.encode_sat(sats.flatten(0, 1)).view(b, n, -1)
        street = self.encode_street(images)
        if self.policy.offset_head is not None:
            return self.policy.forward_with_offset(street, sats, paths)
        return self.policy(street, sats, paths), None
