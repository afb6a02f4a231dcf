"""Every tensor is built where the parameters live: the core paths run on another device without a mix.

A machine without a GPU cannot see a CPU tensor meeting CUDA noise, so these tests run the trainers on
``fake_device``'s stand-in: tensors that report the ``meta`` device, compute on the CPU, and raise
``DeviceMix`` when an op gets them together with CPU tensors (as CUDA does). The runs must also give the
plain CPU run's numbers bit for bit (the same kernels run underneath).
"""

import copy
import io

import pytest
import torch
from fake_device import OTHER, DeviceMix, OtherDevice
from torch import nn

from eggroll_trainer import EGGROLLTrainer, VanillaESTrainer, current_population
from eggroll_trainer.population import product_variants, products


@pytest.fixture(autouse=True)
def same_product_variants(monkeypatch):
    """The stand-in device holds CPU values, so both runs take the CPU's product variants: off the CPU the rule
    picks the reference product, which sums in another order (equal within rounding, not bit for bit), and
    these tests compare where tensors live, bit for bit."""
    choose = product_variants.choose_variant
    monkeypatch.setattr(products, "choose_variant", lambda noise, *, cpu, **kw: choose(noise, cpu=True, **kw))


class Tagger(nn.Module):
    """Embedding with a padding row (its full-rank noise zeroes a row), a Linear, a LayerNorm and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4, padding_idx=2)
        self.fc = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B,)
        return self.head(torch.tanh(self.norm(self.fc(self.embed(tokens))))).mean(dim=(1, 2))


def tokens() -> torch.Tensor:
    return torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(0))  # (b, T)


def sequential_fitness(data):
    return lambda m: float(m(data)[0] if data.shape[0] == 1 else m(data).mean())


def batched_fitness(data):
    def fitness(m):
        k = current_population().size
        return m(data.repeat(k, 1)).view(k, -1).mean(dim=1)  # (K,)

    return fitness


CASES = {
    "eggroll-sequential": (EGGROLLTrainer, dict(rank=2)),
    "eggroll-batched": (EGGROLLTrainer, dict(rank=2, batched=True)),
    "eggroll-batched-irregular": (EGGROLLTrainer, dict(rank=1, batched=True, antithetic=False, chunk_size=3)),
    "eggroll-batched-odd-chunks": (
        EGGROLLTrainer,
        dict(rank=1, batched=True, chunk_size=3, optimizer="adam"),
    ),
    "vanilla-sequential": (VanillaESTrainer, dict()),
    "vanilla-batched": (VanillaESTrainer, dict(batched=True)),
}


def run(cls, options, device, generations=2, dtype=torch.float32):
    torch.manual_seed(0)
    model = Tagger().to(device=device, dtype=dtype)
    data = tokens().to(device)
    fitness = batched_fitness(data) if options.get("batched") else sequential_fitness(data)
    trainer = cls(model.parameters(), model=model, fitness_fn=fitness, population_size=8, sigma=0.1,
                  learning_rate=0.05, seed=3, noise_reuse=2, **options)  # fmt: skip
    trainer.train(generations, verbose=False)
    return model, trainer


def cpu_values(model):
    return [p.detach().to("cpu", copy=True) for p in model.parameters()]


def test_the_stand_in_refuses_a_device_mix():
    with OtherDevice():
        on_device = torch.ones(3, device=OTHER)
        assert on_device.device == OTHER and float((on_device * 2).sum()) == 6.0
        with pytest.raises(DeviceMix):
            on_device * torch.ones(3)  # a CPU tensor built without device=
        with pytest.raises(DeviceMix):
            torch.ones(3) + torch.tensor([1.0, 2.0, 3.0], device=OTHER)
        assert float((on_device * torch.tensor(2.0)).sum()) == 6.0  # 0-dim CPU scalars mix, as on CUDA
        with pytest.raises(TypeError):
            on_device.numpy()  # as for a CUDA tensor: .cpu() first
        assert on_device.cpu().numpy().tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("case", list(CASES))
def test_trainers_run_on_another_device_and_match_the_cpu(case):
    cls, options = CASES[case]
    cpu_model, cpu_trainer = run(cls, options, "cpu")
    with OtherDevice():
        model, trainer = run(cls, options, OTHER)
        assert all(p.device == OTHER for p in model.parameters())
        best = cpu_values(trainer.get_best_model())
        values = cpu_values(model)
    assert all(torch.equal(a, b) for a, b in zip(values, cpu_values(cpu_model)))
    assert all(torch.equal(a, b) for a, b in zip(best, cpu_values(cpu_trainer.get_best_model())))
    assert trainer.fitness_history == cpu_trainer.fitness_history


def test_bf16_with_master_copies_on_another_device_matches_the_cpu():
    cls, options = CASES["eggroll-batched-odd-chunks"]
    cpu_model, cpu_trainer = run(cls, options, "cpu", dtype=torch.bfloat16)
    with OtherDevice():
        model, trainer = run(cls, options, OTHER, dtype=torch.bfloat16)
        masters = [m.cpu() for m in trainer.state_dict()["es"]["master_params"]]
        values = cpu_values(model)
    assert trainer.trainer_memory()["master_params"] > 0
    assert all(torch.equal(a, b) for a, b in zip(values, cpu_values(cpu_model)))
    assert all(torch.equal(a, b) for a, b in zip(masters, cpu_trainer.state_dict()["es"]["master_params"]))


def test_flat_hooks_run_on_another_device():
    class Flat(EGGROLLTrainer):  # the 0.1.0 protocol: dense (N, D) perturbations and a custom update
        def compute_update(self, perturbations, fitnesses):
            return super().compute_update(perturbations, fitnesses) * 0.5

    with OtherDevice():
        torch.manual_seed(0)
        model = Tagger().to(OTHER)
        model.norm.weight.requires_grad_(False)  # frozen: the keep-mask is built on the device too
        trainer = Flat(model.parameters(), model=model, fitness_fn=sequential_fitness(tokens().to(OTHER)),
                       population_size=6, seed=0, rank=1)  # fmt: skip
        dense = trainer.sample_perturbations(6)
        assert dense.device == OTHER and dense.shape == (6, sum(p.numel() for p in model.parameters()))
        assert torch.equal(dense[0], -dense[1])  # antithetic mirrors
        trainer.train(2, verbose=False)


def test_resume_on_another_device_continues_as_the_cpu_run():
    cls, options = CASES["eggroll-batched-odd-chunks"]
    straight, _ = run(cls, options, "cpu", generations=4)
    with OtherDevice():
        first_model, first = run(cls, options, OTHER)
        buffer = io.BytesIO()
        torch.save(
            {"model": cpu_state(first_model.state_dict()), "trainer": cpu_state(first.state_dict())}, buffer
        )
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=False)
        torch.manual_seed(1)
        model = Tagger()
        model.load_state_dict(checkpoint["model"])
        model.to(OTHER)
        data = tokens().to(OTHER)
        trainer = cls(model.parameters(), model=model, fitness_fn=batched_fitness(data), population_size=8,
                      sigma=0.1, learning_rate=0.05, seed=99, noise_reuse=2, **options)  # fmt: skip
        trainer.load_state_dict(checkpoint["trainer"])
        trainer.train(2, verbose=False)
        values = cpu_values(model)
    assert all(torch.equal(a, b) for a, b in zip(values, cpu_values(straight)))


def cpu_state(state):
    """A state dict with every tensor on the CPU (as ``torch.save`` of a CUDA run can be loaded anywhere)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return type(state)((k, cpu_state(v)) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_state(v) for v in state)
    return copy.copy(state)
