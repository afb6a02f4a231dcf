"""Shared helpers: tiny models, data and fitness functions that record what they saw."""

import copy

import pytest
import torch
from torch import nn

from eggroll_trainer import current_population
from eggroll_trainer.noise import NoiseSpec, ParamNoise

# The suite's models are tiny: one thread avoids OpenMP spin-waits on a shared 2-core machine.
torch.set_num_threads(1)


class TwoLayer(nn.Module):
    """Two same-shaped hidden layers, so noise sharing between equal shapes would show."""

    def __init__(self, width: int = 6, norm: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        h = torch.tanh(self.norm(self.fc2(h)))
        h = torch.tanh(self.fc3(h))
        return self.head(h)


def make_data(seed: int = 0, rows: int = 32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=g)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    return x, y


def make_model(seed: int = 0, **kwargs) -> nn.Module:
    g_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = TwoLayer(**kwargs)
    torch.random.set_rng_state(g_state)
    return model


def neg_mse(x, y):
    def fitness(model):
        return -((model(x) - y) ** 2).mean().item()

    return fitness


def neg_mse_batched(x, y):
    def fitness(model):
        k = current_population().size
        pred = model(x.expand(k, *x.shape))
        return -((pred - y) ** 2).mean(dim=(1, 2))

    return fitness


class Recorder:
    """A fitness function that snapshots the model's parameters at every call."""

    def __init__(self, score=lambda model: 0.0):
        self.snapshots = []
        self.score = score

    def __call__(self, model):
        self.snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return self.score(model)


@pytest.fixture
def data():
    return make_data()


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def clone(model):
    return copy.deepcopy(model)


def linear_member_noise(model, rank=None, pairs=3):
    """Noise of every parameter of ``model`` from one small table: rank-``rank`` for matrices (full rank for
    ``rank=None``), full rank for vectors; ``pairs`` antithetic pairs."""
    table = torch.randn(1 << 12, generator=torch.Generator().manual_seed(0))
    return [ParamNoise(table, NoiseSpec(p.shape, rank=rank if p.dim() == 2 else None), 7 + j, pairs)
            for j, p in enumerate(model.parameters())]  # fmt: skip


def twin_runs(cls, model, seq_fitness, bat_fitness, generations=3, **options):
    """A sequential and a batched trainer side by side on copies of ``model``: both runs' scores (float64)
    and final parameters."""
    seq_model, bat_model = copy.deepcopy(model), copy.deepcopy(model)
    seq_scores, bat_scores = [], []

    def record(store, fn):
        def wrapped(m):
            value = fn(m)
            store.append(torch.as_tensor(value, dtype=torch.float64).reshape(-1))
            return value

        return wrapped

    base = dict(population_size=12, learning_rate=0.01, sigma=0.05, seed=7)
    base.update(options)
    seq = cls(seq_model.parameters(), model=seq_model, fitness_fn=record(seq_scores, seq_fitness), **base)
    bat = cls(bat_model.parameters(), model=bat_model, fitness_fn=record(bat_scores, bat_fitness), batched=True,
              **base)  # fmt: skip
    for _ in range(generations):
        seq.step()
        bat.step()
    return torch.cat(seq_scores), torch.cat(bat_scores), params_of(seq_model), params_of(bat_model)
