"""HDF5 row reads in any order: h5py's fancy indexing wants increasing, unique indexes."""

from __future__ import annotations

import h5py
import numpy as np


def take_rows(dataset: h5py.Dataset, rows) -> np.ndarray:
    """``dataset[rows]`` for any order and repeats of ``rows``."""
    rows = np.asarray(rows, dtype=np.int64).ravel()
    if rows.size == 0:
        return np.empty((0, *dataset.shape[1:]), dataset.dtype)
    if rows.min() < 0 or rows.max() >= len(dataset):
        raise IndexError(f"row indexes must lie in 0..{len(dataset) - 1} for {dataset.name}")
    unique, inverse = np.unique(rows, return_inverse=True)
    return dataset[unique][inverse]
