"""Paired sampling: mirrored members share their sampling randomness, keyed by pair, whatever the chunking."""

from __future__ import annotations

import pytest
import torch
from test_hf import build_tiny_llama
from transformers import LogitsProcessorList

from eggroll_trainer import EGGROLLTrainer, current_population
from eggroll_trainer.llm.fitness import RewardFitness
from eggroll_trainer.llm.models import load_causal_lm, select_targets
from eggroll_trainer.llm.sampling import PairedSampling

PROMPTS = ["12+34=", "5+6="]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return load_causal_lm(str(build_tiny_llama(tmp_path_factory.mktemp("tiny"))))


def completions(tiny, sampler: PairedSampling | None, *, sigma: float, chunk_size: int | None = None) -> list:
    """``texts[member][prompt]`` of one generation of 8 members."""
    model, tok = tiny
    seen: dict[int, list[str]] = {}

    def reward(prompts, texts):
        info = current_population()
        for i in range(info.size):
            seen[info.start + i] = texts[i * len(PROMPTS) : (i + 1) * len(PROMPTS)]
        return [0.0] * len(texts)

    kwargs = {} if sampler is None else {"logits_processor": LogitsProcessorList([sampler])}
    fitness = RewardFitness(tok, reward, max_new_tokens=6, **kwargs)
    fitness.prompts = PROMPTS
    trainer = EGGROLLTrainer(
        select_targets(model).params, model, fitness, population_size=8, sigma=sigma, lr=0.0, batched=True,
        chunk_size=chunk_size, seed=1,
    )  # fmt: skip
    trainer.step()
    return [seen[m] for m in range(8)]


def test_mirrored_members_share_their_samples_and_pairs_differ(tiny) -> None:
    texts = completions(
        tiny, PairedSampling(temperature=3.0, seed=7), sigma=1e-7
    )  # members ≈ θ: noise decides
    assert all(texts[2 * k] == texts[2 * k + 1] for k in range(4))
    assert len({tuple(texts[2 * k]) for k in range(4)}) == 4
    greedy = completions(tiny, None, sigma=1e-7)
    assert texts[0] != greedy[0]  # it samples


def test_keyed_noise_does_not_depend_on_chunking_and_follows_the_seed(tiny) -> None:
    whole = completions(tiny, PairedSampling(temperature=3.0, seed=7), sigma=0.05)
    chunked = completions(tiny, PairedSampling(temperature=3.0, seed=7), sigma=0.05, chunk_size=3)
    assert whole == chunked  # chunks of 3 split pair (2, 3): the pair's key, not the call, decides
    other = completions(tiny, PairedSampling(temperature=3.0, seed=8), sigma=0.05)
    assert other != whole
    nucleus = completions(tiny, PairedSampling(temperature=3.0, top_p=1e-6, seed=7), sigma=0.05)
    assert nucleus == completions(tiny, None, sigma=0.05)  # a nucleus of one token is greedy decoding


def test_bad_sampling_settings() -> None:
    with pytest.raises(ValueError, match="Invalid temperature"):
        PairedSampling(0.0)
    with pytest.raises(ValueError, match="Invalid top_p"):
        PairedSampling(1.0, top_p=0.0)
    with pytest.raises(ValueError, match="needs population mode"):
        PairedSampling(1.0)(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 5))
