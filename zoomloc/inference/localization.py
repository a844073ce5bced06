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


@dataclass(frozen=True)
class TrackPoint:
    """Where one photo of a capture was taken, according to the capture as a whole.

    ``candidate`` is the index, among the photo's own ``candidates``, of the cell the fused track
    passes through; None where the track judged every candidate of the photo wrong (an outlier
    frame): the point is then interpolated in time between its neighbours on the track.
    ``probability`` is the posterior of the fused answer given every photo of the capture
    (forward-backward): of that candidate, or of the outlier state.
    """

    image: str
    lon: float
    lat: float
    probability: float
    candidate: int | None
    time_s: float  # seconds since the capture's first photo (by its times, or its order × --interval)


@dataclass(frozen=True)
class Track:
    """One capture localized as a whole: each photo's own answer and the fused track, in capture order.

    ``photos[i]`` and ``points[i]`` are the same photo; the fusion used only the photos' candidates
    and times, never a photo's GPS (``photos[i].true_lon/true_lat`` are for the errors only).
    """

    capture: str  # the sequence_id, or a name for a capture without one
    photos: tuple[Localization, ...]
    points: tuple[TrackPoint, ...]
    fusion_s: float  # wall time of the fusion alone

    def errors_m(self) -> np.ndarray | None:
        """Geodesic error of each fused point ``[T]``, when every photo's true position is known."""
        if any(p.true_lon is None or p.true_lat is None for p in self.photos):
            return None
        return geodesic_m(
            np.array([q.lon for q in self.points]),
            np.array([q.lat for q in self.points]),
            np.array([p.true_lon for p in self.photos]),
            np.array([p.true_lat for p in self.photos]),
        )

    def to_json(self) -> dict[str, Any]:
        """The ``zoomloc localize --track --json`` record of the capture."""
        errors = self.errors_m()
        return {
            "capture": self.capture,
            "photos": [
                {
                    **photo.to_json(),
                    "time_s": point.time_s,
                    "fused": {
                        "lat": point.lat,
                        "lon": point.lon,
                        "probability": point.probability,
                        "candidate": point.candidate,
                        "error_m": None if errors is None else float(errors[i]),
                    },
                }
                for i, (photo, point) in enumerate(zip(self.photos, self.points))
            ],
            "fusion_s": self.fusion_s,
        }
