r"""Reinforcement learning with ES: a whole population plays its episodes in lockstep.

One generation: the N members and the unperturbed ("center") policy θ each play one episode of any
gymnasium environment, all at once. At every step the members' observations, shape (N, obs_dim), go through
the policy in population mode — one call, member i at row i — and the N actions come back; the center's
row goes through a plain copy of θ. A member whose episode has ended is masked (not stepped, earns nothing)
until the last one is done. What published ES needs on MuJoCo (OpenAI-ES, ARS, EvoTorch) is built in:

* observation normalisation shared by the population: the policy sees $\mathrm{clip}((o - \mu)/s, \pm c)$
  with the running mean $\mu$ and std $s$ of every observation the members have seen, frozen during a
  generation and updated from that generation's observations;
* a reward shift (ARS' *shift*, EvoTorch's ``decrease_rewards_by``): the training fitness is
  $R - \text{shift}\cdot T$ for an episode of return $R$ and length $T$, which removes the alive bonus of
  Hopper, Walker2d and Ant; the reported returns are always the environment's own;
* antithetic pairs (members 2k and 2k+1) start from the same state (same reset seed).

    rollout = PopulationRollout(make_env, policy, population_size=32, seed=0, reward_shift=1.0)
    trainer = EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=rollout.fitness,
                             population_size=32, batched=True, fitness_shaping="centered_rank")
    for _ in range(100):
        trainer.step()                     # plays the generation (rollout.fitness), then updates θ
        result = rollout.end_generation()  # normaliser update, returns of members and center θ
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..distributed import all_sum
from ..population import current_population
from .episodes import rollout
from .lockstep import LockstepEnvs, MakeEnv

__all__ = ["RunningMeanStd", "Generation", "PopulationRollout"]


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


@dataclass
class Generation:
    """What one generation played (the whole population's, on every process)."""

    returns: np.ndarray  # (N,) the members' true episode returns
    lengths: np.ndarray  # (N,) their episode lengths
    center_return: float  # the unperturbed policy θ, played in the same lockstep
    center_length: int
    env_steps: int  # every simulated step of the generation, the center's included


class PopulationRollout:
    """Plays a generation for [`ESTrainer`][eggroll_trainer.ESTrainer]: pass ``fitness`` as the trainer's
    ``fitness_fn`` (``batched=True``), call ``end_generation()`` after every ``trainer.step()``.

    The policy maps normalised observations (K, obs_dim) to actions (K, act_dim) — logits for a ``Discrete``
    space (the argmax is played); continuous actions are clipped to the action space's bounds. Under
    ``torchrun`` each process plays its shard of the population (and the center); ``end_generation`` sums
    the returns and observation statistics over processes, so every process keeps the same normaliser.

    Args:
        make_env: builds one environment (a gymnasium-style env with a flat ``Box`` observation).
        policy: the trainer's model; a plain copy of it plays the center.
        population_size: N, as given to the trainer.
        seed: seeds the episodes' start states: ``seeds`` (N+1,) holds this generation's reset seeds, one
            per antithetic pair (members 2k and 2k+1) and one for the center (last).
        reward_shift: subtracted from the training fitness per step taken (0: the plain return).
        normalize: normalise observations (else the policy sees them raw).
        obs_clip: normalised observations are clipped to ±obs_clip.
        num_workers: worker processes stepping environments beside this one
            ([`LockstepEnvs`][eggroll_trainer.rl.LockstepEnvs]).
        std_floor: floor of the normaliser's std.
    """

    def __init__(self, make_env: MakeEnv, policy: nn.Module, population_size: int, *, seed: int = 0,
                 reward_shift: float = 0.0, normalize: bool = True, obs_clip: float = 10.0, num_workers: int = 0,
                 std_floor: float = 1e-2) -> None:  # fmt: skip
        if population_size < 1 or obs_clip <= 0:
            raise ValueError(
                f"Invalid PopulationRollout: population_size={population_size}, obs_clip={obs_clip}"
            )
        self.n, self.policy, self.reward_shift = population_size, policy, float(reward_shift)
        self.normalize, self.obs_clip = normalize, float(obs_clip)
        self.envs = LockstepEnvs(make_env, population_size + 1, num_workers)  # row N: the center θ
        self.stats = RunningMeanStd(self.envs.obs_dim, std_floor)
        space = self.envs.action_space
        self._low, self._high = (
            (None, None) if self.envs.discrete else (space.low.reshape(-1), space.high.reshape(-1))
        )
        self._obs_buffer = np.zeros((population_size + 1, self.envs.obs_dim))  # normalised observations
        self._actions = np.zeros((population_size + 1, self.envs.act_dim))  # written by _write_actions
        self._center = copy.deepcopy(policy).requires_grad_(False)  # made here: never inside population mode
        self._rng = np.random.default_rng(seed)
        self._new_generation()

    def fitness(self, model: nn.Module) -> Tensor:
        """Play this call's members (all N, or this process's shard or chunk) and the center once; returns
        the members' training fitness ``return − reward_shift · length``, (K,)."""
        members = current_population()
        if members is None or members.total != self.n:
            raise ValueError(
                "PopulationRollout.fitness is a batched fitness: pass it to a trainer with batched=True and "
                f"population_size={self.n} (it plays every member at once)"
            )
        lo, hi = members.start, members.start + members.size
        if self._played[lo:hi].any():
            raise RuntimeError("PopulationRollout: call end_generation() after every trainer.step()")
        active = np.zeros(self.n + 1, dtype=bool)
        active[lo:hi] = True
        active[self.n] = self._center_return is None  # the center plays once per generation

        def act(obs: np.ndarray) -> np.ndarray:
            x = self._normalise(obs)  # (N+1, obs); rows outside lo..hi and the center when done are ignored
            with torch.no_grad():
                self._write_actions(model(x[lo:hi]), lo, hi)
                if active[self.n] and not self.envs.done[self.n]:
                    self._write_actions(self._center(x[self.n :]), self.n, self.n + 1)
            return self._actions  # (N+1, act_dim)

        episodes = rollout(self.envs, act, self.seeds, active, tracked=self.n)
        self._returns[lo:hi], self._lengths[lo:hi] = episodes.returns[lo:hi], episodes.lengths[lo:hi]
        self._obs += np.concatenate([[episodes.obs_count], episodes.obs_sum, episodes.obs_sq_sum])
        self._played[lo:hi] = True
        if active[self.n]:
            self._center_return, self._center_length = float(episodes.returns[-1]), int(episodes.lengths[-1])
        shaped = episodes.returns[lo:hi] - self.reward_shift * episodes.lengths[lo:hi]
        return torch.as_tensor(shaped, dtype=torch.float64)

    def end_generation(self) -> Generation:
        """Between generations: gather the generation (a sum over processes), update the normaliser from its
        observations, copy θ into the center; the next generation gets new start states."""
        d = self.envs.obs_dim
        total = all_sum(torch.from_numpy(np.concatenate([self._returns, self._lengths, self._obs]))).numpy()
        returns, lengths = total[: self.n], total[self.n : 2 * self.n].astype(np.int64)
        count, obs_sum, obs_sq_sum = int(total[2 * self.n]), total[2 * self.n + 1 : -d], total[-d:]
        if self.normalize:
            self.stats.update(count, obs_sum, obs_sq_sum)
        self._center.load_state_dict(self.policy.state_dict())
        center = (self._center_return, self._center_length)
        if center[0] is None:
            raise RuntimeError("PopulationRollout.end_generation(): no generation was played")
        self._new_generation()
        return Generation(returns, lengths, center[0], center[1], int(lengths.sum()) + center[1])

    def evaluate(self, episodes: int, seed: int) -> np.ndarray:
        """Returns of ``episodes`` (≤ N + 1) episodes of θ as it is now, played in lockstep (seeds seed, seed+1, …)."""
        k = min(episodes, self.n + 1)
        self._center.load_state_dict(self.policy.state_dict())

        def act(obs: np.ndarray) -> np.ndarray:
            self._write_actions(self._center(self._normalise(obs)), 0, self.n + 1)
            return self._actions

        with torch.no_grad():
            result = rollout(self.envs, act, seed + np.arange(self.n + 1), np.arange(self.n + 1) < k)
        return result.returns[:k]

    def deployable(self) -> nn.Sequential:
        """A copy of θ with the normaliser (and the action bounds) as plain torch layers: raw observation in,
        action out (logits for a ``Discrete`` space); it loads without this library."""
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if self.normalize:
            affine = nn.Linear(self.envs.obs_dim, self.envs.obs_dim).requires_grad_(False)
            inv_std = torch.as_tensor(1.0 / self.stats.std, dtype=torch.float32)
            with torch.no_grad():
                affine.weight.copy_(torch.diag(inv_std))
                affine.bias.copy_(-torch.as_tensor(self.stats.mean, dtype=torch.float32) * inv_std)
            layers.update(normalise=affine, clip_obs=nn.Hardtanh(-self.obs_clip, self.obs_clip))
        layers["policy"] = copy.deepcopy(self.policy)
        if self._low is not None and len(set(self._low)) == 1 and len(set(self._high)) == 1:
            layers["clip_action"] = nn.Hardtanh(float(self._low[0]), float(self._high[0]))
        return nn.Sequential(layers)

    def state_dict(self) -> dict[str, Any]:
        """The normaliser's statistics and the start-state generator: with the policy's and the trainer's
        ``state_dict``, a resumed run continues exactly. Save it between generations."""
        return {"stats": (self.stats.count, self.stats.mean.copy(), self.stats.m2.copy()),
                "rng": self._rng.bit_generator.state, "seeds": self.seeds.copy()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a [`state_dict`][eggroll_trainer.rl.PopulationRollout.state_dict] (before a generation),
        and copy θ into the center: load the policy's parameters first."""
        self.stats.count, self.stats.mean, self.stats.m2 = state["stats"]
        self._rng.bit_generator.state = state["rng"]
        self._new_generation()
        self.seeds = state["seeds"].copy()
        self._center.load_state_dict(self.policy.state_dict())

    def close(self) -> None:
        """Stop the worker processes and close the environments."""
        self.envs.close()

    # ------------------------------------------------------------------------------------ internals
    def _new_generation(self) -> None:
        pair_seeds = self._rng.integers(2**31, size=(self.n + 1) // 2)  # the same on every process
        self.seeds = np.append(np.repeat(pair_seeds, 2)[: self.n], self._rng.integers(2**31))  # (N+1,)
        self._returns, self._lengths = np.zeros(self.n), np.zeros(self.n)
        self._obs = np.zeros(1 + 2 * self.envs.obs_dim)  # count, sum, sum of squares
        self._played = np.zeros(self.n, dtype=bool)
        self._center_return: float | None = None
        self._center_length = 0
        if self.normalize:
            self._mean, self._inv_std = self.stats.mean, 1.0 / self.stats.std  # frozen for the generation

    def _normalise(self, obs: np.ndarray) -> Tensor:
        """clip((o − μ)/s, ±c) in float32, (N+1, obs): three in-place passes over a kept float64 buffer."""
        if not self.normalize:
            return torch.from_numpy(obs.astype(np.float32))
        x = self._obs_buffer
        np.subtract(obs, self._mean, out=x)
        np.multiply(x, self._inv_std, out=x)
        np.clip(x, -self.obs_clip, self.obs_clip, out=x)
        return torch.from_numpy(x.astype(np.float32))

    def _write_actions(self, out: Tensor, lo: int, hi: int) -> None:
        """The policy's output for envs lo..hi-1 as env actions, written into the kept (N+1, act_dim)
        buffer: the argmax of the logits (``Discrete``) or the output clipped to the action bounds."""
        out = out.reshape(hi - lo, -1)
        if self.envs.discrete:
            self._actions[lo:hi, 0] = out.argmax(dim=1).numpy()
        else:
            values = out.numpy() if out.dtype in (torch.float32, torch.float64) else out.double().numpy()
            np.clip(values, self._low, self._high, out=self._actions[lo:hi])
