"""Street-view samples of a city split, labelled on the zoom grid.

A sample is a photo plus its label on the grid: the action path of the terminal cell holding
the camera and the camera's offset inside that cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoomloc.core.errors import InputError
from zoomloc.core.times import capture_seconds
from zoomloc.geo.citydir import CityDir, capture_codes
from zoomloc.geo.grid import ZoomGrid


@dataclass(frozen=True)
class Samples:
    """Photos of one split with their grid labels (arrays aligned by row)."""

    image_ids: tuple[str, ...]
    image_paths: tuple[Path, ...]
    lon: np.ndarray
    lat: np.ndarray
    paths: np.ndarray  # [N, L] int64 action paths of the terminal cells
    offsets: np.ndarray  # [N, 2] float32 (dx east, dy south) in terminal-cell sides, in [-0.5, 0.5)
    outside: int  # photos of the split dropped because they lie outside the grid's region
    captures: np.ndarray  # [N] capture (sequence) codes: what an interval resamples (citydir.capture_codes)
    times_s: np.ndarray  # [N] float seconds since the epoch of ``captured_at``, NaN where metadata.csv has none
    heading_deg: np.ndarray  # [N] the camera's heading (degrees clockwise from north), NaN where metadata.csv has none

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_city(cls, city: CityDir, split: str, grid: ZoomGrid) -> Samples:
        """The photos of ``split`` (per split.csv) inside the grid's region."""
        meta = city.read_metadata()
        ids = city.read_split()
        ids = ids.loc[ids["split"] == split, "image_id"]
        meta = meta.assign(capture=capture_codes(meta)).set_index("image_id").loc[lambda m: m.index.isin(set(ids))]
        if meta.empty:
            raise InputError(f"no photo of the {split!r} split", city.split_csv)
        x, y = grid.to_xy(meta["lon"].to_numpy(), meta["lat"].to_numpy())
        inside = grid.contains_xy(x, y)
        x, y, meta = x[inside], y[inside], meta[inside]
        if meta.empty:
            raise InputError(f"every photo of the {split!r} split lies outside the pyramid's region", city.split_csv)
        rows, cols = grid.rowcol_of_xy(x, y)
        bounds = grid.bounds_of_rowcol(rows, cols, grid.levels)
        size = grid.terminal_m
        offsets = np.stack([(x - bounds[:, 0]) / size - 0.5, (bounds[:, 3] - y) / size - 0.5], axis=1)
        return cls(
            image_ids=tuple(meta.index),
            image_paths=tuple(city.image_path(i) for i in meta.index),
            lon=meta["lon"].to_numpy(),
            lat=meta["lat"].to_numpy(),
            paths=grid.path_of_rowcol(rows, cols, grid.levels),
            offsets=offsets.astype(np.float32),
            outside=int((~inside).sum()),
            captures=meta["capture"].to_numpy(),
            times_s=_times(meta, city.metadata_csv),
            heading_deg=meta["heading_deg"].to_numpy(dtype=float) if "heading_deg" in meta.columns else np.full(len(meta), np.nan),
        )

    def xy(self, grid: ZoomGrid) -> np.ndarray:
        """``[N, 2]`` float64 positions in ``grid``'s projected metres: what distances between photos are taken on."""
        return np.column_stack(grid.to_xy(self.lon, self.lat))

    def longest_capture(self) -> np.ndarray:
        """The rows of the capture with the most photos (the first such), in the order of their times:
        the capture a demo localizes as one track."""
        codes, first, counts = np.unique(self.captures, return_index=True, return_counts=True)
        rows = np.flatnonzero(self.captures == codes[np.lexsort((first, -counts))[0]])
        return rows[np.argsort(self.times_s[rows], kind="stable")]

    def subset(self, n: int, seed: int = 0) -> Samples:
        """At most ``n`` samples drawn without replacement (a fixed validation subset)."""
        if n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Samples(
            tuple(self.image_ids[i] for i in idx),
            tuple(self.image_paths[i] for i in idx),
            self.lon[idx],
            self.lat[idx],
            self.paths[idx],
            self.offsets[idx],
            self.outside,
            self.captures[idx],
            self.times_s[idx],
            self.heading_deg[idx],
        )


def _times(meta, where: Path) -> np.ndarray:
    """Each photo's ``captured_at`` in seconds (what orders a capture's frames), NaN where absent."""
    if "captured_at" not in meta.columns:
        return np.full(len(meta), np.nan)
    seconds = [capture_seconds(v, str(where)) for v in meta["captured_at"]]
    return np.array([np.nan if v is None else v for v in seconds], dtype=float)
