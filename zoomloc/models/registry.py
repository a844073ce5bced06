"""The model kinds, and the config that names one: ``model:`` in a run config, a checkpoint's metadata.

A model is defined by its :class:`ModelConfig` and the :class:`~zoomloc.geo.grid.ZoomGrid` it
localizes on (k and levels fix the zoom policy's action space and sequence length, and the
retrieval database's cells), so checkpoints carry both and :func:`build_model` rebuilds any
kind from them. To add a kind: subclass :class:`~zoomloc.models.base.LocalizationModel`, give it
a settings dataclass, add both here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from zoomloc.geo.grid import ZoomGrid
from zoomloc.models.base import LocalizationModel
from zoomloc.models.encoders import EncoderConfig
from zoomloc.models.policy import PolicyConfig
from zoomloc.models.retrieval import RetrievalConfig, RetrievalModel
from zoomloc.models.zoom import ZoomModel

KINDS: dict[str, type[LocalizationModel]] = {cls.kind: cls for cls in (ZoomModel, RetrievalModel)}


@dataclass(frozen=True)
class ModelConfig:
    """Which model: its kind, its encoders, and its kind's own section (``policy`` or ``retrieval``).

    Setting another kind's section is refused: it would silently change nothing.
    """

    kind: Literal["zoom", "retrieval"] = "zoom"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def __post_init__(self) -> None:
        for cls in KINDS.values():
            if cls.kind != self.kind and getattr(self, cls.section) != type(getattr(self, cls.section))():
                raise ValueError(f"the {cls.section} section applies to kind {cls.kind}, this model is kind {self.kind}")

    @property
    def model_class(self) -> type[LocalizationModel]:
        return KINDS[self.kind]

    @property
    def settings(self) -> PolicyConfig | RetrievalConfig:
        """The kind's own section."""
        return getattr(self, self.model_class.section)


def build_model(cfg: ModelConfig, grid: ZoomGrid) -> LocalizationModel:
    """The model of ``cfg.kind`` over ``grid``, encoder weights loaded as ``cfg.encoder`` says."""
    return cfg.model_class(cfg.encoder, cfg.settings, grid)


def config_of(model: LocalizationModel) -> ModelConfig:
    """The config that rebuilds ``model`` (its settings as the model completed them)."""
    return ModelConfig(kind=model.kind, encoder=model.encoder_cfg, **{model.section: model.settings})
