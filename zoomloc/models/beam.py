"""Beam search over zoom paths, batched over queries and beams.

Each level expands every live path of every query by its k² children, scores them by total
log-probability and keeps the best ``beam`` per query; all queries move together, so one
:meth:`ZoomPolicy.step` and one satellite lookup serve the whole batch per level. Beam width 1
is exactly greedy decoding.

Satellite views are asked for through ``sat_embed_fn(paths)``, paths ``[N, l]`` → embeddings
``[N, D]``, so the caller decides whether they come from a cache of precomputed view
embeddings (the normal case: a pyramid's views embedded once) or are encoded live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from zoomloc.core.errors import InputError
from zoomloc.models.policy import ZoomPolicy

SatEmbedFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class BeamResult:
    """The best terminal paths of one query, best first.

    ``step_probs[i, l]`` is the policy's probability of action ``paths[i, l]`` given the path
    before it, so ``log_probs[i] == step_probs[i].log().sum()``. ``offsets`` (``[n, 2]``, cell
    sides, see :meth:`ZoomPolicy.offset`) only when the policy has a refinement head.
    """

    paths: Tensor  # [n, levels] long
    log_probs: Tensor  # [n]
    step_probs: Tensor  # [n, levels]
    offsets: Tensor | None = None


@torch.no_grad()
def beam_search(
    policy: ZoomPolicy, street_emb: Tensor, sat_embed_fn: SatEmbedFn, beam: int, topk: int = 1, temperature: float = 1.0
) -> list[BeamResult]:
    """The ``topk`` best of ``beam`` paths through all levels for each street embedding ``[Q, D]``, each
    step's logits divided by ``temperature`` (greedy decoding is the same at any).

    Put the policy in eval mode first: dropout would make the scores random.
    """
    if not 1 <= topk <= beam:
        raise InputError(f"need 1 <= topk <= beam, got topk={topk}, beam={beam}")
    q, device = street_emb.shape[0], street_emb.device
    levels, n_actions = policy.cfg.levels, policy.cfg.actions
    paths = torch.zeros(q, 0, dtype=torch.long, device=device)  # [Q*b, l], query-major
    hidden, cache = policy.start(street_emb, sat_embed_fn(paths))
    scores = torch.zeros(q, 1, device=device)  # [Q, b] total log-prob of live paths
    step_logp = torch.zeros(q, 1, 0, device=device)  # [Q, b, l]
    for level in range(levels):
        logp = (policy.logits(hidden) / temperature).log_softmax(-1).view(q, -1, n_actions)  # [Q, b, k²]
        candidates = (scores[:, :, None] + logp).flatten(1)  # [Q, b*k²]
        scores, flat = candidates.topk(min(beam, candidates.shape[1]), dim=1)  # sorted, best first
        parent, action = flat // n_actions, flat % n_actions  # [Q, b'] each
        rows = (parent + logp.shape[1] * torch.arange(q, device=device)[:, None]).flatten()
        chosen = logp.flatten(1).gather(1, flat)  # the new step's log-prob of each kept path
        step_logp = torch.cat([step_logp.flatten(0, 1)[rows].view(*scores.shape, level), chosen[:, :, None]], dim=2)
        paths = torch.cat([paths[rows], action.flatten()[:, None]], dim=1)
        cache = cache.select(rows)
        if level + 1 < levels or policy.offset_head is not None:
            hidden, cache = policy.step(action.flatten(), sat_embed_fn(paths), cache)
    offsets = policy.offset(hidden).view(q, -1, 2)[:, :topk] if policy.offset_head is not None else None
    paths = paths.view(q, -1, levels)
    return [
        BeamResult(paths[i, :topk], scores[i, :topk], step_logp[i, :topk].exp(), None if offsets is None else offsets[i]) for i in range(q)
    ]
