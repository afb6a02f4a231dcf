"""`Tuner` / `tune`: ES fine-tuning of a causal LM on any reward — everything ``eggroll tune`` does, in Python.

    from eggroll_trainer.llm import load_causal_lm, tune
    model, tokenizer = load_causal_lm("smollm2")
    summary = tune(model, tokenizer, "lambda text: float('yes' in text)", "prompts.jsonl",
                   generations=50, output="runs/yes")

Each generation: the next ``prompts_per_step`` prompts ([`batch_indices`][eggroll_trainer.llm.data.batch_indices]),
one EGGROLL step (rank-r members, every member answering every prompt; ``freeze_nonlora=True``;
``track_best=False``) at the learning rate of ``lr_schedule``, a line of ``metrics.jsonl``; every ``eval_every`` generations the greedy reward of the
unperturbed model on held-out prompts; every ``save_every`` a checkpoint. Ctrl-C finishes restoring the weights,
saves a checkpoint and returns (``interrupted``). The results (``summary.json``, metrics, curve) are written
before the model, whose saving could fail. Under ``torchrun`` the population is sharded over the ranks (every
rank holds the model and computes the same held-out reward); only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..trainers.eggroll import EGGROLLTrainer
from .checkpoint import load_checkpoint, plot_learning_curve, read_metrics, save_checkpoint
from .data import batch_indices, load_prompts
from .fitness import PromptBaseline, RewardFitness
from .models import save_model, select_targets
from .rewards import as_reward, is_model_reward
from .sampling import PairedSampling
from .soft_prompt import SoftPromptLM, recipe_defaults, save_soft_prompt, soft_prompt_targets

__all__ = ["Tuner", "lr_schedule", "tune"]

#: The learning-rate decays ``Tuner(lr_decay=...)`` knows.
LR_DECAYS = ("none", "cosine")


def lr_schedule(
    lr: float, generation: float, generations: float, decay: str = "cosine", floor: float = 0.1
) -> float:
    r"""The learning rate of generation ``generation`` (0-based) of ``generations`` (any unit of progress:
    the example passes seconds of its time budget).

    ``cosine``: $\eta_g = \eta\,\bigl(f + (1 - f)\,\tfrac12(1 + \cos(\pi g / G))\bigr)$, from $\eta$ down to
    $f\eta$ at $g = G$; ``none``: $\eta$. A pure function of the generation, so a resumed run takes the same
    steps as an uninterrupted one. With a constant lr of 1e-4 the SmolLM2 addition run first rose, then
    degraded (docs/examples/llm.md): the decay lets the mean settle.
    """
    if decay == "none":
        return lr
    if decay != "cosine":
        raise ValueError(f"Invalid lr_decay: {decay!r} (expected one of {LR_DECAYS})")
    done = min(1.0, generation / max(generations, 1))
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * done)))


class Tuner:
    """One tuning run. Arguments after ``data`` are keywords; see ``eggroll tune --help`` for each.

    Args:
        model: a Hugging Face causal LM (on its device and dtype already).
        tokenizer: its tokenizer, padding on the left.
        reward: anything [`as_reward`][eggroll_trainer.llm.rewards.as_reward] takes.
        data: anything [`load_prompts`][eggroll_trainer.llm.data.load_prompts] takes.
        eval_data: held-out prompts for ``eval_every`` (same forms), or ``None``.
        output: the run's folder (``None``: write nothing).
    """

    def __init__(
        self, model: Any, tokenizer: Any, reward: Any, data: Any, *, eval_data: Any = None,
        output: str | Path | None = None, target_modules: Any = "all-linear", population: int = 32, rank: int = 4,
        sigma: float | None = None, lr: float | None = None, lr_decay: str = "cosine", lr_floor: float = 0.1,
        optimizer: str = "sgd", prompts_per_step: int = 8,
        max_new_tokens: int = 16, noise_reuse: int = 1, scale: str = "std", sequential: bool = False,
        chunk_size: int = 0, seed: int = 0, temperature: float = 0.0, top_p: float = 1.0, eval_every: int = 0,
        save_every: int = 0, adapter_rank: int = 16, progress: bool = False, model_name: str | None = None,
        soft_prompt: int = 0,
    ) -> None:  # fmt: skip
        default_sigma, default_lr = recipe_defaults(soft_prompt)  # σ and lr default to what is evolved
        sigma = default_sigma if sigma is None else sigma
        lr = default_lr if lr is None else lr
        lr_schedule(lr, 0, 1, lr_decay, lr_floor)  # validates lr_decay
        if not 0.0 <= lr_floor <= 1.0:
            raise ValueError(f"Invalid lr_floor: {lr_floor} (expected a fraction of lr in [0, 1])")
        if soft_prompt < 0:
            raise ValueError(
                f"Invalid soft_prompt: {soft_prompt} (0: evolve the weights; N > 0 virtual tokens)"
            )
        if scale not in ("std", "none"):
            raise ValueError(f"Invalid scale: {scale!r} (expected 'std' or 'none')")
        if eval_every and eval_data is None:
            raise ValueError("Invalid eval_every: needs eval_data (--eval-prompts)")
        if temperature > 0 and sequential:
            raise ValueError(
                "Invalid temperature: paired sampling needs population mode (leave out --sequential)"
            )
        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        self.data = load_prompts(data)
        self.eval_data = None if eval_data is None else load_prompts(eval_data)
        batch_indices(len(self.data), prompts_per_step, seed, 0)  # validates prompts_per_step
        self.options = dict(
            population=population, rank=rank, sigma=sigma, lr=lr, lr_decay=lr_decay, lr_floor=lr_floor,
            optimizer=optimizer, noise_reuse=noise_reuse,
            prompts_per_step=prompts_per_step, max_new_tokens=max_new_tokens, scale=scale, seed=seed,
            temperature=temperature, top_p=top_p, eval_every=eval_every, save_every=save_every,
            adapter_rank=adapter_rank, target_modules=target_modules, sequential=sequential, chunk_size=chunk_size,
            soft_prompt=soft_prompt,
        )  # fmt: skip
        self.model_name, self.progress = model_name, progress
        self.output = None if output is None else Path(output)
        self.reward = as_reward(reward)
        if soft_prompt:  # ES evolves n virtual tokens in front of every prompt; the weights stay
            self.model = model = SoftPromptLM(model, soft_prompt, seed=seed)
            self.targets = soft_prompt_targets(model)
        else:
            self.targets = select_targets(model, target_modules)
        keep_base = adapter_rank > 0 and self.output is not None and not soft_prompt
        self.base = self.targets.snapshot() if keep_base else {}
        self.sampler = PairedSampling(temperature, top_p, seed) if temperature > 0 else None
        self.fitness, fitness_shaping = self._fitness(population, scale)
        self.trainer = EGGROLLTrainer(
            self.targets.params, model, self.fitness, population_size=population, learning_rate=lr, sigma=sigma,
            rank=rank, noise_reuse=noise_reuse, freeze_nonlora=True, optimizer=optimizer,
            fitness_shaping=fitness_shaping, batched=not sequential, chunk_size=chunk_size or None, seed=seed,
            track_best=False,
        )  # fmt: skip
        self.metrics: list[dict[str, Any]] = []
        self.generations = 0  # the run's length, which the lr decay spans (set by run; 0: a constant lr)
        self.writes = distributed.world()[0] == 0 and self.output is not None

    # ------------------------------------------------------------------------------ the fitness
    def _generate_kwargs(self) -> dict[str, Any]:
        if self.sampler is None:
            return {}
        from transformers import LogitsProcessorList

        return {"do_sample": False, "logits_processor": LogitsProcessorList([self.sampler])}

    def _fitness(self, population: int, scale: str) -> tuple[Any, Any]:
        """``(fitness_fn, fitness_shaping)``: per-prompt baselines for completion rewards, z-scores of the
        mean score for model rewards (their scores are dense)."""
        model_reward = is_model_reward(self.reward)
        if model_reward:
            self.reward.tokenizer = self.tokenizer
        if model_reward:  # dense (K, b) scores: the z-score of each member's mean
            return self.reward, "zscore"
        fitness = RewardFitness(
            self.tokenizer, self.reward, self.options["max_new_tokens"], **self._generate_kwargs()
        )  # (K, P) scores; the shaping sees the generation's (N, P), also across ranks
        return fitness, PromptBaseline(scale)

    def _set_batch(self, target: Any, batch: Any) -> None:
        (self.reward if is_model_reward(self.reward) else target).batch = batch

    # ------------------------------------------------------------------------------ the run
    def step(self) -> dict[str, Any]:
        """One generation on the next prompts; returns (and logs) its metrics."""
        g = self.trainer.generation
        rows = batch_indices(len(self.data), self.options["prompts_per_step"], self.seed, g)
        self._set_batch(self.fitness, self.data.batch(rows))
        if self.sampler is not None:
            self.sampler.generation = g
        # the decay spans run(generations); step() on its own, with no length known, keeps the lr
        decay = self.options["lr_decay"] if self.generations else "none"
        lr = lr_schedule(self.options["lr"], g, self.generations, decay, self.options["lr_floor"])
        for group in self.trainer.param_groups:
            group["lr"] = lr
        out = self.trainer.step()
        record = {"generation": out["generation"], "lr": lr, "mean_reward": out["mean_fitness"],
                  "best_reward": out["best_fitness"], "std_reward": out["std_fitness"]}  # fmt: skip
        every = self.options["eval_every"]
        if every and (out["generation"] % every == 0):
            record["eval_reward"] = self.evaluate()
        return record

    @torch.no_grad()
    def evaluate(self, data: Any = None, chunk: int = 32) -> float:
        """Mean greedy reward of the unperturbed model on ``data`` (default: the held-out prompts)."""
        data = self.eval_data if data is None else load_prompts(data)
        if data is None:
            raise ValueError("evaluate() needs eval_data")
        if is_model_reward(self.reward):
            score = self.reward
        else:
            score = RewardFitness(self.tokenizer, self.reward, self.options["max_new_tokens"])
        total = 0.0
        for first in range(0, len(data), chunk):
            rows = list(range(first, min(first + chunk, len(data))))
            self._set_batch(score, data.batch(rows))
            total += float(torch.as_tensor(score(self.model), dtype=torch.float64).mean()) * len(rows)
        return total / len(data)

    def resume(self, directory: str | Path | None = None) -> int:
        """Continue from the checkpoint in ``directory`` (default: ``output/checkpoint``); its generation."""
        directory = Path(directory) if directory is not None else self._path("checkpoint")
        generation = load_checkpoint(directory, self.trainer, self.targets.names, self.targets.params)
        metrics_file = Path(directory).parent / "metrics.jsonl"
        self.metrics = read_metrics(metrics_file, generation) if self.writes else []
        return generation

    def run(self, generations: int) -> dict[str, Any]:
        """Train until ``generations`` generations are done (counting resumed ones); write the results."""
        start, interrupted = time.perf_counter(), False
        self.generations = generations
        bar = tqdm(total=generations, initial=self.trainer.generation, disable=not (self.progress and self.writes),
                   desc="generations")  # fmt: skip
        try:
            while self.trainer.generation < generations:
                record = self.step()
                record["wall_s"] = time.perf_counter() - start
                self._log(record)
                bar.update(1)
                bar.set_postfix(reward=f"{record['mean_reward']:.4g}", **({"eval": f"{record['eval_reward']:.4g}"} if "eval_reward" in record else {}))  # fmt: skip
                every = self.options["save_every"]
                if every and self.trainer.generation % every == 0:
                    self.save_checkpoint()
        except KeyboardInterrupt:  # the trainer restored θ before the interrupt left step()
            interrupted = True
        finally:
            bar.close()
        if interrupted or self.options["save_every"]:
            self.save_checkpoint()
        return self.finish(time.perf_counter() - start, interrupted)

    def save_checkpoint(self) -> Path | None:
        if not self.writes:
            return None
        return save_checkpoint(
            self._path("checkpoint"), self.trainer, self.targets.names, self.targets.params
        )

    def finish(self, wall_s: float, interrupted: bool = False) -> dict[str, Any]:
        """``summary.json`` and the curve first, then the model and adapter (which can fail)."""
        summary: dict[str, Any] = dict(
            model=self.model_name, generations=self.trainer.generation, interrupted=interrupted, wall_s=wall_s,
            processes=distributed.world()[1],
            final_reward=self.metrics[-1]["mean_reward"] if self.metrics else None, perturbed=self.targets.names,
            trainer_memory=self.trainer.trainer_memory(), options=self.options,
        )  # fmt: skip
        seconds = getattr(self.fitness, "seconds", 0.0)
        if seconds:
            summary["tokens_per_s"] = getattr(self.fitness, "new_tokens", 0) / seconds
        if not self.writes:
            return summary
        self._path("summary.json").write_text(json.dumps(summary, indent=2, default=str))
        plot_learning_curve(self.metrics, self._path("learning_curve.png"))
        if interrupted:
            return summary
        if self.options["soft_prompt"]:  # a PEFT prompt-tuning adapter: the model's weights did not change
            save_soft_prompt(self.model, self._path("adapter"), base_model_name_or_path=self.model_name or "")
            return summary
        save_model(self.model, self.tokenizer, self._path("model"))
        if self.base:
            from .lora import export_lora

            errors = export_lora(self.model, self.base, self._path("adapter"), self.options["adapter_rank"],
                                 base_model_name_or_path=self.model_name)  # fmt: skip
            summary["adapter_max_relative_error"] = max(errors.values())
            self._path("summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary

    def _path(self, name: str) -> Path:
        assert self.output is not None  # only called when writing
        self.output.mkdir(parents=True, exist_ok=True)
        return self.output / name

    def _log(self, record: dict[str, Any]) -> None:
        self.metrics.append(record)
        if self.writes:
            with open(self._path("metrics.jsonl"), "a") as log:
                log.write(json.dumps(record) + "\n")


def tune(model: Any, tokenizer: Any, reward: Any, data: Any, *, generations: int = 100,
         resume: str | Path | bool = False, **options: Any) -> dict[str, Any]:  # fmt: skip
    """Build a [`Tuner`][eggroll_trainer.llm.tune.Tuner], resume if asked (``True``: from ``output``'s
    checkpoint), run ``generations`` generations; returns the summary (also ``output/summary.json``)."""
    tuner = Tuner(model, tokenizer, reward, data, **options)
    if resume:
        tuner.resume(None if resume is True else resume)
    return tuner.run(generations)
