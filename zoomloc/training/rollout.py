"""Training the zoom policy from its own decisions, so that one wrong step does not lose the rest.

Teacher forcing feeds the true path, so the policy never sees a wrong parent in training, and at
inference its first mistake leaves it in cells it has no habit of: free-running accuracy falls
far below the per-step accuracy from the true parent (exposure bias). Scheduled sampling
(Bengio et al., 2015), in the form coarse-to-fine generators use it: a no-grad rollout decides,
step by step, whether to feed the policy's own greedy choice (with probability ``share``) or the
expert's, and the teacher-forced pass then trains on that path. The expert's action from any
parent — and so the target at every step — is the child nearest the true position
(:meth:`~zoomloc.geo.grid.ZoomGrid.nearest_child`): the true child where the parent holds the camera,
the closest child on its edge where it does not. A policy that took a wrong turn so learns to
land as near as it still can.

The share grows linearly from 0 to its final value over the first ``ramp`` of training
(:func:`rollout_share`): the policy first learns from the true paths, then from its own.

What a step from a wrong parent should learn is a choice (``TrainConfig.rollout_target``):
``nearest``, the expert's child above, or ``uniform``, that no child holds the camera. The second
is for beam search: a policy trained on true parents alone is as confident in a wrong parent as
in the right one, so a path through a wrong first cell can outscore the true one; taught to be
unsure there, it lets the product of step probabilities rank whole paths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from zoomloc.geo.grid import ZoomGrid
from zoomloc.models.policy import ZoomPolicy


def rollout_share(step: int, steps: int, final: float, ramp: float) -> float:
    """The share of steps fed the policy's own choice at training step ``step`` of ``steps``."""
    if final <= 0:
        return 0.0
    if ramp <= 0:
        return final
    return final * min(1.0, step / (ramp * steps))


@torch.no_grad()
def rollout(
    policy: ZoomPolicy,
    street: Tensor,
    sat_of_paths: Callable[[Tensor], Tensor],
    grid: ZoomGrid,
    true_paths: Tensor,
    share: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """The paths to feed ``[B, L]``, the target of each step ``[B, L]`` and which steps start from a wrong parent ``[B, L]``.

    At each level the policy, given the path fed so far, picks its greedy child; with probability
    ``share`` (drawn from ``generator``) that choice is fed, else the expert's. The last action of
    a fed path is never fed (it is only a target) and equals the last target. Put the policy in
    eval mode first, as at inference.
    """
    b, levels = true_paths.shape
    rows, cols, _ = grid.rowcol_of_path(true_paths.cpu().numpy())
    device = street.device
    fed = torch.zeros(b, 0, dtype=torch.long, device=device)
    hidden, cache = policy.start(street, sat_of_paths(fed))
    targets = []
    for level in range(levels):
        target = torch.from_numpy(grid.nearest_child(fed.cpu().numpy(), rows, cols)).to(device)
        targets.append(target)
        if level == levels - 1:
            break
        own = policy.logits(hidden).argmax(-1)
        take_own = (torch.rand(b, generator=generator) < share).to(device)
        action = torch.where(take_own, own, target)
        fed = torch.cat([fed, action[:, None]], dim=1)
        hidden, cache = policy.step(action, sat_of_paths(fed), cache)
    target_paths = torch.stack(targets, dim=1)
    true_paths = true_paths.to(device)
    lost = torch.stack([(fed[:, :level] != true_paths[:, :level]).any(dim=1) for level in range(levels)], dim=1)
    return torch.cat([fed, target_paths[:, -1:]], dim=1), target_paths, lost
