"""zoomloc: cross-view geo-localization by autoregressive zooming into a satellite tile pyramid.

Data flows one way: GeoTIFF → :mod:`zoomloc.geo.pyramid` (views of every cell of the
:mod:`zoomloc.geo.grid`) → model → localization → map.
"""

__version__ = "0.1.0"
