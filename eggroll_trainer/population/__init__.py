"""Population mode: one forward evaluates K members at once, for any architecture.

**The batch convention.** Inside :class:`population_mode` the model's batch holds K·b rows, *member-major*:
member i owns rows i·b … i·b+b−1 (b ≥ 1, found per call from the row count). A tensor whose batch is 1 is
shared by every member (Hugging Face's position ids). The older ``(K, …)`` form is the case b = 1. The batch
is dimension 0 (``batch_dim=1`` for sequence-first models). Flattening ``(K·b, T, d) → (K·b·T, d)`` keeps the
convention (member i then owns b·T consecutive rows), which is why any multiple of K is accepted.

**The mechanism** is a :class:`torch.overrides.TorchFunctionMode`, active only for the duration of the
context (nothing is patched, nothing about the model object changes). It watches every torch call and
acts only on calls that receive a *perturbed parameter* (found by identity, so a tied parameter used by two
modules has one noise):

* products — ``F.linear`` (``nn.Linear`` and its subclasses, Llama's projections, a tied ``lm_head``),
  ``torch.addmm``/``matmul`` with the weight on the right (Hugging Face ``Conv1D``), ``F.embedding``,
  ``F.conv1d``/``F.conv2d``, ``F.multi_head_attention_forward``, ``grouped_mm``/``bmm`` on a mixture-of-experts
  stack — get the shared base product plus each member's rank-r term (``products``, ``embedding``,
  ``convolution``, ``attention``, ``experts``); nothing of size K·m·n exists;
* elementwise uses (a norm's weight, a learned position table added to the activations) and norms
  (``F.layer_norm``, ``F.rms_norm``) get the member's values at that one use, activation-sized;
* anything else falls back to ``torch.func.vmap`` over the members *of that one call*, with the member's
  dense parameter values; if even that fails the error names the parameter.

Fitness functions ask :func:`current_population` how many members the current forward holds (fewer than
the population when the trainer evaluates in chunks).
"""

from .current import PopulationInfo, announce, current_population
from .dispatch import dispatch
from .experts import watch_routing
from .mode import MemberSlice, Perturbed, population_mode

# The router and the expert-routing hooks are installed here, not imported by mode: both import mode.
population_mode.route = staticmethod(dispatch)
population_mode.watch_routing = staticmethod(watch_routing)

__all__ = ["MemberSlice", "Perturbed", "PopulationInfo", "announce", "current_population", "population_mode"]
