"""How far a model's probabilities can be trusted: its temperature, and when an answer is no surer than a guess.

**Temperature.** A model's softmax says how sure it is, but training (label smoothing, a
contrastive temperature tuned on in-batch negatives, memorised training photos) leaves it over-
or under-confident on new photos. One scalar T dividing its logits, fitted on the validation
photos by the likelihood of their true cells (temperature scaling, Guo et al. 2017), fixes that
without changing any greedy answer; a capture's fusion (:mod:`zoomloc.inference.fusion`) weighs
the candidates of each photo by these probabilities, so zoom and retrieval are fitted alike
(:func:`fit_temperature`, stored as ``info["val"]["temperature"]``).

A zoom model that recognises nothing in a photo spreads its first step over the k² children of
the region: its top first-step probability stays near the uniform 1/k². Below some factor of
uniform, the first step is right about as rarely as a guess, and so is everything after it. The
factor is calibrated on the validation photos when a checkpoint is selected (stored in its
``info["val"]["guess_factor"]``): the largest factor f for which the validation photos whose top
first-step probability lies below f/k² choose their first cell right at most
:data:`GUESS_ACCURACY` times as often as a guess. ``zoomloc localize`` then warns about an answer
below it.
"""

from __future__ import annotations

import numpy as np
import torch

GUESS_ACCURACY = 2.0  # × a guess's 1/k²: right this rarely is no better than guessing, within noise
FACTORS = np.round(np.arange(1.0, 8.01, 0.1), 1)  # candidate factors of uniform, from uniform itself up
MIN_PHOTOS = 20  # validation photos below a factor needed to judge it
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))  # the candidates fitted among, 5 % apart


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature of :data:`TEMPERATURES` under which ``logits`` ``[Q, S, C]`` give their ``targets``
    ``[Q, S]`` the highest likelihood (summed over the S decisions of each query, as a path's probability is)."""
    logits, targets = logits.float(), targets.long()[..., None]
    nll = [-(logits / t).log_softmax(-1).gather(-1, targets).sum().item() for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nll))])


def calibrate_guess_factor(top_probability: np.ndarray, right: np.ndarray, k2: int) -> float:
    """The largest factor of uniform below which the first step is right at most ``GUESS_ACCURACY`` × 1/k².

    ``top_probability`` ``[N]``: each validation photo's largest first-step probability; ``right``
    ``[N]``: whether that child holds the photo. Factors are tried from 1 up; the search stops at
    the first one whose photos below it do better than a guess (1 where even those few do).
    """
    top_probability, right = np.asarray(top_probability, dtype=float), np.asarray(right, dtype=bool)
    factor = 1.0
    for f in FACTORS:
        below = top_probability < f / k2
        if below.sum() < MIN_PHOTOS:
            continue
        if right[below].mean() > GUESS_ACCURACY / k2:
            break
        factor = float(f)
    return factor


def guess_warning(top_probability: float, factor: float, k2: int) -> str | None:
    """The warning for an answer whose first step is no surer than a guess, or None."""
    if top_probability >= factor / k2:
        return None
    return (
        f"no surer than a guess: the first zoom step's best cell has probability {top_probability:.2g}, "
        f"a guess among {k2} gives {1 / k2:.2g} (this model's validation photos below {factor:g} × that "
        "were placed no better than by guessing)"
    )
