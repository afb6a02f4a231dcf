"""`VanillaESTrainer`: full-rank OpenAI-style ES (Salimans et al., 2017)."""

from __future__ import annotations

from .base import ESTrainer


class VanillaESTrainer(ESTrainer):
    r"""OpenAI-style Evolution Strategies: every parameter gets full-rank Gaussian noise.

    Member i is evaluated at $\theta + \sigma s_i \varepsilon_{k(i)}$, $\varepsilon \sim \mathcal N(0, I)$, and

    $$\hat g = \frac{1}{N\sigma} \sum_i \tilde f_i\, s_i\, \varepsilon_{k(i)}.$$

    Takes exactly the arguments of [`ESTrainer`][eggroll_trainer.ESTrainer]. In population mode
    (`batched=True`) a Linear layer's full-rank noise is read as a view of the noise table (no copy),
    but each member still costs a full m×n product: use [`EGGROLLTrainer`][eggroll_trainer.EGGROLLTrainer]
    for speed.
    """
