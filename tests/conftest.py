"""Shared helpers: tiny models, data and fitness functions that record what they saw; the test device.

The tests that take the ``device`` fixture (the batched ≡ sequential matrices, noise and its update, resume,
16-bit parameters) put their models and tensors there: ``pytest --device cuda`` or
``EGGROLL_TEST_DEVICE=cuda pytest``; ``other`` runs them on the CPU stand-in of ``fake_device`` (tensors that
report another device and fail on any device mix). The default is ``cpu``: the suite as it always was.
"""

import copy
import os

import pytest
import torch
from fake_device import OTHER, OtherDevice
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


def pytest_addoption(parser):
    parser.addoption(
        "--device", default=None,
        help="device of the device-aware tests: cpu (default), cuda, cuda:1, or other (a CPU stand-in that "
        "fails on device mixes); also EGGROLL_TEST_DEVICE",
    )  # fmt: skip


def test_device_name(config) -> str:
    return config.getoption("--device") or os.environ.get("EGGROLL_TEST_DEVICE") or "cpu"


test_device_name.__test__ = False  # a helper, not a test


def pytest_configure(config):
    config.addinivalue_line("markers", "device: takes the device fixture (select the CUDA subset: -m device)")
    name = test_device_name(config)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name}: CUDA is not available")
    if name != "other":
        torch.device(name)  # a clear error for a bad name, before any test runs


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


def pytest_report_header(config):
    return f"eggroll test device: {test_device_name(config)}"


@pytest.fixture
def device(request):
    """Where the test's models and tensors go (see the module docstring)."""
    name = test_device_name(request.config)
    if name == "other":
        with OtherDevice():
            yield OTHER
        return
    dev = torch.device(name)
    if dev.type == "cuda":  # TF32 convolutions would miss the suite's float32 tolerances
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield dev
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        return
    yield dev


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
            store.append(torch.as_tensor(value, dtype=torch.float64).reshape(-1).cpu())
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
