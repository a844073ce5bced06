"""The witness's matcher fitted across captures (zoomloc.inference.local_head)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from zoomloc.inference.local_head import LocalHeadConfig, cross_capture_positives, fit_local_head
from zoomloc.inference.local_match import LocalHead, LocalMaps, match_scores, unit_locations


def test_a_photos_positives_are_other_captures_close_by_facing_its_way():
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [0.0, 3.0], [100.0, 0.0], [2.0, 0.0]])
    heading = np.array([10.0, 350.0, 190.0, 20.0, 10.0, np.nan])
    captures = np.array([0, 1, 1, 0, 1, 2])
    positives = cross_capture_positives(xy, heading, captures, LocalHeadConfig(positive_m=15.0, positive_deg=30.0))
    # 1: another capture, 10 m, 20° apart; 2 faces the other way; 3 is its own capture; 4 lies 100 m off;
    # 5's heading is unknown
    assert [sorted(p.tolist()) for p in positives] == [[1], [0, 3], [], [1], [], []]


@dataclass(frozen=True)
class _Maps:
    """A local cache's reads (what the fit reads), of maps made in memory."""

    maps: torch.Tensor  # [M, 1, C, h, w]

    def plain(self, rows: np.ndarray) -> torch.Tensor:
        return self.maps[torch.as_tensor(np.asarray(rows))]


def _captured_places(places: int, captures: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Maps ``[places · captures, 1, C, h, w]`` of places seen by each capture: a place's content (12 channels),
    plus, everywhere in a photo, its capture's light (4 channels, three times as strong); positions (a place every
    100 m, a capture within 2 m of it) and capture codes."""
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(places, 1, 12, 2, 4, generator=g)
    light = 3 * torch.randn(captures, 1, 4, 1, 1, generator=g).expand(-1, -1, -1, 2, 4)
    maps = torch.cat([torch.cat([content, light[c : c + 1].expand(places, -1, -1, -1, -1)], dim=2) for c in range(captures)])
    xy = np.concatenate([np.column_stack([100.0 * np.arange(places) + 2 * c, np.zeros(places)]) for c in range(captures)])
    return maps, xy, np.repeat(np.arange(captures), places)


def _twin_wins(head: LocalHead | None, maps: torch.Tensor, places: int) -> float:
    """How often a capture-0 photo's match with its place's capture-1 photo outscores all its own capture's other places."""
    units = unit_locations(maps)
    if head is not None:
        units = head(units).detach()
    query, twins, others = units[:places], units[places : 2 * places], units[:places]
    wins = []
    for p in range(places):
        candidates = torch.cat([twins[p : p + 1], others[torch.arange(places) != p]])
        wins.append(match_scores(query[p : p + 1], candidates[None])[0].argmax().item() == 0)
    return float(np.mean(wins))


def test_the_head_learns_to_see_places_through_the_light_of_a_capture():
    """The frozen descriptors match a photo with its own capture's photos of other places (their light is alike);
    fitted on some places, the head finds a place's other capture first, at places it never saw."""
    maps, xy, captures = _captured_places(places=60, captures=3)
    seen = np.flatnonzero(xy[:, 0] < 100.0 * 40)  # places 0–39, every capture
    local = LocalMaps(_Maps(maps), encoders=None)  # type: ignore[arg-type]
    cfg = LocalHeadConfig(steps=60, passes=8.0, batch=16, lr=1e-2, negatives=8)
    head = fit_local_head(local, seen, xy[seen], np.zeros(len(seen)), captures[seen], cfg)
    unseen = torch.cat([maps[40:60], maps[100:120]])  # places 40–59, captures 0 and 1
    assert _twin_wins(None, unseen, 20) < 0.2
    assert _twin_wins(head, unseen, 20) > 0.8
    again = fit_local_head(local, seen, xy[seen], np.zeros(len(seen)), captures[seen], cfg)
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values()))  # deterministic
    one_pass = fit_local_head(local, seen, xy[seen], np.zeros(len(seen)), captures[seen], replace(cfg, steps=1000, passes=1.0))
    eight_steps = fit_local_head(local, seen, xy[seen], np.zeros(len(seen)), captures[seen], replace(cfg, steps=8, passes=1000.0))
    assert torch.equal(one_pass.map.weight, eight_steps.map.weight)  # one pass over its 120 photos with a positive: 8 batches of 16


def test_no_place_seen_by_two_captures_fits_no_head():
    maps, xy, captures = _captured_places(places=10, captures=1)
    local = LocalMaps(_Maps(maps), encoders=None)  # type: ignore[arg-type]
    assert fit_local_head(local, np.arange(10), xy, np.zeros(10), captures) is None


def test_an_unfitted_head_changes_no_descriptor():
    units = unit_locations(torch.randn(3, 1, 16, 2, 4))
    assert torch.allclose(LocalHead(16)(units), units.float(), atol=1e-3)
    with pytest.raises(RuntimeError):
        LocalHead(8)(units)
