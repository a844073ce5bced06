"""What a localization is: the answer, how the model got there, and its alternatives.

A :class:`Localization` carries data *and* georeferencing (lon/lat, the cells of the zoom path
as grid paths) so that printing, JSON output and maps need nothing else but the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zoomloc.geo.grid import ZoomGrid, geodesic_m


@dataclass(frozen=True)
class Step:
    """One zoom decision: the cell chosen at ``level`` (1..L) and its probability given the path so far."""

    level: int
    cell: int  # row-major index among the level's k**level × k**level cells
    probability: float


@dataclass(frozen=True)
class Candidate:
    """A terminal cell the model considered, with the probability of its whole path."""

    lon: float
    lat: float
    probability: float
    path: tuple[int, ...]


@dataclass(frozen=True)
class Localization:
    """Where one photo was taken, according to the model.

    ``lon``/``lat`` is the best candidate's position (the terminal cell's centre, refined inside
    the cell when the model has a refinement head); ``path`` the decisions that led there;
    ``candidates`` the top-k terminal cells, best first (``candidates[0]`` is the answer).
    ``true_lon``/``true_lat`` are set when the photo's position is known (EXIF GPS or metadata);
    ``inside_map`` then says whether it lies on the map at all (a model can only answer with a
    place on its map). ``warnings`` are the reasons to doubt the answer, one sentence each.
    """

    image: str
    lon: float
    lat: float
    cell_size_m: float
    probability: float
    path: tuple[Step, ...]
    candidates: tuple[Candidate, ...]
    true_lon: float | None = None
    true_lat: float | None = None
    inside_map: bool | None = None
    warnings: tuple[str, ...] = ()

    @property
    def actions(self) -> tuple[int, ...]:
        """The chosen path as grid actions (one per level)."""
        return self.candidates[0].path

    @property
    def error_m(self) -> float | None:
        """Geodesic distance to the true position, when known."""
        if self.true_lon is None or self.true_lat is None:
            return None
        return float(geodesic_m(self.lon, self.lat, self.true_lon, self.true_lat))

    def cell_polygons(self, grid: ZoomGrid):
        """WGS84 polygons of the cells visited at levels 1..L (the zoom path), as a shapely array."""
        actions = np.asarray(self.actions)
        return np.array([grid.polygons_lonlat(actions[None, : i + 1])[0] for i in range(len(actions))])

    def to_json(self) -> dict[str, Any]:
        """The ``zoomloc localize --json`` record."""
        return {
            "image": self.image,
            "lat": self.lat,
            "lon": self.lon,
            "cell_size_m": self.cell_size_m,
            "probability": self.probability,
            "path": [{"level": s.level, "cell": s.cell, "probability": s.probability} for s in self.path],
            "candidates": [{"lat": c.lat, "lon": c.lon, "probability": c.probability} for c in self.candidates],
            "error_m": self.error_m,
            "inside_map": self.inside_map,
            "warnings": list(self.warnings),
        }
