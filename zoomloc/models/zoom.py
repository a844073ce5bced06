"""The zoom model: view encoders plus the autoregressive zoom policy, and its search by beam.

It learns by teacher forcing: the cross-entropy of every zoom decision given the true path
(:func:`~zoomloc.models.policy.zoom_loss`), plus, with refinement, the camera's offset in the
terminal cell, and, with a cell head (``PolicyConfig.match_dim``), the InfoNCE of the photo against
its terminal cell's context crop (:mod:`zoomloc.models.contrastive`). A query is answered by a beam
search over the paths (:mod:`zoomloc.models.beam`).

The cell head does not steer the zoom: it gives the model an embedding of the photo trained against
the map, which the photo witness and the nearest-photo reference compare photos by
(:meth:`place_embedding`). The policy's own street token is trained through the map too, but as
one token of a transformer, not as a space where photos of one place lie close; with frozen encoders
it is ImageNet's features as they are (NOTES.md: on the bench city's ``photo`` protocol the zoom's
witness places 11.7 points more test photos within 50 m by its cell head than by those).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from zoomloc.core.errors import ConfigError
from zoomloc.geo.grid import ZoomGrid
from zoomloc.models.base import Batch, Clues, LocalizationModel, LossSettings, MapIndex, Objective
from zoomloc.models.beam import BeamResult, beam_search
from zoomloc.models.contrastive import CellHeads, info_nce, own_pair_accuracy
from zoomloc.models.embeddings import SatEmbeddings
from zoomloc.models.encoders import EncoderConfig, SatTrunks
from zoomloc.models.policy import PolicyConfig, ZoomPolicy, offset_loss, zoom_loss

DECODE_CHUNK = 256  # queries decoded at once: a beam holds queries × beam sequences of activations
MATCH_INIT_TEMPERATURE = 0.07  # the cell head's, as the retrieval baseline's default


class ZoomOutput(NamedTuple):
    """A teacher-forced pass: step logits ``[B, L, k²]``, with refinement the offsets ``[B, 2]``, with a cell
    head the in-batch logits of the photos against their terminal cells' crops ``[B, B]``."""

    logits: Tensor
    offset: Tensor | None = None
    match: Tensor | None = None


class ZoomModel(CellHeads, LocalizationModel):
    """Street and satellite encoders and the autoregressive policy over ``grid`` (and the cell head, if asked)."""

    kind = "zoom"
    section = "policy"
    has_beam = True
    first_step_calibrated = True

    def __init__(self, encoder: EncoderConfig, settings: PolicyConfig, grid: ZoomGrid):
        super().__init__(encoder, settings, grid)
        self.settings = derived_policy(settings, self.encoders.num_features, grid)
        self.policy = ZoomPolicy(self.settings)
        if settings.match_dim:  # after the policy: a policy draws the same initial weights with or without it
            self._add_cell_heads(self.encoders.num_features, settings.match_dim, MATCH_INIT_TEMPERATURE)

    @property
    def sat_prefixes(self) -> tuple[int, ...]:
        """The views teacher forcing feeds: every path prefix's, plus the terminal context crop when refining
        or matching cells."""
        terminal = self.settings.refine or bool(self.settings.match_dim)
        return tuple(range(self.grid.levels + (1 if terminal else 0)))

    @property
    def searched_prefixes(self) -> tuple[int, ...]:
        """The levels the beam decodes over, plus the terminal context crop when refining (a cell head's crops
        only train it)."""
        return tuple(range(self.grid.levels + (1 if self.settings.refine else 0)))

    def encode_street(self, images: Tensor, *, trunk: bool = False) -> Tensor:
        return self.encoders.encode_street(images, trunk=trunk)

    def place_embedding(self, street: Tensor) -> Tensor:
        """The cell head's unit embedding of street embeddings ``[B, D]``; without a cell head, themselves."""
        return self.match_street(street) if self.settings.match_dim else street

    def forward(
        self, images: Tensor, paths: Tensor, sats: Tensor | SatTrunks, *, trunk: bool = False, with_street: bool = False
    ) -> ZoomOutput | tuple[ZoomOutput, Tensor]:
        """The teacher-forced pass (:class:`ZoomOutput`) and, ``with_street``, the street embeddings ``[B, D]`` it was
        computed from, for the place loss.

        ``paths`` are the actions fed (the last only with refinement). ``sats`` holds, for each path
        prefix of length 0..L-1 (and L, the terminal context crop, when refining or matching cells),
        either its view embedding ``[B, n, D]`` (from a cache), its view ``[B, n, 3, s, s]`` or its
        view's cached trunk output (:class:`SatTrunks`), encoded here when the satellite encoder trains.
        """
        sats = self.encoders.sat_features(sats)
        street = self.encode_street(images, trunk=trunk)
        levels = self.grid.levels
        if self.policy.offset_head is not None:
            out = ZoomOutput(*self.policy.forward_with_offset(street, sats, paths))
        else:
            out = ZoomOutput(self.policy(street, sats[:, :levels], paths))
        if self.settings.match_dim:
            out = out._replace(match=self.cell_logits(self.match_street(street), sats[:, levels], paths, self.grid.k))
        return (out, street) if with_street else out

    def loss(self, out: ZoomOutput, paths: Tensor, batch: Batch, settings: LossSettings) -> Objective:
        """Cross-entropy of every zoom step (plus the offset loss when refining, the cell head's InfoNCE when
        matching cells); acc: teacher-forced steps right (match_acc: photos whose own crop is the batch's closest)."""
        logits = out.logits.float()
        lost = batch.get("lost") if settings.lost_uniform else None
        loss = zoom_loss(logits, paths, settings.label_smoothing, lost)
        stats = {"acc": (logits.argmax(-1) == paths).float().mean().item()}
        if out.offset is not None:
            loss = loss + settings.refine_weight * offset_loss(out.offset.float(), batch["offset"].to(out.offset.device))
        if out.match is not None:
            loss = loss + self.settings.match_weight * info_nce(out.match)
            stats["match_acc"] = own_pair_accuracy(out.match)
        return loss, stats

    def index(self, sat: SatEmbeddings) -> ZoomIndex:
        return ZoomIndex(self.policy, sat.only(self.searched_prefixes))

    @classmethod
    def supports_rollout(cls, settings: PolicyConfig, encoder: EncoderConfig) -> bool:
        """Rolled-out paths need their views' embeddings cached (a frozen satellite encoder), and no offset or cell
        to match: both are the true path's, which a rolled-out path does not reach."""
        return not settings.refine and not settings.match_dim and encoder.sat_frozen


def derived_policy(settings: PolicyConfig, embed_dim: int, grid: ZoomGrid) -> PolicyConfig:
    """``settings`` with the sizes that follow the encoder and the grid; one given that disagrees is refused
    (it would be silently replaced)."""
    derived = {"embed_dim": embed_dim, "k": grid.k, "levels": grid.levels}
    for name, value in derived.items():
        given = getattr(settings, name)
        if given is not None and given != value:
            source = "the encoder's feature size" if name == "embed_dim" else "the pyramid's grid"
            raise ConfigError(f"policy.{name} is {given} but {source} makes it {value}: leave policy.{name} out, it follows {source}")
    return dataclasses.replace(settings, **derived)


class ZoomIndex(MapIndex):
    """The policy decoding over a pyramid's cached view embeddings."""

    def __init__(self, policy: ZoomPolicy, sat: SatEmbeddings):
        self.policy, self.sat = policy, sat

    def search(self, street: Tensor, *, beam: int, topk: int, clues: Clues | None = None) -> list[BeamResult]:
        """The ``topk`` best paths of a beam search of width ``max(beam, topk)``: a search keeps only
        ``beam`` paths, so asking for more candidates widens it."""
        return [
            r
            for chunk in street.split(DECODE_CHUNK)
            for r in beam_search(self.policy, chunk, self.sat.of_paths, beam=max(beam, topk), topk=topk, temperature=self.temperature)
        ]

    def shuffled(self, seed: int) -> ZoomIndex:
        index = ZoomIndex(self.policy, self.sat.shuffled(seed))
        index.temperature = self.temperature
        return index

    @property
    def embedding_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.sat.levels, self.sat.terminal) if t is not None)

    def diagnostics(self, street: Tensor, truth: np.ndarray, decoded: np.ndarray) -> dict[str, Any]:
        """Step accuracy free-running (the share of queries whose decoded path is right down to each
        level) and from the true parent (:meth:`teacher_forced`)."""
        return {
            "step_accuracy": [float(100 * v) for v in np.cumprod(decoded == truth, axis=1).mean(axis=0)],
            "teacher_forced": self.teacher_forced(street, truth),
        }

    @torch.no_grad()
    def calibration_logits(self, street: Tensor, truth: np.ndarray) -> tuple[Tensor, Tensor]:
        """Every zoom step's logits from the true parent ``[Q, L, k²]`` (teacher forced) and the true actions."""
        paths = torch.as_tensor(truth, device=street.device)
        levels = range(self.sat.grid.levels)
        logits = torch.cat(
            [self.policy(s, self.sat.of_prefixes(p, levels), p) for s, p in zip(street.split(DECODE_CHUNK), paths.split(DECODE_CHUNK))]
        )
        return logits.float(), paths

    @torch.no_grad()
    def teacher_forced(self, street: Tensor, truth: np.ndarray) -> dict[str, list[float]]:
        """Each zoom step judged on its own: the policy given the true cells so far.

        Free-running accuracy stops at the first wrong step, so it cannot tell a later step that
        would choose well from one that cannot. Here every step starts from the true parent:
        ``step_accuracy`` is the share choosing the true child, ``true_child_rank`` the true
        child's mean rank among the k² (0 = first; a guess averages (k² - 1) / 2, and more than
        that means the policy steers away from the truth, as it does from cells that held no
        training photo).
        """
        logits, paths = self.calibration_logits(street, truth)
        true = logits.gather(-1, paths[..., None])
        rank = (logits > true).sum(-1).float()
        return {
            "step_accuracy": [float(v) for v in 100 * (rank == 0).float().mean(0)],
            "true_child_rank": [float(v) for v in rank.mean(0)],
        }
