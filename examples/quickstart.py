"""Quickstart: fit a small MLP to a regression target with EGGROLL, all members in one forward.

Run: python examples/quickstart.py   (under a minute on 2 CPU cores)
"""

import torch
from torch import nn

from eggroll_trainer import EGGROLLTrainer, current_population

torch.manual_seed(0)
x = torch.linspace(-3, 3, 64).unsqueeze(1)  # (64, 1)
y = torch.sin(x) + 0.3 * x  # the target curve

model = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def fitness(model: nn.Module) -> torch.Tensor:
    """Negative MSE of every member at once: the model sees (members, 64, 1)."""
    members = current_population().size
    pred = model(x.expand(members, *x.shape))  # (members, 64, 1)
    return -((pred - y) ** 2).mean(dim=(1, 2))  # (members,)


trainer = EGGROLLTrainer(
    model.parameters(),
    model=model,
    fitness_fn=fitness,
    population_size=256,
    learning_rate=0.02,
    sigma=0.02,
    rank=4,
    seed=0,
    batched=True,
    optimizer="adam",
)
print(f"start: mse = {-trainer.evaluate_fitness(model):.4f}")
result = trainer.train(200)
print(f"after {result['generation']} generations: mse = {-trainer.evaluate_fitness(model):.4f}")
