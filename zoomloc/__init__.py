"""zoomloc: cross-view geo-localization by autoregressive zooming into a satellite tile pyramid.

Data flows one way, through the layers of the package: GeoTIFF → :mod:`zoomloc.geo` (the grid,
the pyramid of every cell's view) → :mod:`zoomloc.models` → :mod:`zoomloc.inference` (the
localization, the map). ``from zoomloc import Localizer`` is the Python API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoomloc.inference.localize import Localizer

__version__ = "0.1.0"
__all__ = ["Localizer"]


def __getattr__(name: str) -> Any:
    """``zoomloc.Localizer``, imported on first use: ``import zoomloc`` alone loads no torch."""
    if name == "Localizer":
        from zoomloc.inference.localize import Localizer

        return Localizer
    raise AttributeError(f"module 'zoomloc' has no attribute {name!r}")
