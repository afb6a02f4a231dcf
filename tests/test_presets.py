"""The MuJoCo presets (eggroll_trainer.rl.presets): every value, ARS' update as SGD, overrides, the elite_k cap."""

from __future__ import annotations

import dataclasses

import pytest

from eggroll_trainer.rl.presets import PRESETS, Preset, ars, preset_for

# Every preset value, written out: the results table is measured with exactly these.
EXPECTED = {
    "HalfCheetah": dict(population_size=64, elite_k=4, sigma=0.03, lr=0.0012, optimizer="sgd",
                        fitness_shaping="raw", alive_bonus=0.0, time_budget=120),
    "Hopper": dict(population_size=32, elite_k=8, sigma=0.025, lr=0.001, optimizer="sgd",
                   fitness_shaping="raw", alive_bonus=1.0),
    "Walker2d": dict(population_size=80, elite_k=30, sigma=0.025, lr=0.0015, optimizer="sgd",
                     fitness_shaping="raw", alive_bonus=1.0, time_budget=900),
    "Ant": dict(population_size=120, elite_k=20, sigma=0.025, lr=0.00075, optimizer="sgd", fitness_shaping="raw",
                alive_bonus=1.0, time_budget=900, env_kwargs={"include_cfrc_ext_in_observation": False}),
    "Humanoid": dict(alive_bonus=0.0, time_budget=3600),
    "Swimmer": dict(population_size=16, elite_k=4, sigma=0.02, lr=0.001, optimizer="sgd", fitness_shaping="raw",
                    alive_bonus=0.0, normalize=False, time_budget=300),
    "InvertedPendulum": dict(time_budget=60),
}  # fmt: skip


def test_defaults():
    assert dataclasses.asdict(Preset()) == dict(
        population_size=32, sigma=0.03, lr=0.02, rank=1, optimizer="adam", fitness_shaping="centered_rank",
        elite_k=0, hidden=0, alive_bonus=0.0, normalize=True, time_budget=600.0, env_kwargs={},
    )  # fmt: skip


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_preset_value(name):
    expected = dataclasses.asdict(Preset(**EXPECTED[name]))
    got = dataclasses.asdict(PRESETS[name])
    assert got.keys() == expected.keys()
    floats = [key for key, value in expected.items() if isinstance(value, float)]  # lr = 2να: rounding
    assert {k: got[k] for k in floats} == pytest.approx({k: expected[k] for k in floats}, rel=1e-12)
    assert {k: v for k, v in got.items() if k not in floats} == {
        k: expected[k] for k in got if k not in floats
    }


def test_presets_are_the_listed_tasks():
    assert list(PRESETS) == list(EXPECTED)


def test_ars_is_ars_update_as_sgd():
    """ARS' step α on raw returns of the top b pairs == SGD with lr = 2να on the trainer's estimate."""
    p = ars(directions=8, top=4, alpha=0.01, nu=0.025, shift=1.0, hidden=16)
    assert (p.population_size, p.elite_k, p.sigma, p.lr) == (16, 4, 0.025, 2 * 0.025 * 0.01)
    assert (p.optimizer, p.fitness_shaping, p.alive_bonus, p.hidden) == ("sgd", "raw", 1.0, 16)


def test_preset_for_looks_the_task_up_and_applies_overrides():
    assert preset_for("Hopper-v5") == PRESETS["Hopper"]
    assert preset_for("Hopper-v4") == PRESETS["Hopper"]  # any version: the task's name
    assert preset_for("Pusher-v5") == Preset()  # a task without a preset: the defaults
    hp = preset_for("Walker2d-v5", sigma=0.1, hidden=None, normalize=False)  # None: the preset's
    assert (hp.sigma, hp.hidden, hp.normalize, hp.lr) == (0.1, 0, False, PRESETS["Walker2d"].lr)
    assert preset_for("Swimmer-v5", time_budget=5.0).time_budget == 5.0
    assert PRESETS["Walker2d"].sigma == 0.025  # the table itself is never changed


def test_elite_k_is_capped_at_the_number_of_pairs():
    assert preset_for("Walker2d-v5", population_size=8).elite_k == 4  # 30 kept of 40 pairs -> all 4 pairs
    assert preset_for("Walker2d-v5", population_size=80).elite_k == 30
    assert preset_for("Hopper-v5", population_size=8, elite_k=30).elite_k == 4
    assert preset_for("InvertedPendulum-v5", population_size=4).elite_k == 0  # 0 (every pair) stays 0


def test_unknown_override_raises():
    with pytest.raises(ValueError, match="popsize"):
        preset_for("Hopper-v5", popsize=8)
