r"""ClipUp (Toklu et al., 2020, "ClipUp: a simple and powerful optimizer for distribution-based policy
evolution", PPSN XVI): normalised gradient steps with momentum and a speed limit, as a ``torch.optim.Optimizer``.

One of the trainers' named update rules (``optimizer="clipup"``); usable on its own like any optimizer. Its public
name is ``eggroll_trainer.updates.rules.ClipUp``, which is also the name a checkpoint records for
``optimizer=ClipUp`` (see ``updates.rules.describe_rule``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import required


class ClipUp(torch.optim.Optimizer):
    r"""ClipUp (Toklu et al., 2020, "ClipUp: a simple and powerful optimizer for distribution-based policy
    evolution"): normalised gradient steps with momentum and a speed limit.

    With $g$ the gradient (here $-\hat g$) of all parameters of a group taken as one vector,

    $$v \leftarrow \mu v + \mathrm{lr}\,\frac{g}{\lVert g\rVert},\qquad
      v \leftarrow v \cdot \min\Big(1, \frac{\texttt{max\_speed}}{\lVert v\rVert}\Big),\qquad
      \theta \leftarrow \theta - v .$$

    The step length never exceeds ``max_speed`` whatever the scale of the gradient; the paper suggests
    ``max_speed = 2 * lr`` (the default) and ``momentum = 0.9``.

    Args:
        params: parameters or param-group dicts.
        lr: length of the normalised step added to the velocity.
        momentum: velocity decay μ.
        max_speed: bound on ‖v‖; ``None`` means ``2 * lr`` (read at every step, so it follows a schedule).
    """

    def __init__(
        self, params: Any, lr: float = required, momentum: float = 0.9, max_speed: float | None = None
    ):
        if lr is not required and not lr >= 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum: {momentum}")
        if max_speed is not None and not max_speed > 0:
            raise ValueError(f"Invalid max_speed: {max_speed}")
        super().__init__(params, dict(lr=lr, momentum=momentum, max_speed=max_speed))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One ClipUp step on the current ``.grad`` of every parameter that has one."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, momentum = group["lr"], group["momentum"]
            max_speed = group["max_speed"] if group["max_speed"] is not None else 2 * lr
            norm = _norm([p.grad for p in params])
            scale = lr / norm if norm > 0 else 0.0
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocities.append(state["velocity"].mul_(momentum).add_(p.grad, alpha=scale))
            speed = _norm(velocities)
            if speed > max_speed:
                for v in velocities:
                    v.mul_(max_speed / speed)
            for p, v in zip(params, velocities):
                p.sub_(v)
        return loss


ClipUp.__module__ = "eggroll_trainer.updates.rules"  # its public home, and the name checkpoints record


def _norm(tensors: list[Tensor]) -> float:
    """‖(t₁, t₂, …)‖ of the tensors taken as one vector, accumulated in float64."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 for t in tensors))
