r"""How the ES estimate ĝ moves the parameters: a ``torch.optim`` optimizer stepped on ``.grad = −ĝ``.

ĝ is an *ascent* direction and every update rule here is a ``torch.optim.Optimizer``, which *minimises*; so
the trainer writes −ĝ into each trained parameter's ``.grad``, steps the rule, and puts every ``.grad`` back as
it was. A rule is built on the trainer's own ``param_groups`` dicts (the same objects, not copies) and shares
its ``state``, so a scheduler that writes ``group["lr"]``, per-group settings and ``state_dict()`` reach it
unchanged, and a resumed run continues bit-identically.

* ``"sgd"``: ``torch.optim.SGD``. With d = −ĝ + λθ: buf ← μ·buf + (1 − dampening)·d;
  θ ← θ − lr·(d + μ·buf if nesterov else buf). Without momentum, θ ← θ + lr·ĝ.
* ``"adam"``, ``"adamw"``: ``torch.optim.Adam``, ``torch.optim.AdamW`` with −ĝ in the role of the gradient.
* ``"clipup"``: [`ClipUp`][eggroll_trainer.updates.rules.ClipUp] (Toklu et al., 2020; module ``clipup``).
* any callable ``factory(param_groups) -> torch.optim.Optimizer``: a ``torch.optim`` class such as
  ``torch.optim.RMSprop``, or a ``functools.partial(torch.optim.SGD, momentum=0.9)``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..validation import check, is_real
from .clipup import ClipUp

__all__ = [
    "UPDATE_RULES",
    "RULE_DEFAULTS",
    "Rule",
    "ClipUp",
    "check_rule",
    "rule_defaults",
    "build_rules",
    "step_rules",
    "restored_rules",
    "describe_rule",
]

UPDATE_RULES = ("sgd", "adam", "adamw", "clipup")

#: A rule: one of ``UPDATE_RULES`` or a callable building a ``torch.optim.Optimizer`` from param groups.
Rule = str | Callable[..., torch.optim.Optimizer]

#: The trainer's update-rule keywords, and what ``None`` means for a named rule. With a callable rule,
#: ``None`` leaves the keyword to the optimizer's own default.
RULE_DEFAULTS: dict[str, Any] = dict(
    momentum=0.0,
    dampening=0.0,
    nesterov=False,
    weight_decay=0.0,
    betas=(0.9, 0.999),
    eps=1e-8,
    max_speed=None,
)


_NAMED: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "clipup": ClipUp,
}


def check_rule(rule: Any) -> None:
    """Raise ``ValueError`` unless ``rule`` is a name of ``UPDATE_RULES`` or a callable."""
    if isinstance(rule, str) and rule in UPDATE_RULES:
        return
    if callable(rule) and not isinstance(rule, str):
        return
    raise ValueError(
        f"Invalid optimizer: {rule!r} (expected one of {UPDATE_RULES} or a torch.optim.Optimizer class)"
    )


def rule_defaults(rule: Rule, **keywords: Any) -> dict[str, Any]:
    """Validate the update-rule keywords (those of ``RULE_DEFAULTS``); return the entries they add to each
    param group's defaults.

    A named rule gets every keyword (``None`` replaced by ``RULE_DEFAULTS``). A callable rule gets only those
    set (not ``None``), and each must be a parameter of the callable; the rest are its own defaults.
    """
    check_rule(rule)
    if set(keywords) != set(RULE_DEFAULTS):
        raise TypeError(f"rule_defaults() takes exactly the keywords {sorted(RULE_DEFAULTS)}")
    _validate(**{k: RULE_DEFAULTS[k] if v is None else v for k, v in keywords.items()})
    if isinstance(rule, str):
        return {k: RULE_DEFAULTS[k] if v is None else v for k, v in keywords.items()}
    given = {k: v for k, v in keywords.items() if v is not None}
    if isinstance(rule, functools.partial) and "lr" in rule.keywords:
        raise ValueError(
            f"Invalid optimizer: {describe_rule(rule)} sets lr; give the trainer learning_rate= (or lr=) instead"
        )
    accepted = _parameters(rule)
    for name in given:
        if accepted is not None and name not in accepted:
            raise ValueError(f"Invalid {name}: the optimizer {describe_rule(rule)} takes no {name!r}")
    return {k: (tuple(v) if k == "betas" else v) for k, v in given.items()}


def build_rules(param_groups: list[dict[str, Any]], state: Any) -> list[torch.optim.Optimizer]:
    """One inner optimizer per distinct rule of the groups, built on those very group dicts, with ``state``
    as its state (so the outer optimizer's ``state_dict()`` holds every moment)."""
    by_rule: dict[Any, tuple[Rule, list[dict[str, Any]]]] = {}
    for group in param_groups:
        rule = group["optimizer"]
        check_rule(rule)
        key = rule if isinstance(rule, str) else id(rule)
        by_rule.setdefault(key, (rule, []))[1].append(group)
    rules = []
    for rule, groups in by_rule.values():
        factory = _NAMED[rule] if isinstance(rule, str) else rule
        inner = factory(groups)
        if not isinstance(inner, torch.optim.Optimizer):
            raise ValueError(
                f"Invalid optimizer: {describe_rule(rule)} returned {type(inner).__name__}, "
                "not a torch.optim.Optimizer"
            )
        if len(inner.param_groups) != len(groups) or any(
            a is not b for a, b in zip(inner.param_groups, groups)
        ):
            raise ValueError(
                f"Invalid optimizer: {describe_rule(rule)} must take the param groups it is given as they are "
                "(a torch.optim class, or a functools.partial of one)"
            )
        if any(group.get("maximize", False) for group in groups):
            raise ValueError("Invalid optimizer: maximize=True; the trainer hands it -ĝ to minimise already")
        inner.state = state
        rules.append(inner)
    return rules


def step_rules(
    rules: Sequence[torch.optim.Optimizer], params: list[Tensor], grads: list[Tensor | None]
) -> None:
    """Move every parameter by its rule given ``.grad = −ĝ``; then put each ``.grad`` back as it was.

    ``grads[i]`` is −ĝ of ``params[i]`` (the caller hands over the tensor), or ``None`` for a parameter
    without an estimate (frozen): its ``.grad`` is ``None`` during the step, so no rule moves it
    (``torch.optim`` skips parameters without a gradient, weight decay included).
    """
    saved = [p.grad for p in params]
    try:
        for p, grad in zip(params, grads):
            p.grad = grad
        for rule in rules:
            rule.step()
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad


def restored_rules(saved_groups: list[dict[str, Any]], groups: list[dict[str, Any]]) -> list[Rule]:
    """The rule of each group after loading a checkpoint whose groups are ``saved_groups``.

    A saved name wins, as every saved group setting does; a callable is saved by its
    [`describe_rule`][eggroll_trainer.updates.rules.describe_rule] name, which must be that of the group's
    current callable (kept). Raises ``ValueError`` otherwise, before anything is loaded.
    """
    rules = []
    for saved, group in zip(saved_groups, groups):
        rule = saved.get("optimizer", group["optimizer"])
        if not (isinstance(rule, str) and rule in UPDATE_RULES):
            if describe_rule(rule) != describe_rule(group["optimizer"]):
                raise ValueError(
                    f"load_state_dict: the checkpoint's update rule {describe_rule(rule)} is not this trainer's "
                    f"{describe_rule(group['optimizer'])}"
                )
            rule = group["optimizer"]
        rules.append(rule)
    return rules


def describe_rule(rule: Rule) -> str:
    """A rule as a string for messages and checkpoints: its name, ``module.Class``, or a partial of it."""
    if isinstance(rule, str):
        return rule
    if isinstance(rule, functools.partial):
        args = [repr(a) for a in rule.args] + [f"{k}={v!r}" for k, v in rule.keywords.items()]
        return f"functools.partial({describe_rule(rule.func)}, {', '.join(args)})"
    name = getattr(rule, "__qualname__", None) or type(rule).__qualname__
    return f"{getattr(rule, '__module__', '?')}.{name}"


# ------------------------------------------------------------------------------------ helpers
def _validate(
    momentum: Any, dampening: Any, nesterov: Any, weight_decay: Any, betas: Any, eps: Any, max_speed: Any
) -> None:
    check(is_real(momentum) and 0 <= momentum < 1, f"Invalid momentum: {momentum}")
    check(is_real(dampening) and 0 <= dampening <= 1, f"Invalid dampening: {dampening}")
    check(isinstance(nesterov, bool), f"Invalid nesterov: {nesterov!r}")
    check(
        not nesterov or (momentum > 0 and dampening == 0),
        "Invalid nesterov: needs momentum > 0 and dampening 0",
    )
    check(is_real(weight_decay) and weight_decay >= 0, f"Invalid weight_decay: {weight_decay}")
    check(
        isinstance(betas, Sequence) and len(betas) == 2 and all(is_real(b) and 0 <= b < 1 for b in betas),
        f"Invalid betas: {betas}",
    )
    check(is_real(eps) and eps >= 0, f"Invalid eps: {eps}")
    check(max_speed is None or (is_real(max_speed) and max_speed > 0), f"Invalid max_speed: {max_speed}")


def _parameters(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword parameters ``factory`` accepts, or None when it takes ``**kwargs`` (or has no signature)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return set(signature.parameters)
