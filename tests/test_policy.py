"""Zoom policy: cached decoding equals teacher forcing, beam search is right, the model learns."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from zoomloc.core.errors import InputError
from zoomloc.models.beam import beam_search
from zoomloc.models.policy import PolicyConfig, ZoomPolicy, offset_loss, zoom_loss

CFG = PolicyConfig(embed_dim=16, width=32, layers=2, heads=4, dropout=0.1, k=3, levels=3)


class CellTable:
    """A fixed random embedding per cell of every level: the stand-in for cached satellite views."""

    def __init__(self, cfg: PolicyConfig, seed: int = 0):
        self.k2, self.levels = cfg.actions, cfg.levels
        sizes = [self.k2**level for level in range(cfg.levels + 1)]
        self.first = torch.tensor([0] + sizes).cumsum(0)  # first row of each level
        self.table = torch.randn(sum(sizes), cfg.embed_dim, generator=torch.Generator().manual_seed(seed))
        self.calls = 0

    def __call__(self, paths: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        level = paths.shape[1]
        weights = self.k2 ** torch.arange(level - 1, -1, -1)
        return self.table[self.first[level] + (paths * weights).sum(1)]

    def along(self, paths: torch.Tensor, terminal: bool = False) -> torch.Tensor:
        """Views ``[B, l(+1), D]`` of the cells visited by ``paths`` (with the terminal one)."""
        ends = paths.shape[1] + 1 if terminal else paths.shape[1]
        return torch.stack([self(paths[:, :i]) for i in range(ends)], dim=1)


def _policy(cfg: PolicyConfig = CFG, seed: int = 0) -> ZoomPolicy:
    torch.manual_seed(seed)
    return ZoomPolicy(cfg).eval()


def _queries(n: int, cfg: PolicyConfig = CFG, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cfg.embed_dim, generator=g), torch.randint(0, cfg.actions, (n, cfg.levels), generator=g)


@pytest.mark.parametrize("refine", [False, True])
def test_cached_decoding_equals_teacher_forcing(refine):
    cfg = PolicyConfig(**{**CFG.__dict__, "refine": refine})
    policy, cells = _policy(cfg), CellTable(cfg)
    street, actions = _queries(5, cfg)
    sats = cells.along(actions, terminal=True)
    with torch.no_grad():
        if refine:
            teacher, teacher_offset = policy.forward_with_offset(street, sats, actions)
        else:
            teacher = policy.forward_teacher(street, sats[:, :-1], actions)
        hidden, cache = policy.start(street, sats[:, 0])
        steps = [policy.logits(hidden)]
        for i in range(cfg.levels if refine else cfg.levels - 1):
            hidden, cache = policy.step(actions[:, i], sats[:, i + 1], cache)
            steps.append(policy.logits(hidden))
    assert torch.allclose(torch.stack(steps[: cfg.levels], 1), teacher, atol=1e-5)
    if refine:
        offset = policy.offset(hidden)
        assert torch.allclose(offset, teacher_offset, atol=1e-5) and offset.abs().max() <= 0.5


def _greedy(policy: ZoomPolicy, street: torch.Tensor, cells: CellTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy paths and log-probs by re-running teacher forcing on the growing prefix (no cache)."""
    paths = torch.zeros(len(street), 0, dtype=torch.long)
    total = torch.zeros(len(street))
    for _ in range(policy.cfg.levels):
        fed = torch.cat([paths, paths.new_zeros(len(street), 1)], dim=1)  # the last action is not fed
        logp = policy.forward_teacher(street, cells.along(fed), fed)[:, -1].log_softmax(-1)
        best = logp.argmax(-1)
        total += logp.gather(1, best[:, None])[:, 0]
        paths = torch.cat([paths, best[:, None]], dim=1)
    return paths, total


def _all_path_log_probs(policy: ZoomPolicy, street: torch.Tensor, cells: CellTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Every terminal path ``[P, L]`` and its log-prob for each query ``[Q, P]``, by brute force."""
    cfg = policy.cfg
    paths = torch.tensor(list(itertools.product(range(cfg.actions), repeat=cfg.levels)))
    q, p = len(street), len(paths)
    every = paths.repeat(q, 1)
    logits = policy.forward_teacher(street.repeat_interleave(p, 0), cells.along(every), every)
    logp = logits.log_softmax(-1).gather(2, every[:, :, None])[..., 0].sum(1)
    return paths, logp.view(q, p)


def test_beam_width_one_is_greedy_exactly():
    policy, cells = _policy(), CellTable(CFG)
    street, _ = _queries(32)
    with torch.no_grad():
        results = beam_search(policy, street, cells, beam=1, topk=1)
        paths, total = _greedy(policy, street, cells)
    assert torch.equal(torch.cat([r.paths for r in results]), paths)
    assert torch.allclose(torch.cat([r.log_probs for r in results]), total, atol=1e-5)


def test_wider_beams_score_at_least_greedy_and_full_width_is_exact():
    policy, cells = _policy(seed=3), CellTable(CFG, seed=3)
    street, _ = _queries(64, seed=4)
    with torch.no_grad():
        greedy = torch.stack([r.log_probs[0] for r in beam_search(policy, street, cells, beam=1)])
        beam4 = torch.stack([r.log_probs[0] for r in beam_search(policy, street, cells, beam=4)])
        full = beam_search(policy, street, cells, beam=CFG.actions ** (CFG.levels - 1))  # keeps every prefix
        paths, logp = _all_path_log_probs(policy, street, cells)
    assert (beam4 >= greedy - 1e-6).all() and (beam4 > greedy + 1e-6).any()
    assert torch.allclose(torch.stack([r.log_probs[0] for r in full]), logp.max(1).values, atol=1e-5)
    assert torch.equal(torch.stack([r.paths[0] for r in full]), paths[logp.argmax(1)])


def test_topk_sorted_consistent_and_batched():
    policy, cells = _policy(), CellTable(CFG)
    street, _ = _queries(6)
    with torch.no_grad():
        results = beam_search(policy, street, cells, beam=5, topk=3)
    assert cells.calls == CFG.levels  # one lookup per level for all queries and beams
    for r in results:
        assert r.paths.shape == (3, CFG.levels) and r.offsets is None
        assert (r.log_probs[:-1] >= r.log_probs[1:]).all()
        assert torch.allclose(r.step_probs.log().sum(1), r.log_probs, atol=1e-5)
        assert len({tuple(p.tolist()) for p in r.paths}) == 3
    with pytest.raises(InputError, match="topk <= beam"):
        beam_search(policy, street, cells, beam=2, topk=3)


def test_beam_search_offsets_match_teacher_forcing():
    cfg = PolicyConfig(**{**CFG.__dict__, "refine": True})
    policy, cells = _policy(cfg), CellTable(cfg)
    street, _ = _queries(4, cfg)
    with torch.no_grad():
        results = beam_search(policy, street, cells, beam=3, topk=2)
        paths = torch.cat([r.paths for r in results])
        _, offsets = policy.forward_with_offset(street.repeat_interleave(2, 0), cells.along(paths, terminal=True), paths)
    assert torch.allclose(torch.cat([r.offsets for r in results]), offsets, atol=1e-5)


def test_losses():
    logits, actions = torch.randn(4, 3, 9), torch.randint(0, 9, (4, 3))
    assert torch.allclose(zoom_loss(logits, actions, 0.0), F.cross_entropy(logits.transpose(1, 2), actions))
    assert offset_loss(torch.zeros(2, 2), torch.full((2, 2), 0.25)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="has no refinement head"):
        _policy().offset(torch.zeros(1, CFG.width))
    with pytest.raises(ValueError, match="multiple of heads"):
        PolicyConfig(width=30, heads=4)


def test_policy_learns_a_toy_zoom_task():
    """Street embedding = noisy sum of one code per (level, action): decodable only level by level."""
    cfg = PolicyConfig(embed_dim=32, width=64, layers=2, heads=4, dropout=0.0, k=2, levels=3)
    torch.manual_seed(0)
    policy, cells = ZoomPolicy(cfg), CellTable(cfg)
    codes = torch.randn(cfg.levels, cfg.actions, cfg.embed_dim)

    def batch(n):
        actions = torch.randint(0, cfg.actions, (n, cfg.levels))
        street = codes[torch.arange(cfg.levels), actions].sum(1) + 0.3 * torch.randn(n, cfg.embed_dim)
        return street, cells.along(actions), actions

    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        street, sats, actions = batch(64)
        loss = zoom_loss(policy(street, sats, actions), actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    policy.eval()
    street, sats, actions = batch(512)
    with torch.no_grad():
        accuracy = (policy(street, sats, actions).argmax(-1) == actions).float().mean()
        found = torch.stack([r.paths[0] for r in beam_search(policy, street, cells, beam=2)])
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    assert accuracy > 0.95, accuracy
    assert (found == actions).all(1).float().mean() > 0.9
