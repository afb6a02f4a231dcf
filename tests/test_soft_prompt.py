"""Prompt tuning (SoftPromptLM): the prefix's layout, population mode, saving as a PEFT adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_hf import build_tiny_llama

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.llm import RewardFitness, load_causal_lm
from eggroll_trainer.llm.soft_prompt import SoftPromptLM, save_soft_prompt

PROMPTS = ["12+34=", "7+8=", "55+1="]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def sensitive_llama(directory: Path) -> tuple[torch.nn.Module, object]:
    """The tiny Llama with its matrices redrawn at std 0.3: at the default init it answers "====" whatever the
    prefix, so no test could see the prefix's effect."""
    model, tokenizer = load_causal_lm(str(directory))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    return model, tokenizer


def encode(tokenizer, prompts=PROMPTS) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_prefix_goes_in_front_of_the_padded_prompt(tiny: Path) -> None:
    model, tokenizer = load_causal_lm(str(tiny))
    wrapper = SoftPromptLM(model, 4, seed=1)
    ids, mask = encode(tokenizer)
    embeds, full_mask = wrapper.prefixed(ids, mask)
    assert embeds.shape == (3, 4 + ids.shape[1], model.config.hidden_size)  # (R, n + T, d)
    assert torch.equal(embeds[:, :4], wrapper.prompt.detach().expand(3, 4, -1))
    assert torch.equal(full_mask, torch.cat([torch.ones(3, 4, dtype=mask.dtype), mask], dim=1))
    # the logits of the prompt's positions, the prefix's cut off; position_ids shift by n
    out = wrapper(input_ids=ids, attention_mask=mask)
    assert out.logits.shape == (3, ids.shape[1], model.config.vocab_size)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: positions count real tokens
    shifted = wrapper(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    full_positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)  # prefix 0 … n−1, then n + positions
    direct = model(inputs_embeds=embeds, attention_mask=full_mask, position_ids=full_positions).logits
    real = mask.bool()  # (a pad's own logits are noise: compare the real tokens)
    torch.testing.assert_close(shifted[real], direct[:, 4:][real])
    unpadded = mask.all(dim=1)  # without position_ids the model counts the pads too: equal on full rows
    torch.testing.assert_close(out.logits[unpadded], shifted[unpadded])


def test_generate_returns_the_prompt_then_the_new_tokens(tiny: Path) -> None:
    model, tokenizer = load_causal_lm(str(tiny))
    wrapper = SoftPromptLM(model, 3, init="1+1=2", tokenizer=tokenizer)
    assert wrapper.prompt.shape == (3, model.config.hidden_size)  # "1+1" of the text, cut to n = 3
    ids, mask = encode(tokenizer)
    out = wrapper.generate(ids, mask, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (3, ids.shape[1] + 4) and torch.equal(out[:, : ids.shape[1]], ids)
    # greedy decoding by hand: the forward behind the prefix, one token at a time, no cache
    seq, seq_mask = ids, mask
    for _ in range(4):
        positions = (seq_mask.cumsum(dim=1) - 1).clamp(min=0)  # as generate counts them
        logits = wrapper(input_ids=seq, attention_mask=seq_mask, position_ids=positions).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        seq, seq_mask = torch.cat([seq, nxt], 1), torch.cat([seq_mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out, seq)


def test_the_cached_prefix_decodes_as_the_whole_sequence(tiny: Path) -> None:
    """cache_prefix: each member's prefix computed once and its KV cache repeated for the member's rows gives
    the tokens of decoding [prefix | prompt] row by row, with and without left padding."""
    model, tokenizer = sensitive_llama(tiny)
    for prompts in (PROMPTS, ["12+34=", "70+18=", "55+10="]):
        ids, mask = encode(tokenizer, prompts)
        out = {}
        for cache_prefix in (True, False):
            wrapper = SoftPromptLM(model, 4, seed=2, cache_prefix=cache_prefix)
            out[cache_prefix] = wrapper.generate(ids, mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(out[True], out[False])
        assert len({tuple(row) for row in out[True][:, -6:].tolist()}) > 1  # (rows that differ: a real check)


@pytest.mark.parametrize("cache_prefix", [True, False])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_population_mode_matches_one_member_at_a_time(tiny: Path, chunk_size, cache_prefix) -> None:
    """One batched generate of all members gives each member the completions it gets alone."""
    runs = {}
    for batched in (False, True):
        model, tokenizer = sensitive_llama(tiny)
        wrapper = SoftPromptLM(model, 4, seed=0, cache_prefix=cache_prefix)
        weights = {name: p.detach().clone() for name, p in model.named_parameters()}
        seen: list[str] = []
        fitness = RewardFitness(tokenizer, lambda p, c: (seen.extend(c), [float(len(x)) for x in c])[1], 4)  # noqa: B023
        fitness.prompts = PROMPTS
        trainer = EGGROLLTrainer(
            [wrapper.prompt], wrapper, fitness, population_size=6, learning_rate=0.0, sigma=0.5, rank=2,
            freeze_nonlora=True, batched=batched, chunk_size=chunk_size, seed=3, track_best=False,
        )  # fmt: skip
        runs[batched] = (seen, trainer.step())
        for name, p in model.named_parameters():  # the model's own weights are never touched
            assert torch.equal(p, weights[name]), name
    assert runs[True][0] == runs[False][0]
    assert len(set(runs[True][0])) > 3  # the prefix's noise reached the completions
    assert runs[True][1] == runs[False][1]


def test_a_step_moves_only_the_prompt(tiny: Path) -> None:
    model, tokenizer = sensitive_llama(tiny)
    wrapper = SoftPromptLM(model, 4, seed=0)
    before = wrapper.prompt.detach().clone()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    fitness = RewardFitness(
        tokenizer, lambda prompts, completions: [float(len(c.strip())) for c in completions], 3
    )
    fitness.prompts = PROMPTS
    trainer = EGGROLLTrainer(
        [wrapper.prompt], wrapper, fitness, population_size=8, learning_rate=0.1, sigma=0.5, rank=1,
        freeze_nonlora=True, seed=0, track_best=False,
    )  # fmt: skip
    trainer.step()
    assert not torch.equal(wrapper.prompt, before) and torch.isfinite(wrapper.prompt).all()
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name


def test_saved_adapter_answers_as_the_wrapper(tiny: Path, tmp_path: Path) -> None:
    """``save_soft_prompt`` writes a PEFT prompt-tuning adapter; PEFT's model generates the same tokens (on
    unpadded prompts: PEFT ignores position_ids, so its positions count a left pad as a token)."""
    from peft import PeftModel

    model, tokenizer = sensitive_llama(tiny)
    wrapper = SoftPromptLM(model, 4, seed=2)
    with torch.no_grad():
        wrapper.prompt.add_(0.3 * torch.randn_like(wrapper.prompt))
    ids, mask = encode(tokenizer, ["12+34=", "70+18=", "55+10="])  # unpadded: PEFT ignores position_ids
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    ours = wrapper.generate(ids, mask, **kwargs)
    save_soft_prompt(wrapper, tmp_path / "adapter")

    fresh, _ = sensitive_llama(tiny)
    peft_model = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    # use_cache=False: PEFT 0.21.2's cached prompt-tuning generate drifts after the first token with
    # transformers 5.25 (its own uncached decoding agrees with ours, token for token)
    theirs = peft_model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    assert torch.equal(theirs[:, -5:], ours[:, -5:])
    with torch.no_grad():  # labels: the prefix's positions are ignored (-100), as PEFT does it
        loss = wrapper(input_ids=ids, attention_mask=mask, labels=ids).loss
        torch.testing.assert_close(loss, peft_model(input_ids=ids, attention_mask=mask, labels=ids).loss)


def test_bad_arguments_are_named(tiny: Path) -> None:
    model, tokenizer = load_causal_lm(str(tiny))
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        SoftPromptLM(model, 0)
    with pytest.raises(ValueError, match="tokenizer"):
        SoftPromptLM(model, 2, init="some text")


def test_tuner_takes_the_recipe_of_what_it_evolves(tiny: Path) -> None:
    """σ and lr left out: the soft prompt's recipe with soft_prompt=N, the weights' without; given: as given."""
    from eggroll_trainer.llm import Tuner
    from eggroll_trainer.llm.soft_prompt import SOFT_PROMPT_LR, SOFT_PROMPT_SIGMA, WEIGHTS_LR, WEIGHTS_SIGMA

    model, tokenizer = load_causal_lm(str(tiny))

    def options(**kw):
        tuner = Tuner(model, tokenizer, lambda p, c: [0.0] * len(c), PROMPTS, prompts_per_step=2, **kw)
        return tuner.options["sigma"], tuner.options["lr"]

    assert options(soft_prompt=2) == (SOFT_PROMPT_SIGMA, SOFT_PROMPT_LR)
    assert options() == (WEIGHTS_SIGMA, WEIGHTS_LR)
    assert options(soft_prompt=2, sigma=0.3, lr=0.2) == (0.3, 0.2)
