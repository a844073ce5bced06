"""Embeddings of every pyramid view, computed once, so a query costs one street pass.

With a frozen satellite encoder the embedding of a cell's view never changes, so all of them
are computed once per (pyramid, encoder weights) and stored in HDF5. Inference then costs one
street-view encoder pass plus L small policy steps whatever the map size, and training reads
the same table instead of encoding L views per sample.

The retrieval model reads the same table: its database is the ``terminal`` rows through its
satellite projection head (one matrix product when it loads), so a zoom and a retrieval model
with the same frozen satellite weights share one cache file, and the head can train on cached
features.

The cache holds every table, for any model; a model reads only those it uses (its
``sat_prefixes`` to train, its ``searched_prefixes`` to answer): a zoom model the levels, a
retrieval model the terminal crops, which at 100 km² are most of the file.

HDF5 layout (``zoomloc embed``)::

    level_{l}   [k^(2l), D] float32   view embeddings of the cells of level l = 0..L-1
    terminal    [k^(2L), D] float32   embeddings of the terminal cells' context crops
    attrs: format_version, fingerprint (encoder weights), pyramid (file identity), grid attrs,
           build_s (seconds it took to compute the tables)
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from zoomloc.core.atomic import atomic_path
from zoomloc.core.errors import PyramidError
from zoomloc.geo.grid import ZoomGrid
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.models.encoders import ViewEncoders

FORMAT_VERSION = 2  # 2: build_s
BATCH = 64


@dataclass
class SatEmbeddings:
    """View embeddings per level (``levels[l]``: ``[k^(2l), D]``) and of the terminal context crops.

    A table a model does not use may be absent (None, see :meth:`only`). ``build_s`` is how long
    computing all of them from the pyramid took, whenever that was (the index build time).
    """

    grid: ZoomGrid
    levels: list[Tensor | None]
    terminal: Tensor | None
    build_s: float = float("nan")

    @property
    def dim(self) -> int:
        return next(t for t in (*self.levels, self.terminal) if t is not None).shape[1]

    def table(self, length: int) -> Tensor:
        """The embeddings of the views of paths of ``length`` (L: the terminal context crops)."""
        table = self.terminal if length == self.grid.levels else self.levels[length]
        if table is None:
            raise ValueError(f"the embeddings of paths of length {length} were not loaded")
        return table

    def only(self, lengths: Sequence[int]) -> SatEmbeddings:
        """These embeddings with only the tables of paths of ``lengths`` (what a model reads)."""
        L = self.grid.levels
        levels = [t if level in lengths else None for level, t in enumerate(self.levels)]
        return SatEmbeddings(self.grid, levels, self.terminal if L in lengths else None, self.build_s)

    def of_paths(self, paths: Tensor) -> Tensor:
        """Embeddings ``[N, D]`` of the cells named by ``paths`` ``[N, l]`` (l = L: the context crop)."""
        table = self.table(paths.shape[1])
        cells = torch.from_numpy(self.grid.cell_of_path(paths.cpu().numpy())).to(table.device)
        return table[cells]

    def of_prefixes(self, paths: Tensor, lengths: Sequence[int]) -> Tensor:
        """``[N, n, D]``: for each path ``[N, L]``, the embeddings of its prefixes of the n ``lengths``.

        A model's training input (its ``sat_prefixes``): 0..L-1 for teacher forcing, L (the
        terminal context crop) for refinement and for retrieval.
        """
        return torch.stack([self.of_paths(paths[:, :n]) for n in lengths], dim=1)

    def shuffled(self, seed: int) -> SatEmbeddings:
        """These embeddings with each table's rows permuted among its cells (seeded): the map ablation.

        Every view is still a real view of the city, at its level, but of another cell: a model that
        matches photos with the map loses its way; one that recognises cells by heart, through their
        views' fingerprints, loses them too; one that ignores the views loses nothing.
        """
        generator = torch.Generator().manual_seed(seed)

        def permute(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[torch.randperm(len(t), generator=generator).to(t.device)]

        return SatEmbeddings(self.grid, [permute(t) for t in self.levels], permute(self.terminal), self.build_s)

    def to(self, device: torch.device | str) -> SatEmbeddings:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return SatEmbeddings(self.grid, [move(t) for t in self.levels], move(self.terminal), self.build_s)


@torch.no_grad()
def compute_embeddings(
    encoders: ViewEncoders, pyramid: PyramidReader, *, lengths: Sequence[int] | None = None, progress: bool = True
) -> SatEmbeddings:
    """Encode the views of ``pyramid``: every table (levels 0..L-1 and the terminal context crops),
    or only those of paths of ``lengths`` (a training satellite encoder's, never cached)."""
    began = time.perf_counter()
    grid = pyramid.grid
    wanted = set(range(grid.levels + 1) if lengths is None else lengths)
    transforms = encoders.transforms()
    device = next(encoders.parameters()).device
    was_training = encoders.training
    encoders.eval()
    total = sum(grid.n_cells(length) for length in wanted)
    bar = tqdm(total=total, desc="embed views", unit="view", disable=not progress, leave=False)

    def encode(length: int) -> Tensor | None:
        if length not in wanted:
            return None
        read = pyramid.context if length == grid.levels else lambda cells: pyramid.views(length, cells)
        n, out = grid.n_cells(length), []
        for start in range(0, n, BATCH):
            views = torch.from_numpy(read(np.arange(start, min(start + BATCH, n)))).permute(0, 3, 1, 2)
            batch = torch.stack([transforms.sat(v) for v in views]).to(device)
            out.append(encoders.encode_sat(batch).float().cpu())
            bar.update(len(batch))
        return torch.cat(out)

    try:
        levels = [encode(level) for level in range(grid.levels)]
        terminal = encode(grid.levels)
    finally:
        bar.close()
        encoders.train(was_training)
    return SatEmbeddings(grid, levels, terminal, time.perf_counter() - began)


def pyramid_identity(path: str | os.PathLike) -> str:
    """Size and modification time of a pyramid file: a rebuilt pyramid invalidates its embeddings."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def save_embeddings(path: str | os.PathLike, emb: SatEmbeddings, fingerprint: str, pyramid: str) -> None:
    """Store every table of ``emb`` (all of them: the cache serves any model)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for level, table in enumerate(emb.levels):
            f.create_dataset(f"level_{level}", data=table.numpy())
        f.create_dataset("terminal", data=emb.terminal.numpy())
        f.attrs.update(emb.grid.to_attrs())
        f.attrs.update({"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "pyramid": pyramid, "build_s": emb.build_s})


def load_embeddings(path: str | os.PathLike, fingerprint: str, pyramid: str, lengths: Sequence[int] | None = None) -> SatEmbeddings | None:
    """The stored embeddings (only the tables of paths of ``lengths``, if given), or None when
    absent or made from other weights or another pyramid."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            if a.get("format_version") != FORMAT_VERSION or a.get("fingerprint") != fingerprint or a.get("pyramid") != pyramid:
                return None
            grid = ZoomGrid.from_attrs(a)
            wanted = set(range(grid.levels + 1) if lengths is None else lengths)

            def read(name: str, length: int) -> Tensor | None:
                return torch.from_numpy(f[name][()]) if length in wanted else None

            levels = [read(f"level_{level}", level) for level in range(grid.levels)]
            return SatEmbeddings(grid, levels, read("terminal", grid.levels), float(a["build_s"]))
    except (OSError, KeyError) as exc:
        raise PyramidError(f"unreadable embedding cache ({exc}); delete it to recompute", path) from None


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's tensors: names the cache of embeddings made with these weights."""
    h = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_embeddings(
    encoders: ViewEncoders,
    pyramid: PyramidReader,
    cache_dir: str | os.PathLike | None = None,
    *,
    lengths: Sequence[int] | None = None,
    progress: bool = True,
) -> SatEmbeddings:
    """The embeddings of ``pyramid``'s views under the satellite encoder's current weights.

    Read from ``cache_dir`` (default: ``embeddings/`` beside the pyramid) when computed before
    with the same weights and pyramid, else computed and stored there (every table). Only the
    tables of paths of ``lengths`` are returned, if given.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else pyramid.path.parent / "embeddings"
    fingerprint = weights_fingerprint(encoders.backbone("sat"))
    path = cache_dir / f"sat_{fingerprint}.h5"
    identity = pyramid_identity(pyramid.path)
    emb = load_embeddings(path, fingerprint, identity, lengths)
    if emb is None:
        emb = compute_embeddings(encoders, pyramid, progress=progress)
        save_embeddings(path, emb, fingerprint, identity)
        if lengths is not None:
            emb = emb.only(lengths)
    return emb
