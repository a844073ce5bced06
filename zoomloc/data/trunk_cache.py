"""A file of a frozen trunk's outputs, one plain and V augmented inputs per item: built once,
resumably, then read row by row.

The street cache (:mod:`zoomloc.data.street_cache`, an item is a photo) and the satellite trunk
cache (:mod:`zoomloc.data.sat_cache`, an item is a pyramid view) are both this file; they differ
in what an item is, how it is augmented and what names the file (their specs).

HDF5 layout::

    plain      [N, ...] float16        the plain input's trunk output, item by item
    augmented  [N·V, ...] float16      V augmented inputs per item: row i·V + v
    attrs: format_version, spec (JSON: what made it), done (items written), items, build_s

A build writes ``.NAME.building`` chunk by chunk, recording how many items are done after each;
interrupted, the next build goes on from there (a file left unreadable by a hard kill is started
anew), and the finished file is renamed into place. Reads go through h5py batch by batch, so
memory stays bounded whatever the city's size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from zoomloc.core.errors import PyramidError
from zoomloc.core.hdf5 import take_rows
from zoomloc.data.photos import quiet_on_sigterm

FORMAT_VERSION = 2  # 2: the item count is attrs['items'] (1: 'photos'), so a street cache and a view cache share a builder
CHUNK = 64  # items encoded and written at a time: an interrupted build redoes at most these


def augment_key(seed: int, item: int, view: int) -> int:
    """The augmentation key of view ``view`` of item ``item`` (its row in the cache)."""
    return (seed * 1_000_003 + view) * 1_000_003 + item


def variant_of(keys: np.ndarray, views: int) -> np.ndarray:
    """Which stored view a training item draws: a hash (splitmix64) of its step-and-item key."""
    z = np.asarray(keys, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) % np.uint64(views)).astype(np.int64)


class CacheSpec:
    """What a kind of cache's spec (a frozen dataclass of everything its contents depend on) shares:
    its JSON, stored in the file, and the key hashed from it that names the file."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def key(self) -> str:
        return hashlib.blake2b(self.to_json().encode(), digest_size=10).hexdigest()


class TrunkCache:
    """A finished cache, read batch by batch; ``what`` names it in errors."""

    what = "trunk cache"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
            self.spec = json.loads(self._file.attrs["spec"])
            self.build_s = float(self._file.attrs["build_s"])
            self._plain, self._augmented = self._file["plain"], self._file["augmented"]
            self._open(self._file)
        except (OSError, KeyError, ValueError) as exc:
            raise PyramidError(f"unreadable {self.what} ({exc}); delete it to recompute", self.path) from None
        self.views = int(self.spec["views"])

    def _open(self, f: h5py.File) -> None:
        """Read what a kind of cache keeps besides the tables (nothing by default)."""

    def close(self) -> None:
        self._file.close()

    def plain(self, rows: np.ndarray) -> Tensor:
        """The plain inputs' trunk outputs ``[len(rows), ...]`` (float32)."""
        return torch.from_numpy(take_rows(self._plain, rows)).float()

    def augmented(self, rows: np.ndarray, variants: np.ndarray) -> Tensor:
        """View ``variants[j]`` of item ``rows[j]``: ``[len(rows), ...]`` (float32)."""
        return torch.from_numpy(take_rows(self._augmented, np.asarray(rows) * self.views + np.asarray(variants))).float()


@torch.no_grad()
def build_trunk_cache(
    path: Path,
    spec: str,
    items: int,
    views: int,
    inputs: Callable[[int], Dataset],
    encoders: nn.Module,
    encode: Callable[[Tensor], Tensor],
    *,
    prepare: Callable[[h5py.File], None] = lambda f: None,
    workers: int = 0,
    progress: bool = True,
    desc: str = "cache",
) -> None:
    """Encode ``items`` items into ``path``, resuming an interrupted build of the same ``spec``.

    ``inputs(start)`` is a dataset of items ``start…``, each ``[1 + views, ...]`` (the plain input,
    then the augmented ones); ``encode`` maps ``[M, ...]`` inputs to trunk outputs, with ``encoders``
    in eval mode. ``prepare`` writes what the kind keeps besides the tables (once per build file).
    """
    building = path.with_name(f".{path.name}.building")
    f, done = _open_building(building, spec, items)
    try:
        began = time.perf_counter() - (float(f.attrs["build_s"]) if "build_s" in f.attrs else 0.0)
        prepare(f)
        device = next(encoders.parameters()).device
        was_training = encoders.training
        encoders.eval()
        # Its own generator: building the cache leaves the global RNG (the training's dropout) untouched.
        loader = DataLoader(
            inputs(done), batch_size=CHUNK, num_workers=workers, worker_init_fn=quiet_on_sigterm, generator=torch.Generator()
        )
        bar = tqdm(total=items, initial=done, desc=desc, unit="item", disable=not progress, leave=False)
        try:
            for batch in loader:
                b, v = batch.shape[:2]
                out = encode(batch.flatten(0, 1).to(device)).to(torch.float16).cpu().numpy()
                _write_chunk(f, done, out.reshape(b, v, *out.shape[1:]), views)
                done += b
                f.attrs["done"] = done
                f.attrs["build_s"] = time.perf_counter() - began
                f.flush()
                bar.update(b)
        finally:
            bar.close()
            encoders.train(was_training)
    finally:
        f.close()
    os.replace(building, path)


def _open_building(building: Path, spec: str, items: int) -> tuple[h5py.File, int]:
    """The build file to go on with and how many items it holds; a new one if absent, unreadable or of another spec."""
    if building.is_file():
        try:
            f = h5py.File(building, "a")
        except OSError:
            building.unlink()
        else:
            if f.attrs.get("spec") == spec and f.attrs.get("format_version") == FORMAT_VERSION:
                return f, int(f.attrs.get("done", 0))
            f.close()
            building.unlink()
    building.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(building, "w")
    f.attrs.update({"format_version": FORMAT_VERSION, "spec": spec, "done": 0, "items": items})
    return f, 0


def _write_chunk(f: h5py.File, start: int, out: np.ndarray, views: int) -> None:
    """Store items ``start…`` (``out``: ``[b, 1 + views, ...]``), creating the tables on the first chunk."""
    n = int(f.attrs["items"])
    shape = out.shape[2:]
    if "plain" not in f:
        f.create_dataset("plain", shape=(n, *shape), dtype=np.float16, chunks=(1, *shape))
        f.create_dataset("augmented", shape=(n * views, *shape), dtype=np.float16, chunks=(1, *shape) if views else None)
    b = len(out)
    f["plain"][start : start + b] = out[:, 0]
    f["augmented"][start * views : (start + b) * views] = out[:, 1:].reshape(b * views, *shape)
