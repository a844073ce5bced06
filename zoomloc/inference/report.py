"""Localizations as text for a person at a terminal (``zoomloc localize`` without ``--json``).

One block per photo: the answer first (lat, lon in the order people paste into a map search),
how coarse and how sure it is, the distance to the photo's own GPS when it has one, the warnings
(a photo taken off the map, an answer no surer than a guess), then the alternatives the beam
kept, so that a doubtful answer shows where else the photo may be::

    photos/dom.jpg
      lat 52.518917  lon 13.400294  (25 m cell, probability 0.42)
      distance to EXIF GPS: 37 m
      alternatives:
        2. lat 52.519100  lon 13.401000  probability 0.21

A capture localized as one track (``--track``) gets a block of its own: a line pair per photo
in capture order, the fused answer above the photo's own (:func:`describe_track`).
"""

from __future__ import annotations

from zoomloc.inference.localization import Localization, Track


def describe(loc: Localization, truth: str = "EXIF GPS") -> str:
    """The multi-line text block of one localization; ``truth`` names where its known position came from."""
    lines = [loc.image, f"  {_position(loc.lat, loc.lon)}  ({loc.cell_size_m:.0f} m cell, probability {_p(loc.probability)})"]
    if loc.error_m is not None:
        lines.append(f"  distance to {truth}: {loc.error_m:,.0f} m")
    lines += [f"  warning: {w}" for w in loc.warnings]
    alternatives = loc.candidates[1:]
    if alternatives:
        lines.append("  alternatives:")
        for rank, c in enumerate(alternatives, start=2):
            lines.append(f"    {rank}. {_position(c.lat, c.lon)}  probability {_p(c.probability)}")
    return "\n".join(lines)


def _position(lat: float, lon: float) -> str:
    """Six decimals: about 0.1 m, finer than any cell, so rounding never moves an answer."""
    return f"lat {lat:.6f}  lon {lon:.6f}"


def _p(probability: float) -> str:
    """Three significant digits: an unlikely alternative reads 2.1e-05, not a misleading 0.000."""
    return f"{probability:.3g}"


def describe_track(track: Track, truth: str = "EXIF GPS") -> str:
    """The text block of a capture localized as one track: a line per photo, in capture order, with the
    fused answer, how sure the capture makes it, the photo's own answer beside it and its warnings."""
    errors = track.errors_m()
    span = track.points[-1].time_s if track.points else 0.0
    outliers = sum(p.candidate is None for p in track.points)
    lines = [
        f"capture {track.capture}: {len(track.points)} photos over {span:,.1f} s, fused as one track"
        + (f" ({outliers} judged outliers, placed between their neighbours)" if outliers else "")
    ]
    for i, (point, photo) in enumerate(zip(track.points, track.photos)):
        line = (
            f"  {point.time_s:8.1f} s  {photo.image}\n"
            f"      fused  {_position(point.lat, point.lon)}  probability {_p(point.probability)}"
            + (" (outlier)" if point.candidate is None else "")
            + f"\n      photo  {_position(photo.lat, photo.lon)}  probability {_p(photo.probability)}"
        )
        if errors is not None:
            line += f"\n      distance to {truth}: fused {errors[i]:,.0f} m, photo {photo.error_m:,.0f} m"
        line += "".join(f"\n      warning: {w}" for w in photo.warnings)
        lines.append(line)
    return "\n".join(lines)
