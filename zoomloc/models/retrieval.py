"""The contrastive retrieval baseline (Sample4Geo-style): photos and map cells in one embedding space.

The zoom model's rival, built to differ from it in the method only: the same view encoders
(:func:`zoomloc.models.encoders.build_encoder`, one :class:`~zoomloc.models.encoders.EncoderConfig`: backbone,
weights, image sizes, freezing), a linear head per view to ``dim`` and L2 normalisation
(:class:`~zoomloc.models.contrastive.CellHeads`). Training pulls each photo towards its terminal
cell's context crop and away from every other pair of its batch (symmetric InfoNCE, learnable
temperature, pairs of one cell masked). The database is every terminal cell's context crop; a
query is answered by exact cosine search — one matrix product — and the most similar cell's
centre is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from zoomloc.geo.grid import ZoomGrid
from zoomloc.models.base import Batch, Clues, LocalizationModel, LossSettings, MapIndex, Objective
from zoomloc.models.beam import BeamResult
from zoomloc.models.contrastive import MAX_LOGIT_SCALE, CellHeads, info_nce, own_pair_accuracy
from zoomloc.models.embeddings import SatEmbeddings
from zoomloc.models.encoders import EncoderConfig, SatTrunks

SEARCH_CHUNK = 1 << 22  # similarities held at once (queries × cells) by exact search


@dataclass(frozen=True)
class RetrievalConfig:
    """The retrieval model's own settings; its encoders are ``ModelConfig.encoder``, as the zoom model's.

    ``neighbour_batching`` fills training batches with groups of ``neighbour_group`` photos
    taken within ``neighbour_radius_m`` of each other, in different terminal cells (Sample4Geo's
    GPS sampling: negatives from the same street, not only from across the city).
    ``neighbour_group`` must divide the batch size, so that no group is cut between batches.
    """

    dim: int = 256
    init_temperature: float = 0.07
    neighbour_batching: bool = False
    neighbour_radius_m: float = 100.0
    neighbour_group: int = 4

    def __post_init__(self) -> None:
        if self.dim < 1 or self.neighbour_group < 2:
            raise ValueError(f"dim must be positive and neighbour_group at least 2, got {self.dim} and {self.neighbour_group}")
        if not 1 / MAX_LOGIT_SCALE <= self.init_temperature <= 1:
            raise ValueError(f"init_temperature must lie in [{1 / MAX_LOGIT_SCALE}, 1], got {self.init_temperature}")
        if not self.neighbour_radius_m > 0:
            raise ValueError(f"neighbour_radius_m must be positive, got {self.neighbour_radius_m}")


class RetrievalModel(CellHeads, LocalizationModel):
    """Street and satellite encoders with a projection head each, and the similarity scale."""

    kind = "retrieval"
    section = "retrieval"

    def __init__(self, encoder: EncoderConfig, settings: RetrievalConfig, grid: ZoomGrid):
        super().__init__(encoder, settings, grid)
        self._add_cell_heads(self.encoders.num_features, settings.dim, settings.init_temperature)

    @property
    def sat_prefixes(self) -> tuple[int, ...]:
        """The satellite input of a training sample: its full path's view, the terminal context crop."""
        return (self.grid.levels,)

    def encode_street(self, images: Tensor, *, trunk: bool = False) -> Tensor:
        """Unit-length embeddings ``[B, dim]`` of street images, or of their cached trunk outputs
        (``trunk``; see :meth:`ViewEncoders.encode_street`)."""
        return self.match_street(self.encoders.encode_street(images, trunk=trunk))

    def forward(
        self, images: Tensor, paths: Tensor, sats: Tensor | SatTrunks, *, trunk: bool = False, with_street: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Training logits ``[B, B]`` of every photo against every context crop of the batch (and, ``with_street``,
        the photos' embeddings ``[B, dim]``, for the place loss).

        ``images`` are photos, or with ``trunk`` their street-cache entries; ``paths`` ``[B, L]``
        name each pair's terminal cell (for the false-negative mask);
        ``sats`` is the crop's cached backbone feature ``[B, 1, D]`` or, when the satellite
        encoder trains, the crop ``[B, 1, 3, s, s]`` or its cached trunk output (:class:`SatTrunks`),
        encoded here, so that DDP sees it.
        """
        sat = self.encoders.sat_features(sats)[:, 0]
        street = self.encode_street(images, trunk=trunk)
        logits = self.cell_logits(street, sat, paths, self.grid.k)
        return (logits, street) if with_street else logits

    def loss(self, out: Tensor, paths: Tensor, batch: Batch, settings: LossSettings) -> Objective:
        """Symmetric InfoNCE; acc: photos whose own crop is the most similar of the batch; the temperature."""
        stats = {"acc": own_pair_accuracy(out), "temperature": 1 / self.scale().item()}
        return info_nce(out), stats

    @torch.no_grad()
    def index(self, sat: SatEmbeddings) -> RetrievalIndex:
        """The search index of a pyramid: its terminal context crops' embeddings, from ``sat``'s cached features."""
        return RetrievalIndex(self.embed_sat(sat.terminal).float(), float(self.scale()), self.grid)

    @property
    def neighbour_groups(self) -> tuple[float, int] | None:
        s = self.settings
        return (s.neighbour_radius_m, s.neighbour_group) if s.neighbour_batching else None

    @classmethod
    def batch_multiple(cls, settings: RetrievalConfig) -> int:
        """A group of neighbours must not be cut between batches."""
        return settings.neighbour_group if settings.neighbour_batching else 1


# ---------------------------------------------------------------------- search
class RetrievalIndex(MapIndex):
    """Exact cosine search over every terminal cell of a grid.

    ``embeddings`` ``[N, dim]`` (unit rows, cell index order) are the database; a query's
    probabilities are the softmax of its scaled similarities over all N cells. A result reads
    like a zoom path: its steps are the cells of each level holding the answer, each with its
    share of the probability of the cell one level up, so their product is the answer's
    probability, as for the zoom model.
    """

    def __init__(self, embeddings: Tensor, logit_scale: float, grid: ZoomGrid):
        self.embeddings, self.logit_scale, self.grid = embeddings, logit_scale, grid
        cells = np.arange(grid.n_cells(grid.levels))
        paths = grid.path_of_cell(grid.levels, cells)
        device = embeddings.device
        self.paths = torch.from_numpy(paths).to(device)  # [N, L]
        # ancestors[l - 1][c]: the level-l cell holding terminal cell c, for l = 1..L.
        self.ancestors = [torch.from_numpy(grid.cell_of_path(paths[:, :level])).to(device) for level in range(1, grid.levels + 1)]

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def embedding_bytes(self) -> int:
        return self.embeddings.numel() * self.embeddings.element_size()

    @torch.no_grad()
    def search(self, street: Tensor, *, beam: int = 1, topk: int, clues: Clues | None = None) -> list[BeamResult]:
        """The ``topk`` most similar cells of each unit street embedding ``[Q, dim]``, best first
        (an exact search: ``beam`` does not apply).

        Queries go in chunks of at most :data:`SEARCH_CHUNK` similarities, so a city of any
        size is searched in bounded memory.
        """
        topk = min(topk, len(self))
        out: list[BeamResult] = []
        for chunk in street.split(max(1, SEARCH_CHUNK // len(self))):
            logp = (self.logit_scale / self.temperature * chunk.float() @ self.embeddings.T).log_softmax(1)  # [q, N]
            top_logp, cells = logp.topk(topk, dim=1)
            step_probs = self._step_probs(logp, cells)
            out += [BeamResult(self.paths[c], lp, sp) for c, lp, sp in zip(cells, top_logp, step_probs)]
        return out

    def shuffled(self, seed: int) -> RetrievalIndex:
        """The database rows permuted among the cells (a row is its context crop's embedding, projected row
        by row, so this is the same as projecting shuffled crops)."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).to(self.embeddings.device)
        index = RetrievalIndex(self.embeddings[order], self.logit_scale, self.grid)
        index.temperature = self.temperature
        return index

    @torch.no_grad()
    def calibration_logits(self, street: Tensor, truth: np.ndarray) -> tuple[Tensor, Tensor]:
        """The scaled similarities to every cell ``[Q, 1, N]`` (one decision: the cell) and the true cell."""
        cells = torch.as_tensor(self.grid.cell_of_path(truth), device=street.device)
        return (self.logit_scale * street.float() @ self.embeddings.T)[:, None, :], cells[:, None]

    def _step_probs(self, logp: Tensor, cells: Tensor) -> Tensor:
        """``[q, topk, L]``: P(level-l cell of each candidate | its level-(l-1) cell).

        In float64: with a scale of 100 a cell's probability can be ~1e-90, below float32.
        """
        p = logp.double().exp()
        marginals = [torch.ones_like(cells, dtype=torch.float64)]
        for level, ancestor in enumerate(self.ancestors, start=1):
            per_cell = p.new_zeros(len(p), self.grid.n_cells(level)).index_add_(1, ancestor, p)
            marginals.append(per_cell.gather(1, ancestor[cells]))
        m = torch.stack(marginals, dim=2)
        return (m[..., 1:] / m[..., :-1]).float()
