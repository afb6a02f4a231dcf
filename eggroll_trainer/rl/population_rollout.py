r"""Reinforcement learning with ES: a whole population plays its episodes in lockstep.

One generation: the N members each play one episode of any gymnasium environment and the unperturbed
("center") policy θ plays ``center_episodes`` (E) episodes, all at once. At every step the members'
observations, shape (N, obs_dim), go through the policy in population mode — one call, member i at row i —
and the N actions come back; the center's E rows go through a plain copy of θ. A finished episode is masked
(not stepped, earns nothing) until the last one is done. What published ES needs on MuJoCo (OpenAI-ES, ARS,
EvoTorch) is built in:

* observation normalisation shared by the population (``normalisation``), frozen during a generation and
  updated from that generation's observations;
* a reward shift (ARS' *shift*, EvoTorch's ``decrease_rewards_by``): the training fitness is
  $R - \text{shift}\cdot T$ for an episode of return $R$ and length $T$, which removes the alive bonus of
  Hopper, Walker2d and Ant; the reported returns are always the environment's own;
* antithetic pairs (members 2k and 2k+1) start from the same state (same reset seed);
* the reported return of θ is the median of its E episodes from fresh start states, played in the same
  lockstep (E extra environments); ``played_center()`` is that policy as plain layers, to keep the best.

    rollout = PopulationRollout(make_env, policy, population_size=32, seed=0, reward_shift=1.0,
                                center_episodes=5)
    trainer = EGGROLLTrainer(policy.parameters(), model=policy, fitness_fn=rollout.fitness,
                             population_size=32, batched=True, fitness_shaping="centered_rank")
    for _ in range(100):
        trainer.step()                     # plays the generation (rollout.fitness), then updates θ
        result = rollout.end_generation()  # normaliser update; the members' returns, θ's E returns
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..distributed import all_sum
from ..population import current_population
from .episodes import rollout
from .lockstep import LockstepEnvs, MakeEnv
from .normalisation import RunningMeanStd, deployable_policy

__all__ = ["Generation", "PopulationRollout"]


@dataclass
class Generation:
    """What one generation played (the whole population's, on every process)."""

    returns: np.ndarray  # (N,) the members' true episode returns
    lengths: np.ndarray  # (N,) their episode lengths
    center_returns: np.ndarray  # (E,) the unperturbed policy θ's episodes, played in the same lockstep
    center_lengths: np.ndarray  # (E,)
    env_steps: int  # every simulated step of the generation, the center's included

    @property
    def center_return(self) -> float:
        """The median of θ's E episode returns: the generation's evaluation of the unperturbed policy."""
        return float(np.median(self.center_returns))

    @property
    def center_length(self) -> int:
        """The median length of θ's E episodes (rounded down)."""
        return int(np.median(self.center_lengths))


class PopulationRollout:
    """Plays a generation for [`ESTrainer`][eggroll_trainer.ESTrainer]: pass ``fitness`` as the trainer's
    ``fitness_fn`` (``batched=True``), call ``end_generation()`` after every ``trainer.step()``.

    The policy maps normalised observations (K, obs_dim) to actions (K, act_dim) — logits for a ``Discrete``
    space (the argmax is played); continuous actions are clipped to the action space's bounds. Under
    ``torchrun`` each process plays its shard of the population (and all of the center's episodes);
    ``end_generation`` sums the returns and observation statistics over processes, so every process keeps
    the same normaliser.

    Args:
        make_env: builds one environment (a gymnasium-style env with a flat ``Box`` observation).
        policy: the trainer's model; a plain copy of it plays the center.
        population_size: N, as given to the trainer.
        seed: seeds the episodes' start states: ``seeds`` (N+E,) holds this generation's reset seeds, one
            per antithetic pair (members 2k and 2k+1), then one per center episode (the last E).
        reward_shift: subtracted from the training fitness per step taken (0: the plain return).
        normalize: normalise observations (else the policy sees them raw).
        obs_clip: normalised observations are clipped to ±obs_clip.
        num_workers: worker processes stepping environments beside this one
            ([`LockstepEnvs`][eggroll_trainer.rl.LockstepEnvs]; 2 on a 2-core machine: one per core).
        std_floor: floor of the normaliser's std.
        center_episodes: E, episodes of θ per generation (its reported return is their median).
    """

    def __init__(self, make_env: MakeEnv, policy: nn.Module, population_size: int, *, seed: int = 0,
                 reward_shift: float = 0.0, normalize: bool = True, obs_clip: float = 10.0, num_workers: int = 0,
                 std_floor: float = 1e-2, center_episodes: int = 1) -> None:  # fmt: skip
        if population_size < 1 or obs_clip <= 0 or center_episodes < 1:
            raise ValueError(
                f"Invalid PopulationRollout: population_size={population_size}, obs_clip={obs_clip}, "
                f"center_episodes={center_episodes}"
            )
        self.n, self.e, self.policy, self.reward_shift = (
            population_size,
            center_episodes,
            policy,
            float(reward_shift),
        )
        self.normalize, self.obs_clip = normalize, float(obs_clip)
        self.envs = LockstepEnvs(make_env, population_size + center_episodes, num_workers)  # rows N..: θ
        self.stats = RunningMeanStd(self.envs.obs_dim, std_floor)
        space = self.envs.action_space
        self._bounds = None if self.envs.discrete else (space.low.reshape(-1), space.high.reshape(-1))
        self._obs_buffer = np.zeros((self.envs.n, self.envs.obs_dim))  # normalised observations
        self._actions = np.zeros((self.envs.n, self.envs.act_dim))  # written by _write_actions
        # Two copies of θ, made here (never inside population mode): the one the next generation's center
        # plays, and the one the last generation's center played (played_center).
        self._center = copy.deepcopy(policy).requires_grad_(False)
        self._played = copy.deepcopy(self._center)
        self._played_normaliser: tuple[np.ndarray, np.ndarray] | None = None
        self._played_any = False
        self._rng = np.random.default_rng(seed)
        self._new_generation()

    def fitness(self, model: nn.Module) -> Tensor:
        """Play this call's members (all N, or this process's shard or chunk) and, once per generation, the
        center's E episodes; returns the members' training fitness ``return − reward_shift · length``, (K,)."""
        members = current_population()
        if members is None or members.total != self.n:
            raise ValueError(
                "PopulationRollout.fitness is a batched fitness: pass it to a trainer with batched=True and "
                f"population_size={self.n} (it plays every member at once)"
            )
        lo, hi, n = members.start, members.start + members.size, self.n
        if self._played_members[lo:hi].any():
            raise RuntimeError("PopulationRollout: call end_generation() after every trainer.step()")
        active = np.zeros(self.envs.n, dtype=bool)
        active[lo:hi] = True
        center = self._center_returns is None  # the center plays once per generation
        active[n:] = center

        def act(obs: np.ndarray) -> np.ndarray:
            x = self._normalise(obs)  # (N+E, obs); rows outside lo..hi and a finished center are ignored
            with torch.no_grad():
                self._write_actions(model(torch.from_numpy(x[lo:hi])), lo, hi)
                if center and not self.envs.done[n:].all():
                    self._write_actions(self._center(torch.from_numpy(x[n:])), n, self.envs.n)
            return self._actions  # (N+E, act_dim)

        episodes = rollout(self.envs, act, self.seeds, active, tracked=n)
        self._returns[lo:hi], self._lengths[lo:hi] = episodes.returns[lo:hi], episodes.lengths[lo:hi]
        self._obs += np.concatenate([[episodes.obs_count], episodes.obs_sum, episodes.obs_sq_sum])
        self._played_members[lo:hi] = True
        if center:
            self._center_returns, self._center_lengths = (
                episodes.returns[n:].copy(),
                episodes.lengths[n:].copy(),
            )
        shaped = episodes.returns[lo:hi] - self.reward_shift * episodes.lengths[lo:hi]
        return torch.as_tensor(shaped, dtype=torch.float64)

    def end_generation(self) -> Generation:
        """Between generations: gather the generation (a sum over processes), update the normaliser from its
        observations, copy θ into the center; the next generation gets new start states."""
        if self._center_returns is None:
            raise RuntimeError("PopulationRollout.end_generation(): no generation was played")
        d = self.envs.obs_dim
        total = all_sum(torch.from_numpy(np.concatenate([self._returns, self._lengths, self._obs]))).numpy()
        returns, lengths = total[: self.n], total[self.n : 2 * self.n].astype(np.int64)
        count, obs_sum, obs_sq_sum = int(total[2 * self.n]), total[2 * self.n + 1 : -d], total[-d:]
        if self.normalize:
            self.stats.update(count, obs_sum, obs_sq_sum)
        # the copy the center just played is kept (played_center); θ after the update goes into the other
        self._center, self._played = self._played, self._center
        self._played_normaliser, self._played_any = self._normaliser, True
        self._center.load_state_dict(self.policy.state_dict())
        center_returns, center_lengths = self._center_returns, self._center_lengths
        self._new_generation()
        steps = int(lengths.sum() + center_lengths.sum())
        return Generation(returns, lengths, center_returns, center_lengths, steps)

    def played_center(self) -> nn.Sequential:
        """The policy the center played in the last generation — θ before that generation's update, behind
        the normaliser as it was frozen then — as plain layers (see ``deployable``): the policy that the
        generation's ``center_returns`` measured. Call it before the next ``trainer.step()``."""
        if not self._played_any:
            raise RuntimeError("PopulationRollout.played_center(): no generation has ended yet")
        return deployable_policy(self._played, self._played_normaliser, self.obs_clip, self._bounds)

    def deployable(self) -> nn.Sequential:
        """A copy of θ with the normaliser (and the action bounds) as plain torch layers: raw observation in,
        action out (logits for a ``Discrete`` space); it loads without this library."""
        normaliser = (self.stats.mean, self.stats.std) if self.normalize else None
        return deployable_policy(self.policy, normaliser, self.obs_clip, self._bounds)

    def evaluate(self, episodes: int, seed: int, policy: nn.Module | None = None) -> np.ndarray:
        """Returns of ``episodes`` fresh episodes (reset seeds seed, seed+1, …), played in lockstep (N+E at a
        time): of ``policy``, a plain module from raw observations to actions (a ``deployable()`` or
        ``played_center()``), or, without it, of θ as it is now behind the current normaliser."""
        if episodes < 1:
            raise ValueError(f"Invalid episodes: {episodes} (at least 1)")
        total = self.envs.n
        if policy is None:
            self._center.load_state_dict(self.policy.state_dict())

        def act(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                if policy is None:
                    out = self._center(torch.from_numpy(self._normalise(obs)))
                else:
                    out = policy(torch.from_numpy(obs.astype(np.float32)))
            self._write_actions(out, 0, total)
            return self._actions

        played = []
        for first in range(0, episodes, total):
            k = min(total, episodes - first)
            result = rollout(self.envs, act, seed + first + np.arange(total), np.arange(total) < k)
            played.append(result.returns[:k])
        return np.concatenate(played)

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
        center_seeds = self._rng.integers(2**31, size=self.e)
        self.seeds = np.concatenate([np.repeat(pair_seeds, 2)[: self.n], center_seeds])  # (N+E,)
        self._returns, self._lengths = np.zeros(self.n), np.zeros(self.n)
        self._obs = np.zeros(1 + 2 * self.envs.obs_dim)  # count, sum, sum of squares
        self._played_members = np.zeros(self.n, dtype=bool)
        self._center_returns: np.ndarray | None = None
        self._center_lengths = np.zeros(self.e, dtype=np.int64)
        # the normaliser, frozen for the generation: (mean, std), or None without normalisation
        self._normaliser = (self.stats.mean, self.stats.std) if self.normalize else None
        if self._normaliser is not None:
            self._mean, self._inv_std = self._normaliser[0], 1.0 / self._normaliser[1]

    def _normalise(self, obs: np.ndarray) -> np.ndarray:
        """clip((o − μ)/s, ±c) in float32, (N+E, obs): three in-place passes over a kept float64 buffer."""
        if not self.normalize:
            return obs.astype(np.float32)
        x = self._obs_buffer
        np.subtract(obs, self._mean, out=x)
        np.multiply(x, self._inv_std, out=x)
        np.clip(x, -self.obs_clip, self.obs_clip, out=x)
        return x.astype(np.float32)

    def _write_actions(self, out: Tensor, lo: int, hi: int) -> None:
        """The policy's output for envs lo..hi-1 as env actions, written into the kept (N+E, act_dim)
        buffer: the argmax of the logits (``Discrete``) or the output clipped to the action bounds."""
        values = (out if out.dtype in (torch.float32, torch.float64) else out.double()).numpy()
        values = values.reshape(hi - lo, -1)
        if self._bounds is None:
            self._actions[lo:hi, 0] = values.argmax(axis=1)
        else:
            np.clip(values, *self._bounds, out=self._actions[lo:hi])
