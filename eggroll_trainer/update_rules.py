"""How the ES gradient estimate ĝ (an *ascent* direction) moves the parameters.

Every rule reads its hyperparameters from the param group and keeps its moments in the per-parameter
``state`` dict of the optimizer, so ``state_dict()`` saves them and schedulers can drive ``lr``.

* ``sgd``:   d = ĝ - λθ;  buf = μ·buf + (1 - dampening)·d;  θ ← θ + lr·(d + μ·buf if nesterov else buf)
* ``adam``:  g = -ĝ + λθ;  Adam(β₁, β₂, ε) on g (bias-corrected);  θ ← θ - lr·m̂/(√v̂ + ε)
* ``adamw``: as ``adam`` but with decoupled decay θ ← θ(1 - lr·λ)
* ``clipup`` (Toklu et al., 2020): v ← μ·v + lr·ĝ/‖ĝ‖;  v clipped to ‖v‖ ≤ max_speed;  θ ← θ + v
  (norms over all parameters of the group).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

UPDATE_RULES = ("sgd", "adam", "adamw", "clipup")


def apply_update(
    group: dict[str, Any], params: list[Tensor], grads: list[Tensor], state: Any
) -> None:
    """Apply the group's rule in place. ``grads`` are ascent directions ĝ, one per param."""
    rule = group["optimizer"]
    if rule == "sgd":
        for p, g in zip(params, grads):
            _sgd(p, g, group, state[p])
    elif rule in ("adam", "adamw"):
        for p, g in zip(params, grads):
            _adam(p, g, group, state[p], decoupled=rule == "adamw")
    elif rule == "clipup":
        _clipup(params, grads, group, state)
    else:  # validated at construction
        raise ValueError(f"Invalid optimizer: {rule!r}")


def _sgd(p: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
    lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
    d = g if wd == 0 else g.add(p, alpha=-wd)
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = d.clone()
        else:
            buf.mul_(momentum).add_(d, alpha=1 - group["dampening"])
        d = d.add(buf, alpha=momentum) if group["nesterov"] else buf
    p.add_(d, alpha=lr)


def _adam(p: Tensor, g: Tensor, group: dict[str, Any], state: dict[str, Any], decoupled: bool) -> None:
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    grad = -g  # Adam minimises
    if wd != 0:
        if decoupled:
            p.mul_(1 - lr * wd)
        else:
            grad = grad.add(p, alpha=wd)
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float64)
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    state["step"] += 1
    step = float(state["step"])
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1 = 1 - beta1**step
    bias2 = 1 - beta2**step
    denom = (state["exp_avg_sq"] / bias2).sqrt_().add_(eps)
    p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)


def _clipup(params: list[Tensor], grads: list[Tensor], group: dict[str, Any], state: Any) -> None:
    lr, momentum = group["lr"], group["momentum"]
    max_speed = group["max_speed"] if group["max_speed"] is not None else 2 * lr
    norm = torch.sqrt(sum((g.double().pow(2).sum() for g in grads), torch.zeros((), dtype=torch.float64)))
    scale = float(lr / norm) if norm > 0 else 0.0
    velocities = []
    for p, g in zip(params, grads):
        v = state[p].get("velocity")
        if v is None:
            v = state[p]["velocity"] = torch.zeros_like(p)
        v.mul_(momentum).add_(g, alpha=scale)
        velocities.append(v)
    speed = float(torch.sqrt(sum((v.double().pow(2).sum() for v in velocities), torch.zeros((), dtype=torch.float64))))
    if speed > max_speed:
        for v in velocities:
            v.mul_(max_speed / speed)
    for p, v in zip(params, velocities):
        p.add_(v)
