"""Language models: ES fine-tuning of Hugging Face causal LMs on rewards that need no gradient.

* ``fitness`` — a population's completions in one ``generate`` call, scored by a reward;
* ``calibration`` — choosing σ: how often members answer differently from the base model;
* ``models`` — loading a causal LM offline, choosing the matrices ES perturbs, saving the result;
* ``lora`` — the evolved weights as a PEFT LoRA adapter; ``memory`` — what a generation holds in memory;
* ``cli`` — the ``eggroll`` command line.

Importing this package does not import ``transformers``; the functions that need it import it when called.
"""

from .calibration import calibrate_sigma
from .fitness import PromptBaseline, PromptBatch, RewardFitness, population_generate
from .lora import export_lora
from .memory import generation_memory
from .models import load_causal_lm, save_model, select_targets

__all__ = [
    "PromptBaseline",
    "PromptBatch",
    "RewardFitness",
    "calibrate_sigma",
    "population_generate",
    "export_lora",
    "generation_memory",
    "load_causal_lm",
    "save_model",
    "select_targets",
]
