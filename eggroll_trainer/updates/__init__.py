"""From shaped fitnesses to new parameters: the estimate ĝ (``estimate``), then the rule that applies it
(``rules``: a ``torch.optim`` optimizer stepped on ``.grad = −ĝ``; ``clipup``: ClipUp)."""

from .clipup import ClipUp
from .estimate import estimate, pair_weights
from .rules import RULE_DEFAULTS, UPDATE_RULES, Rule

__all__ = ["ClipUp", "estimate", "pair_weights", "RULE_DEFAULTS", "UPDATE_RULES", "Rule"]
