"""Population mode: one forward for all members gives what member-by-member evaluation gives."""

import pytest
import torch
from conftest import make_data, make_model, neg_mse, neg_mse_batched, twin_runs
from torch import nn

from eggroll_trainer import EGGROLLTrainer, VanillaESTrainer, current_population

CASES = [
    (EGGROLLTrainer, dict(rank=1)),
    (EGGROLLTrainer, dict(rank=3, antithetic=False)),
    (EGGROLLTrainer, dict(rank=2, population_size=11)),  # odd: last member unpaired
    (EGGROLLTrainer, dict(rank=2, chunk_size=4)),
    (EGGROLLTrainer, dict(rank=2, chunk_size=5)),  # chunks that split antithetic pairs
    (EGGROLLTrainer, dict(rank=2, freeze_nonlora=True, optimizer="adam")),
    (VanillaESTrainer, dict()),
    (VanillaESTrainer, dict(antithetic=False, chunk_size=3)),
]


@pytest.mark.parametrize("norm", [False, True], ids=["mlp", "layernorm"])
@pytest.mark.parametrize("cls, options", CASES)
def test_batched_equals_sequential(cls, options, norm, device):
    x, y = (t.to(device) for t in make_data())
    model = make_model(norm=norm).to(device)
    seq_scores, bat_scores, seq_params, bat_params = twin_runs(
        cls, model, neg_mse(x, y), neg_mse_batched(x, y), **options
    )
    torch.testing.assert_close(bat_scores, seq_scores, rtol=1e-4, atol=1e-5)
    for a, b in zip(seq_params, bat_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class WithEmbeddingAndConv(nn.Module):
    """Generic (vmap) path: Embedding, Conv1d and a raw Parameter next to Linear layers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 8, kernel_size=3, padding=1)
        self.scale = nn.Parameter(torch.ones(8))
        self.head = nn.Linear(8, 1)

    def forward(self, tokens):  # (B, T) -> (B, 1)
        h = self.embed(tokens).transpose(-1, -2)  # (B, 8, T)
        h = torch.relu(self.conv(h)).mean(-1) * self.scale  # (B, 8)
        return self.head(h)


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = WithEmbeddingAndConv()

    def forward(self, tokens):
        return self.body(tokens)


def test_generic_modules_match_sequential():
    torch.manual_seed(0)
    model = Wrapper()
    tokens = torch.randint(0, 10, (6, 5))
    target = torch.randn(6, 1)

    def seq(m):
        return -((m(tokens) - target) ** 2).mean().item()

    def bat(m):
        k = current_population().size
        return -((m(tokens.expand(k, *tokens.shape)) - target) ** 2).mean(dim=(1, 2))

    s, b, sp, bp = twin_runs(EGGROLLTrainer, model, seq, bat, rank=2, population_size=8)
    torch.testing.assert_close(b, s, rtol=1e-4, atol=1e-5)
    for p, q in zip(sp, bp):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_model_is_an_ordinary_module_outside_the_step():
    x, y = make_data()
    model = make_model(norm=True)
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse_batched(x, y), population_size=8,
                             seed=0, batched=True)  # fmt: skip
    trainer.step()
    assert model(x).shape == (32, 1)  # no population dimension needed
    assert current_population() is None
    assert not any(m._forward_hooks for m in model.modules())
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_chunks_see_their_own_member_counts():
    x, y = make_data()
    sizes = []

    def fitness(m):
        info = current_population()
        sizes.append((info.start, info.size, info.total))
        return neg_mse_batched(x, y)(m)

    model = make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=10, seed=0,
                             batched=True, chunk_size=4)  # fmt: skip
    trainer.step()
    assert sizes == [(0, 4, 10), (4, 4, 10), (8, 2, 10)]


def test_weight_used_directly_by_a_parent_is_perturbed():
    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return torch.nn.functional.linear(x, self.fc.weight, self.fc.bias)  # bypasses fc.forward

    torch.manual_seed(0)
    x = torch.randn(3, 4)

    def bat(m):
        k = current_population().size
        return m(x.expand(k, *x.shape)).mean(dim=(1, 2))

    s, b, _, _ = twin_runs(EGGROLLTrainer, Direct(), lambda m: m(x).mean().item(), bat, population_size=4)
    torch.testing.assert_close(b, s, rtol=1e-4, atol=1e-5)


def test_parameter_the_forward_never_uses_warns():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)
            self.spare = nn.Linear(4, 1)

        def forward(self, x):
            return self.fc(x)

    model = Unused()
    x = torch.randn(3, 4)

    def fitness(m):
        k = current_population().size
        return m(x.expand(k, *x.shape)).mean(dim=(1, 2))

    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=4, seed=0,
                             batched=True)  # fmt: skip
    with pytest.warns(RuntimeWarning, match="spare.weight, spare.bias never reached"):
        trainer.step()


def test_population_mode_knows_every_parameter_and_buffer_of_the_model():
    from eggroll_trainer.population.mode import _parameters_and_buffers

    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 3))
    model[2].weight = model[0].weight  # tied: listed twice, under its last name
    names, params, buffers = _parameters_and_buffers(model)
    expected = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
    assert names == expected and names[id(model[0].weight)] == "2.weight"
    assert params == {id(p): p for p in model.parameters()}
    assert buffers == {id(b) for b in model.buffers()} and len(buffers) == 3  # mean, var, batches tracked
