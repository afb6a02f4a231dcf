"""Language models: ES fine-tuning of Hugging Face causal LMs on rewards that need no gradient.

* ``tune`` — [`Tuner`][eggroll_trainer.llm.tune.Tuner] / [`tune`][eggroll_trainer.llm.tune.tune]: a whole run
  (what ``eggroll tune`` does) in one Python call;
* ``rewards`` — every reward form (batch, per-text, lambda, model access, perplexity, weighted sums);
* ``data`` — prompts and their fields from files or ``datasets`` folders; ``sampling`` — paired sampling;
* ``fitness`` — a population's completions in one ``generate`` call, scored by a reward;
* ``calibration`` — choosing σ: how often members answer differently from the base model;
* ``models`` — loading a causal LM offline, choosing the matrices ES perturbs, saving the result;
* ``soft_prompt`` — prompt tuning: learned virtual tokens in front of every prompt, saved as a PEFT adapter;
* ``lora`` — the evolved weights as a PEFT LoRA adapter; ``memory`` — what a generation holds in memory;
* ``checkpoint`` — checkpoints, metrics and the learning curve of a run; ``cli`` — the ``eggroll`` command.

Importing this package does not import ``transformers``; the functions that need it import it when called.
"""

from .calibration import calibrate_sigma
from .data import PromptData, load_prompts
from .fitness import PromptBaseline, PromptBatch, RewardFitness, population_generate
from .lora import export_lora
from .memory import generation_memory
from .models import load_causal_lm, save_model, select_targets
from .rewards import CustomReward, MultiReward, PerplexityReward, TextReward, as_reward
from .sampling import PairedSampling
from .soft_prompt import SoftPromptLM, save_soft_prompt
from .tune import Tuner, lr_schedule, tune

__all__ = [
    "tune",
    "Tuner",
    "lr_schedule",
    "as_reward",
    "TextReward",
    "CustomReward",
    "MultiReward",
    "PerplexityReward",
    "PromptData",
    "PromptBatch",
    "load_prompts",
    "PairedSampling",
    "PromptBaseline",
    "RewardFitness",
    "calibrate_sigma",
    "population_generate",
    "export_lora",
    "SoftPromptLM",
    "save_soft_prompt",
    "generation_memory",
    "load_causal_lm",
    "save_model",
    "select_targets",
]
