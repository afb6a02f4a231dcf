"""Every reward form a user brings (``as_reward``), and the model rewards on the tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_hf import build_tiny_llama

from eggroll_trainer import EGGROLLTrainer
from eggroll_trainer.llm.fitness import PromptBatch, RewardFitness
from eggroll_trainer.llm.models import load_causal_lm, select_targets
from eggroll_trainer.llm.rewards import (
    BatchReward,
    CustomReward,
    MultiReward,
    PerplexityReward,
    TextReward,
    as_reward,
    is_model_reward,
)

PROMPTS, COMPLETIONS = ["1+1=", "2+2="], [" 2", " 5"]


def test_function_forms() -> None:
    def with_fields(prompts, completions, answer):
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    def without_fields(prompts, completions):
        return [float(len(c)) for c in completions]

    fields = {"answer": ["2", "4"], "unused": [0, 1]}
    assert as_reward(with_fields)(PROMPTS, COMPLETIONS, **fields) == [1.0, 0.0]  # only the field it names
    assert as_reward(without_fields)(PROMPTS, COMPLETIONS, **fields) == [2.0, 2.0]  # fields dropped
    assert as_reward(len)(PROMPTS, COMPLETIONS) == [2.0, 2.0]  # one parameter: a per-text score
    text = as_reward(lambda text: float("5" in text))
    assert isinstance(text, TextReward) and text(PROMPTS, COMPLETIONS) == [0.0, 1.0]


def test_lambda_strings_are_python() -> None:
    assert as_reward("lambda text: 1.0 if '2' in text else 0.0")(PROMPTS, COMPLETIONS) == [1.0, 0.0]
    batch = as_reward(
        "lambda prompts, completions, answer: [float(c.strip() == a) for c, a in zip(completions, answer)]"
    )
    assert batch(PROMPTS, COMPLETIONS, answer=["2", "5"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="not a Python lambda"):
        as_reward("lambda text: (")


def test_reward_files(tmp_path: Path) -> None:
    forms = {
        "batch.py": "def reward(prompts, completions, **fields):\n    return [1.0] * len(completions)\n",
        "score.py": "def score(text):\n    return float(len(text))\n",
        "model.py": "def reward_fn(model, inputs):\n    return [0.0]\n",
        "none.py": "x = 1\n",
    }
    for name, source in forms.items():
        (tmp_path / name).write_text(source)
    assert as_reward(str(tmp_path / "batch.py"))(PROMPTS, COMPLETIONS) == [1.0, 1.0]
    assert as_reward(tmp_path / "score.py")(PROMPTS, COMPLETIONS) == [2.0, 2.0]
    assert isinstance(as_reward(str(tmp_path / "model.py")), CustomReward)
    with pytest.raises(ValueError, match="defines no function"):
        as_reward(str(tmp_path / "none.py"))
    with pytest.raises(ValueError, match="cannot load"):
        as_reward(str(tmp_path / "missing.py"))
    with pytest.raises(ValueError, match="Invalid reward"):
        as_reward("rouge")


def test_multi_reward_weights_and_kinds() -> None:
    multi = MultiReward([(lambda t: float("2" in t), 2.0), ("lambda p, c: [0.5] * len(c)", -1.0)])
    assert multi(PROMPTS, COMPLETIONS) == [1.5, -0.5]
    assert not is_model_reward(multi) and is_model_reward(MultiReward([("perplexity", 1.0)]))
    with pytest.raises(ValueError, match="all completion rewards or all model rewards"):
        MultiReward([("perplexity", 1.0), (len, 1.0)])
    with pytest.raises(ValueError, match="Invalid MultiReward"):
        MultiReward([len])
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        BatchReward(lambda p, c: [0.0])(PROMPTS, COMPLETIONS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return load_causal_lm(str(build_tiny_llama(tmp_path_factory.mktemp("tiny"))))


def test_reward_fitness_passes_fields_aligned_to_rows(tiny) -> None:
    model, tok = tiny
    seen = {}

    def reward(prompts, completions, answer):
        seen.update(prompts=prompts, answer=answer)
        return [0.0] * len(completions)

    fitness = RewardFitness(tok, as_reward(reward), max_new_tokens=2)
    fitness.batch = PromptBatch(["1+1=", "2+2="], {"answer": ["2", "4"]})
    trainer = EGGROLLTrainer(
        select_targets(model).params, model, fitness, population_size=4, sigma=0.1, batched=True, seed=0
    )
    trainer.step()
    assert seen["prompts"] == ["1+1=", "2+2="] * 4  # K·b rows, member-major
    assert seen["answer"] == ["2", "4"] * 4


def test_perplexity_is_the_negative_cross_entropy(tiny) -> None:
    model, tok = tiny
    reward = PerplexityReward()
    reward.tokenizer, reward.batch = tok, PromptBatch(["12+34=46", "5+6=11."])
    scores = reward(model)  # (1, 2): outside population mode K = 1
    for j, text in enumerate(reward.batch.prompts):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss
        assert scores[0, j].item() == pytest.approx(-loss.item(), abs=1e-5)
    answer = PerplexityReward(field="answer")
    answer.tokenizer, answer.batch = tok, PromptBatch(["12+34=", "5+6="], {"answer": ["46", "11."]})
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=tok("5+6=11.", return_tensors="pt")["input_ids"]).logits, -1)
    ids = tok("5+6=11.", return_tensors="pt")["input_ids"][0]
    want = sum(full[0, t - 1, ids[t]].item() for t in range(4, 7)) / 3  # "11." after "5+6="
    assert answer(model)[0, 1].item() == pytest.approx(want, abs=1e-5)
    missing = PerplexityReward("target")
    missing.tokenizer, missing.batch = tok, answer.batch
    with pytest.raises(ValueError, match="no field 'target'"):
        missing(model)


@pytest.mark.parametrize("make", [lambda: PerplexityReward("answer"), lambda: CustomReward(_mean_logit)])
def test_model_rewards_score_members_as_sequential_evaluation(tiny, make) -> None:
    """Member i's score in one population forward equals its score with θ + σEᵢ written into the weights."""
    model, tok = tiny
    scores = {}
    for batched in (True, False):
        reward = make()
        reward.tokenizer, reward.batch = tok, PromptBatch(["12+34=", "5+6="], {"answer": ["46", "11"]})
        seen = []

        def fitness(m, reward=reward, seen=seen):
            out = torch.as_tensor(reward(m))
            seen.append(out)
            return out.reshape(out.shape[0], -1).mean(dim=1)

        trainer = EGGROLLTrainer(
            select_targets(model).params, model, fitness, population_size=4, sigma=0.05, lr=0.0,
            batched=batched, seed=3,
        )  # fmt: skip
        trainer.step()
        scores[batched] = torch.cat(seen)
    torch.testing.assert_close(scores[True], scores[False], rtol=1e-5, atol=1e-5)
    assert scores[True].unique(dim=0).shape[0] == 4  # the members differ


def _mean_logit(model, inputs):
    from eggroll_trainer.llm.fitness import members_now

    k = members_now()
    out = model(
        input_ids=inputs["input_ids"].repeat(k, 1), attention_mask=inputs["attention_mask"].repeat(k, 1)
    )
    return out.logits[:, -1].mean(dim=-1).view(k, -1)  # (K, b)


def test_es_sft_on_perplexity_raises_the_likelihood_of_the_answers(tiny) -> None:
    """ES supervised fine-tuning: a Tuner on PerplexityReward (one prefill, no generation) learns."""
    import copy

    from eggroll_trainer.llm import Tuner

    model, tok = copy.deepcopy(tiny[0]), tiny[1]  # trained here: the module's fixture stays as built
    data = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    sigma = 0.02
    tuner = Tuner(model, tok, PerplexityReward("answer"), data, population=16, sigma=sigma, lr=0.1 * sigma * sigma * 4,
                  prompts_per_step=4, seed=0)  # fmt: skip  # lr: each weight moves ~0.1σ a step
    before = tuner.evaluate(data)
    for _ in range(20):
        tuner.step()
    after = tuner.evaluate(data)
    assert after > before + 0.05, (before, after)
