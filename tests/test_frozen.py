"""Parameters with requires_grad=False are frozen, as torch.optim treats them: neither perturbed nor updated."""

import pytest
import torch
from conftest import Recorder, make_data, make_model, neg_mse, neg_mse_batched, params_of, same

from eggroll_trainer import EGGROLLTrainer, ESTrainer, VanillaESTrainer, current_population


def frozen_fc1(**kwargs):
    model = make_model(**kwargs)
    model.fc1.requires_grad_(False)
    return model


@pytest.mark.parametrize("cls", [EGGROLLTrainer, VanillaESTrainer])
@pytest.mark.parametrize("batched", [False, True])
def test_frozen_layer_is_neither_perturbed_nor_updated(cls, batched):
    x, y = make_data()
    model = frozen_fc1(norm=True)
    fc1 = params_of(model.fc1)
    rest = [p.detach().clone() for n, p in model.named_parameters() if not n.startswith("fc1")]
    fitness = neg_mse_batched(x, y) if batched else Recorder(neg_mse(x, y))
    trainer = cls(model.parameters(), model=model, fitness_fn=fitness, population_size=8, learning_rate=0.05,
                  sigma=0.1, seed=0, batched=batched, optimizer="adam", weight_decay=0.1)  # fmt: skip
    trainer.train(3, verbose=False)
    assert same(fc1, params_of(model.fc1))  # not updated (nor decayed)
    assert not same(rest, [p.detach() for n, p in model.named_parameters() if not n.startswith("fc1")])
    assert same(fc1, params_of(trainer.get_best_model().fc1))
    if not batched:  # every member saw fc1 exactly as it is
        assert all(torch.equal(s["fc1.weight"], fc1[0]) and torch.equal(s["fc1.bias"], fc1[1])
                   for s in fitness.snapshots)  # fmt: skip


@pytest.mark.filterwarnings("ignore:batched evaluation")  # the other layers never reach this fitness
@pytest.mark.parametrize("batched", [False, True])
def test_a_fitness_of_frozen_layers_only_sees_one_model(batched):
    # If fc1 were perturbed, members would score differently; frozen, they all score the same.
    x, _ = make_data()
    model = frozen_fc1()

    def fc1_only(model):
        if batched:
            k = current_population().size
            return model.fc1(x.expand(k, *x.shape)).sum(dim=(1, 2))
        return model.fc1(x).sum().item()

    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fc1_only, population_size=8, seed=0,
                             batched=batched)  # fmt: skip
    assert trainer.step()["std_fitness"] == 0.0


def test_freezing_mid_run_takes_effect_at_the_next_generation():
    x, y = make_data()
    model = make_model()
    trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=neg_mse(x, y), population_size=8, seed=0,
                             optimizer="adam")  # fmt: skip
    trainer.step()
    model.head.requires_grad_(False)
    head = params_of(model.head)
    trainer.train(2, verbose=False)
    assert same(head, params_of(model.head))
    model.head.requires_grad_(True)
    trainer.step()
    assert not same(head, params_of(model.head))


def test_flat_vector_subclass_honours_frozen_parameters():
    class FlatES(ESTrainer):
        def sample_perturbations(self, population_size):
            return torch.randn(
                population_size, self.current_params.numel(), generator=torch.Generator().manual_seed(0)
            )

        def compute_update(self, perturbations, fitnesses):
            return ((fitnesses - fitnesses.mean()) / fitnesses.std()) @ perturbations / len(fitnesses)

    x, y = make_data()
    model = frozen_fc1()
    rec = Recorder(neg_mse(x, y))
    fc1 = params_of(model.fc1)
    trainer = FlatES(model.parameters(), model=model, fitness_fn=rec, population_size=8, sigma=0.1)
    trainer.train(2, verbose=False)
    assert same(fc1, params_of(model.fc1))
    assert all(torch.equal(s["fc1.weight"], fc1[0]) for s in rec.snapshots)
    assert not torch.equal(rec.snapshots[0]["fc2.weight"], rec.snapshots[1]["fc2.weight"])


def test_all_parameters_frozen_is_an_error():
    model = make_model()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        EGGROLLTrainer(model.parameters(), model=model, fitness_fn=lambda m: 0.0)


def test_a_frozen_weight_beside_a_trained_bias_batched_matches_sequential():
    # Population mode with a Linear whose weight is frozen and whose bias is trained: same members, same update.
    x, y = make_data()
    models = []
    for batched in (False, True):
        model = make_model()
        model.fc2.weight.requires_grad_(False)
        fitness = neg_mse_batched(x, y) if batched else neg_mse(x, y)
        trainer = EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=8,
                                 learning_rate=0.01, sigma=0.1, rank=2, seed=0, batched=batched)  # fmt: skip
        trainer.train(2, verbose=False)
        models.append(model)
    sequential, batched = models
    assert torch.equal(sequential.fc2.weight, make_model().fc2.weight)
    assert not torch.equal(sequential.fc2.bias, make_model().fc2.bias)
    for p, q in zip(sequential.parameters(), batched.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
