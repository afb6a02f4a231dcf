"""16-bit parameters: fp32 master copies make updates below half an ulp accumulate, and resume exactly."""

import io

import pytest
import torch
from conftest import make_data, make_model, neg_mse, neg_mse_batched, params_of, same
from torch import nn

from eggroll_trainer import EGGROLLTrainer, VanillaESTrainer

HALF_ULP_BELOW_ONE = 2.0**-9  # bf16 has 8 significant bits: the ulp of [0.5, 1) is 2^-8


def ones_layer(device, dtype=torch.bfloat16):
    layer = nn.Linear(4, 3, bias=False)
    nn.init.ones_(layer.weight)  # exactly representable: every change shows
    return layer.to(device=device, dtype=dtype)


def tiny_steps(layer, **options):
    """SGD steps bounded by |lr·ĝ| ≤ lr·max|ε|·Σ|f̃|/(Nσ) ≤ 3e-5 · 5.5 · 8 / (8 · 0.1) < 1.7e-3 < 2^-9:
    every one is below half a bf16 ulp of any weight near 1 (zscore: Σ|f̃| ≤ N)."""
    return VanillaESTrainer(layer.parameters(), model=layer, fitness_fn=lambda m: float(m.weight.float().sum()),
                            population_size=8, sigma=0.1, learning_rate=3e-5, seed=0, **options)  # fmt: skip


def test_updates_below_half_a_bf16_ulp_accumulate(device):
    plain, kept = ones_layer(device), ones_layer(device)
    without = tiny_steps(plain, master_weights=False)
    with_masters = tiny_steps(kept)
    without.train(150, verbose=False)
    with_masters.train(150, verbose=False)
    assert torch.equal(plain.weight, torch.ones_like(plain.weight))  # each step rounded away: never moved
    master = with_masters.state_dict()["es"]["master_params"][0]
    assert master.dtype == torch.float32 and torch.equal(master.to(torch.bfloat16), kept.weight)
    assert (master - 1).min() > 2 * HALF_ULP_BELOW_ONE  # every weight went up Σw's gradient, by over an ulp
    assert (kept.weight > 1).all()
    assert with_masters.trainer_memory()["master_params"] == 12 * 4
    assert without.trainer_memory()["master_params"] == 0


def test_float32_parameters_get_no_master(device):
    layer = ones_layer(device, torch.float32)
    trainer = tiny_steps(layer)
    trainer.step()
    assert trainer.trainer_memory()["master_params"] == 0
    assert trainer.state_dict()["es"]["master_params"] is None


def test_a_parameter_changed_outside_the_trainer_gets_a_fresh_master(device):
    layer = ones_layer(device)
    trainer = tiny_steps(layer)
    trainer.train(3, verbose=False)
    with torch.no_grad():
        layer.weight.fill_(2.0)  # e.g. weights loaded into the model between steps
    trainer.step()
    assert (layer.weight.float() - 2.0).abs().max() <= 2.0**-7  # stepped from 2, not back to about 1
    trainer.reset()  # θ₀ written back: the masters start again from it
    assert torch.equal(layer.weight, torch.ones_like(layer.weight))
    trainer.step()
    assert torch.equal(trainer.state_dict()["es"]["master_params"][0].to(torch.bfloat16), layer.weight)


def save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_bf16_resume_is_bit_identical(optimizer, device):
    x, y = (t.to(device=device, dtype=torch.bfloat16) for t in make_data())

    def build(model, seed):
        return EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse_batched(x, y), rank=2,
                              population_size=8, learning_rate=1e-3, sigma=0.05, seed=seed, batched=True,
                              optimizer=optimizer, momentum=0.9 if optimizer == "sgd" else None)  # fmt: skip

    def bf16_model(seed=0):
        return make_model(seed=seed).to(device=device, dtype=torch.bfloat16)

    straight_model = bf16_model()
    straight = build(straight_model, 5)
    straight.train(6, verbose=False)

    first_model = bf16_model()
    first = build(first_model, 5)
    first.train(3, verbose=False)
    checkpoint = save_load({"model": first_model.state_dict(), "trainer": first.state_dict()})
    assert all(m.dtype == torch.float32 for m in checkpoint["trainer"]["es"]["master_params"])
    moments = [v for s in checkpoint["trainer"]["state"].values() for k, v in s.items() if k != "step"]
    assert moments and all(v.dtype == torch.float32 for v in moments)  # the rule stepped fp32 masters

    resumed_model = bf16_model(seed=99)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = build(resumed_model, 1234)
    resumed.load_state_dict(checkpoint["trainer"])
    loaded = [v for s in resumed.state.values() for k, v in s.items() if k != "step"]
    assert all(v.dtype == torch.float32 for v in loaded)  # not cast down to the parameters' bf16
    resumed.train(3, verbose=False)

    assert same(params_of(straight_model), params_of(resumed_model))
    masters = zip(straight.state_dict()["es"]["master_params"], resumed.state_dict()["es"]["master_params"])
    assert all(torch.equal(a, b) for a, b in masters)
    assert all(p.dtype == torch.bfloat16 for p in resumed_model.parameters())


def test_bf16_population_mode_agrees_with_sequential_to_bf16_rounding(device):
    x, y = (t.to(device=device, dtype=torch.bfloat16) for t in make_data())
    scores = {}
    for batched in (False, True):
        model = make_model(norm=True).to(device=device, dtype=torch.bfloat16)
        record = []

        def fitness(m, batched=batched, record=record):
            value = (neg_mse_batched if batched else neg_mse)(x, y)(m)
            record.append(torch.as_tensor(value, dtype=torch.float64).reshape(-1).cpu())
            return value

        trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=8, rank=2,
                                 sigma=0.05, learning_rate=0.01, seed=1, batched=batched)  # fmt: skip
        trainer.train(2, verbose=False)
        scores[batched] = torch.cat(record)
    # bf16 keeps ~3 significant digits; θ + σE is rounded once in the weight (sequential) and not at all
    # in population mode (shared product + rank-r term)
    torch.testing.assert_close(scores[True], scores[False], rtol=3e-2, atol=3e-2)
