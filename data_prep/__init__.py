"""Turning raw inputs into city directories (see :mod:`zoomloc.geo.citydir`).

Real photo sets are imported (:mod:`data_prep.photos`) and split by area
(:mod:`data_prep.split`); synthetic cities are generated for demos, tests and benchmarks
(:mod:`data_prep.synth`).
"""
