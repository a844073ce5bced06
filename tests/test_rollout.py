"""Exposure bias: the expert's step from any parent, and rollouts that mix the policy's own choices in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomloc.geo.grid import ZoomGrid
from zoomloc.models.policy import PolicyConfig, ZoomPolicy, zoom_loss
from zoomloc.training.rollout import rollout, rollout_share


@pytest.fixture(scope="module")
def grid() -> ZoomGrid:
    return ZoomGrid.covering((8.53, 47.37, 8.55, 47.38), terminal_m=1000 / 4**3, k=4, levels=3)


def _centre_distance(grid: ZoomGrid, parents: np.ndarray, action: int, x: float, y: float) -> float:
    cx, cy = grid.centre_xy_of_path(np.concatenate([parents, [action]]))
    return float(np.hypot(cx - x, cy - y))


def test_the_expert_steps_into_the_child_nearest_the_truth(grid):
    rng = np.random.default_rng(0)
    minx, miny, maxx, maxy = grid.bounds
    for _ in range(300):
        x, y = rng.uniform(minx, maxx - 1e-6), rng.uniform(miny + 1e-6, maxy)
        true = grid.path_of_xy(x, y)
        rows, cols = grid.rowcol_of_xy(x, y)
        level = int(rng.integers(0, grid.levels))
        parent = rng.integers(0, 16, size=level)  # any parent, right or wrong
        action = int(grid.nearest_child(parent, rows, cols))
        distances = [_centre_distance(grid, parent, a, *grid.centre_xy_of_path(true)) for a in range(16)]
        assert distances[action] == pytest.approx(min(distances))
        if np.array_equal(parent, true[:level]):
            assert action == true[level]  # a right parent: the true child
    with pytest.raises(Exception, match="no children"):
        grid.nearest_child(np.zeros(3, dtype=int), 0, 0)


def test_rollout_mixes_own_choices_and_targets_the_nearest_child(grid):
    torch.manual_seed(0)
    policy = ZoomPolicy(PolicyConfig(embed_dim=8, width=16, layers=1, heads=2, k=4, levels=3)).eval()
    table = torch.randn(grid.n_cells(2) + grid.n_cells(1) + 1, 8)

    def sat(paths: torch.Tensor) -> torch.Tensor:  # a distinct embedding per cell of any level
        level = paths.shape[1]
        offset = sum(grid.n_cells(lv) for lv in range(level))
        return table[offset + torch.from_numpy(grid.cell_of_path(paths.numpy()))]

    b = 400
    true = torch.randint(0, 16, (b, 3))
    street = torch.randn(b, 8)
    g = torch.Generator()
    fed, targets, lost = rollout(policy, street, sat, grid, true, 0.0, g.manual_seed(1))
    assert torch.equal(fed, true) and torch.equal(targets, true) and not lost.any()  # share 0: teacher forcing

    fed, targets, lost = rollout(policy, street, sat, grid, true, 1.0, g.manual_seed(1))
    hidden, _ = policy.start(street, sat(true[:, :0]))
    assert torch.equal(fed[:, 0], policy.logits(hidden).argmax(-1))  # share 1: its own greedy first step
    assert torch.equal(targets[:, 0], true[:, 0])  # the first target is always the truth
    rows, cols, _ = grid.rowcol_of_path(true.numpy())
    for level in range(3):
        expected = grid.nearest_child(fed[:, :level].numpy(), rows, cols)
        np.testing.assert_array_equal(targets[:, level].numpy(), expected)
    assert torch.equal(fed[:, -1], targets[:, -1])
    wrong = fed[:, 0] != true[:, 0]
    assert wrong.any() and (targets[wrong, 1:] != true[wrong, 1:]).any()
    expected_lost = torch.stack([(fed[:, :level] != true[:, :level]).any(1) for level in range(3)], 1)
    assert torch.equal(lost, expected_lost) and not lost[:, 0].any() and torch.equal(lost[:, 1], wrong)

    fed, _, _ = rollout(policy, street, sat, grid, true, 0.5, g.manual_seed(1))
    own_share = (fed[:, 0] != true[:, 0]).float().mean()
    assert 0.1 < own_share < 0.6  # about half fed its own choice (some of which are right)


def test_rollout_share_ramps_up_then_stays():
    assert rollout_share(0, 100, 0.5, 0.5) == 0
    assert rollout_share(25, 100, 0.5, 0.5) == pytest.approx(0.25)
    assert rollout_share(50, 100, 0.5, 0.5) == rollout_share(99, 100, 0.5, 0.5) == pytest.approx(0.5)
    assert rollout_share(10, 100, 0.0, 0.5) == 0 and rollout_share(0, 100, 0.3, 0.0) == pytest.approx(0.3)


def test_a_lost_step_is_taught_that_no_child_holds_the_camera():
    actions = torch.tensor([[3, 5]])
    confident = torch.full((1, 2, 16), -5.0).scatter(2, actions[..., None], 5.0)
    unsure = torch.zeros(1, 2, 16)
    lost = torch.tensor([[False, True]])
    # On the wrong parent's step, the uniform answer costs less than the confident one…
    assert zoom_loss(unsure[:, 1:], actions[:, 1:], 0.1, lost[:, 1:]) < zoom_loss(confident[:, 1:], actions[:, 1:], 0.1, lost[:, 1:])
    # …and with nothing lost the loss is the usual smoothed cross-entropy.
    torch.testing.assert_close(zoom_loss(confident, actions, 0.1, torch.zeros(1, 2, dtype=torch.bool)), zoom_loss(confident, actions, 0.1))
