r"""Observation normalisation shared by a population, and a policy as plain torch layers.

The policy sees $\mathrm{clip}((o - \mu)/s, \pm c)$: $\mu$ and $s$ are the running mean and std of every
observation the members have seen ([`RunningMeanStd`][eggroll_trainer.rl.RunningMeanStd]), frozen during a
generation. [`deployable_policy`][eggroll_trainer.rl.normalisation.deployable_policy] writes the normaliser
as layers in front of the policy, so a saved policy loads without this library.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

__all__ = ["RunningMeanStd", "deployable_policy"]


class RunningMeanStd:
    """Mean and std of every observation seen so far, merged batch by batch (Chan et al.); the std is floored
    at ``std_floor`` (some entries are nearly constant, e.g. contact forces that never fire)."""

    def __init__(self, dim: int, std_floor: float = 1e-2) -> None:
        self.count, self.mean, self.m2, self.std_floor = 0, np.zeros(dim), np.zeros(dim), std_floor

    def update(self, count: int, total: np.ndarray, total_sq: np.ndarray) -> None:
        """Merge a batch of ``count`` observations given their sum and sum of squares, (dim,) each."""
        if count == 0:
            return
        batch_mean = total / count
        batch_m2 = np.maximum(total_sq - count * batch_mean**2, 0.0)
        delta, merged = batch_mean - self.mean, self.count + count
        self.mean = self.mean + delta * count / merged
        self.m2 = self.m2 + batch_m2 + delta**2 * self.count * count / merged
        self.count = merged

    @property
    def std(self) -> np.ndarray:
        var = self.m2 / self.count if self.count else np.ones_like(self.m2)
        return np.maximum(np.sqrt(var), self.std_floor)


def deployable_policy(
    policy: nn.Module,
    normaliser: tuple[np.ndarray, np.ndarray] | None,
    obs_clip: float,
    action_bounds: tuple[np.ndarray, np.ndarray] | None,
) -> nn.Sequential:
    """A copy of ``policy`` behind its normaliser ``(mean, std)`` (``None``: raw observations), as plain
    layers: ``Sequential(normalise, clip_obs, policy, clip_action)``. The normaliser is a diagonal float32
    ``nn.Linear`` (weight 1/std, bias −mean/std); ``clip_action`` is there when every action dimension has
    the same bounds (``action_bounds``: ``(low, high)``, or ``None`` for a ``Discrete`` space)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if normaliser is not None:
        mean, std = normaliser
        affine = nn.Linear(len(mean), len(mean)).requires_grad_(False)
        inv_std = torch.as_tensor(1.0 / std, dtype=torch.float32)
        with torch.no_grad():
            affine.weight.copy_(torch.diag(inv_std))
            affine.bias.copy_(-torch.as_tensor(mean, dtype=torch.float32) * inv_std)
        layers.update(normalise=affine, clip_obs=nn.Hardtanh(-obs_clip, obs_clip))
    layers["policy"] = copy.deepcopy(policy)
    if action_bounds is not None:
        low, high = action_bounds
        if len(set(low)) == 1 and len(set(high)) == 1:
            layers["clip_action"] = nn.Hardtanh(float(low[0]), float(high[0]))
    return nn.Sequential(layers)
