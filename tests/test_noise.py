"""The perturbations members see: mirrored, low rank, distinct per parameter, keyed by the seed."""

import torch
from conftest import Recorder, make_model, params_of

from eggroll_trainer import EGGROLLTrainer, VanillaESTrainer


def deltas(recorder, theta, names):
    """Per member: {name: θ_member - θ}."""
    return [{n: snap[n] - theta[n] for n in names} for snap in recorder.snapshots]


def run_one_generation(trainer_cls=EGGROLLTrainer, generations=1, device="cpu", **kwargs):
    model = make_model().to(device)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    rec = Recorder()
    options = dict(population_size=8, learning_rate=0.0, sigma=0.1, seed=3)
    options.update(kwargs)
    trainer = trainer_cls(model.parameters(), model=model, fitness_fn=rec, **options)
    for _ in range(generations):
        trainer.step()
    return deltas(rec, theta, list(theta)), trainer


def test_antithetic_members_mirror_each_other(device):
    members, _ = run_one_generation(device=device, rank=2)
    for k in range(0, 8, 2):
        for name in members[k]:
            torch.testing.assert_close(members[k][name], -members[k + 1][name], rtol=0, atol=1e-6)
            assert members[k][name].abs().sum() > 0


def test_without_antithetic_members_are_independent(device):
    members, _ = run_one_generation(device=device, rank=2, antithetic=False)
    d0, d1 = members[0]["fc2.weight"].flatten(), members[1]["fc2.weight"].flatten()
    assert abs(torch.nn.functional.cosine_similarity(d0, d1, dim=0)) < 0.9


def test_odd_population_last_member_has_no_mirror(device):
    members, _ = run_one_generation(device=device, rank=1, population_size=5)
    assert len(members) == 5
    last = members[4]["fc1.weight"]
    for other in members[:4]:
        assert not torch.allclose(last.abs(), other["fc1.weight"].abs())


def test_weight_perturbation_has_the_stated_rank_and_scale(device):
    for rank in (1, 3):
        members, _ = run_one_generation(device=device, rank=rank, sigma=0.1)
        delta = members[0]["fc2.weight"]  # (6, 6)
        # (θ + σE) - θ carries float32 rounding: count singular values above 1e-3 of the largest
        assert torch.linalg.matrix_rank(delta.double(), rtol=1e-3).item() == rank
    # biases get full-rank noise; with freeze_nonlora they are untouched
    assert members[0]["fc2.bias"].abs().min() > 0
    frozen, _ = run_one_generation(device=device, rank=1, freeze_nonlora=True)
    assert not any(m["fc2.bias"].any() for m in frozen)
    assert all(m["fc2.weight"].abs().sum() > 0 for m in frozen)


def test_low_rank_noise_has_unit_variance_per_entry(device):
    # E = A Bᵀ/√r has entries of variance 1, so σE has entries of std σ.
    members, _ = run_one_generation(device=device, rank=4, population_size=256, sigma=0.1)
    entries = torch.stack([m["fc2.weight"] for m in members[::2]]).flatten()
    assert 0.085 < entries.std().item() < 0.115


def test_same_shaped_parameters_get_different_noise(device):
    members, _ = run_one_generation(device=device, rank=2)
    for m in members:
        assert not torch.allclose(m["fc2.weight"], m["fc3.weight"])
        assert not torch.allclose(m["fc2.bias"], m["fc3.bias"])


def test_same_seed_same_noise_other_seed_other_noise(device):
    a, _ = run_one_generation(device=device, rank=2, seed=11)
    b, _ = run_one_generation(device=device, rank=2, seed=11)
    c, _ = run_one_generation(device=device, rank=2, seed=12)
    assert all(torch.equal(x[n], y[n]) for x, y in zip(a, b) for n in x)
    assert not torch.allclose(a[0]["fc1.weight"], c[0]["fc1.weight"])


def test_fresh_noise_every_generation_by_default(device):
    members, _ = run_one_generation(device=device, rank=2, generations=2)
    assert not torch.allclose(members[0]["fc1.weight"], members[8]["fc1.weight"])


def test_noise_reuse_keeps_noise_for_k_generations(device):
    members, _ = run_one_generation(device=device, rank=2, generations=4, noise_reuse=2)
    gen = [members[i * 8 : (i + 1) * 8] for i in range(4)]
    assert all(torch.equal(x["fc1.weight"], y["fc1.weight"]) for x, y in zip(gen[0], gen[1]))
    assert all(torch.equal(x["fc1.weight"], y["fc1.weight"]) for x, y in zip(gen[2], gen[3]))
    assert not torch.allclose(gen[1][0]["fc1.weight"], gen[2][0]["fc1.weight"])
    # 0 and 1 both mean fresh noise
    one, _ = run_one_generation(device=device, rank=2, generations=2, noise_reuse=1)
    assert not torch.allclose(one[0]["fc1.weight"], one[8]["fc1.weight"])


def test_vanilla_es_perturbs_weights_full_rank(device):
    members, _ = run_one_generation(VanillaESTrainer, device=device)
    assert torch.linalg.matrix_rank(members[0]["fc2.weight"].double()).item() == 6


def test_global_rng_is_never_touched():
    before = torch.random.get_rng_state()
    run_one_generation(rank=2, generations=2)
    run_one_generation(VanillaESTrainer, seed=None)
    assert torch.equal(before, torch.random.get_rng_state())


def test_seed_none_draws_a_seed_and_records_it():
    _, t1 = run_one_generation(seed=None)
    _, t2 = run_one_generation(seed=None)
    assert isinstance(t1.seed, int) and t1.seed != t2.seed


def test_theta_is_restored_exactly_after_each_generation(device):
    model = make_model().to(device)
    theta = params_of(model)
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=Recorder(), population_size=16,
                             learning_rate=0.0, sigma=0.3, seed=0)  # fmt: skip
    trainer.train(3, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(theta, params_of(model)))
