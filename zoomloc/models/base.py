"""What every model kind is asked: how it learns, how it searches a map, what it can be asked for.

The trainer, the evaluator, the :class:`~zoomloc.inference.localize.Localizer` and the
benchmark talk to a model only through :class:`LocalizationModel` and the :class:`MapIndex`
it binds to a city's view embeddings; none of them switches on the model's kind. A kind adds
itself to :mod:`zoomloc.models.registry` and brings its own settings dataclass (the section of
``ModelConfig`` named after ``section``), its loss, its search and its capabilities.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from zoomloc.geo.grid import ZoomGrid
from zoomloc.models.beam import BeamResult
from zoomloc.models.embeddings import SatEmbeddings
from zoomloc.models.encoders import EncoderConfig, build_encoder

Batch = dict[str, Tensor]
Objective = tuple[Tensor, dict[str, float]]  # a step's loss and what to log of it


@dataclass(frozen=True)
class LossSettings:
    """The training run's say in a model's loss (the rest of the loss is the model's own)."""

    label_smoothing: float = 0.1  # of classification steps (the zoom decisions)
    refine_weight: float = 1.0  # of a sub-cell offset, for a model that predicts one
    lost_uniform: bool = False  # steps from a wrong parent (a rollout's) target the uniform distribution


@dataclass(frozen=True)
class Clues:
    """What queries tell besides their street embeddings, row-aligned with them, each None where not known: the
    compass ``heading_deg`` ``[Q]`` (degrees clockwise from north, NaN for a photo without one) and ``local``, the
    street encoder's mid-level maps as unit descriptors ``[Q, h, w, C]`` (:mod:`zoomloc.inference.local_match`).
    An index that reads them (the training photos' witness) does; a model's own search ignores them."""

    heading_deg: np.ndarray | None = None
    local: Tensor | None = None

    def __getitem__(self, rows: np.ndarray | list[int] | slice) -> Clues:
        """The clues of queries ``rows``."""
        return Clues(None if self.heading_deg is None else self.heading_deg[rows], None if self.local is None else self.local[rows])


class MapIndex(ABC):
    """A model bound to one pyramid's view embeddings: what a query searches.

    ``temperature`` divides the model's logits in every search: 1 as trained, or the one fitted on
    validation photos (:func:`~zoomloc.inference.confidence.fit_temperature` on
    :meth:`calibration_logits`), so that a candidate's probability means what it says — what a
    capture's fusion weighs one photo's candidates by.
    """

    temperature: float = 1.0

    @abstractmethod
    def search(self, street: Tensor, *, beam: int, topk: int, clues: Clues | None = None) -> list[BeamResult]:
        """The ``topk`` best terminal cells of each street embedding ``[Q, D]``, best first, in
        bounded memory whatever the number of queries (``beam`` applies to kinds with ``has_beam``).
        ``clues`` are what else the queries tell (:class:`Clues`), for an index that reads them."""

    @property
    @abstractmethod
    def embedding_bytes(self) -> int:
        """The memory its map embeddings take: what a city's size costs a query process."""

    @abstractmethod
    def calibration_logits(self, street: Tensor, truth: np.ndarray) -> tuple[Tensor, Tensor]:
        """The logits ``[Q, S, C]`` (at temperature 1) of the S decisions that put each street embedding
        ``[Q, D]`` in its true terminal cell (``truth``: paths ``[Q, L]``), and the right choice of each
        ``[Q, S]``: what a temperature is fitted on."""

    @abstractmethod
    def shuffled(self, seed: int) -> MapIndex:
        """This index, at its temperature, over its views permuted among the cells of each level (seeded):
        the map ablation (:meth:`~zoomloc.models.embeddings.SatEmbeddings.shuffled`)."""

    def diagnostics(self, street: Tensor, truth: np.ndarray, decoded: np.ndarray) -> dict[str, Any]:
        """Kind-specific figures of an evaluation, from street embeddings ``[Q, D]``, true paths and
        decoded paths ``[Q, L]`` (none by default)."""
        return {}


class LocalizationModel(nn.Module, ABC):
    """View encoders plus whatever a kind learns on top of them, over one grid.

    ``forward(images, paths, sats, trunk=, with_street=)`` is the training pass: ``images`` are
    photos or, with ``trunk``, their street-cache entries; ``paths`` the true (or rolled-out) paths;
    ``sats`` the view embeddings (or views, or their cached trunk outputs) of the path prefixes of
    lengths ``sat_prefixes``; ``with_street`` returns ``(output, street embeddings)``, which the
    place loss (:mod:`zoomloc.models.place`) reads. One call does it all so that
    DistributedDataParallel sees every trainable parameter.
    """

    kind: ClassVar[str]  # ModelConfig.kind
    section: ClassVar[str]  # the ModelConfig field that holds its settings
    has_beam: ClassVar[bool] = False  # does its search have a beam width to widen?
    first_step_calibrated: ClassVar[bool] = False  # is its first step's probability read against a guess (zoomloc.inference.confidence)?

    def __init__(self, encoder: EncoderConfig, settings: Any, grid: ZoomGrid):
        super().__init__()
        self.encoder_cfg, self.settings, self.grid = encoder, settings, grid
        self.encoders = build_encoder(encoder)

    @property
    @abstractmethod
    def sat_prefixes(self) -> tuple[int, ...]:
        """The lengths of the path prefixes whose views a training sample's satellite input holds."""

    @property
    def searched_prefixes(self) -> tuple[int, ...]:
        """The lengths of the path prefixes whose views its index reads (what a query process loads): its
        training ones, unless a kind trains on views it never searches."""
        return self.sat_prefixes

    @abstractmethod
    def encode_street(self, images: Tensor, *, trunk: bool = False) -> Tensor:
        """Street embeddings ``[B, D]`` of photos, or of their cached trunk outputs (``trunk``)."""

    def place_embedding(self, street: Tensor) -> Tensor:
        """What two photos are compared by (the photo witness, the nearest-photo reference, the place loss), from
        their street embeddings ``[B, D]``: these themselves unless a kind has an embedding trained for it."""
        return street

    @abstractmethod
    def loss(self, out: Any, paths: Tensor, batch: Batch, settings: LossSettings) -> Objective:
        """The training loss of ``forward``'s output against ``paths``, and what to log of the step
        (``acc`` at least)."""

    @abstractmethod
    def index(self, sat: SatEmbeddings) -> MapIndex:
        """This model's search over the map whose view embeddings are ``sat`` (it keeps what it reads)."""

    @property
    def neighbour_groups(self) -> tuple[float, int] | None:
        """``(radius_m, group)``: training batches made of groups of photos taken this close to each
        other, or None for random batches."""
        return None

    @classmethod
    def batch_multiple(cls, settings: Any) -> int:
        """What a training batch size must be a multiple of, under ``settings``."""
        return 1

    @classmethod
    def supports_rollout(cls, settings: Any, encoder: EncoderConfig) -> bool:
        """Can it train from its own decisions (:mod:`zoomloc.training.rollout`)?"""
        return False
