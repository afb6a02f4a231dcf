"""Hugging Face helpers and LM fitness on a tiny random-init Llama built offline (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eggroll_trainer import EGGROLLTrainer, zscore
from eggroll_trainer.llm.fitness import PromptBaseline, PromptBatch, RewardFitness, population_generate
from eggroll_trainer.llm.lora import export_lora, lora_factors
from eggroll_trainer.llm.memory import generation_memory
from eggroll_trainer.llm.models import load_causal_lm, resolve_model, save_model, select_targets

CHARS = list("0123456789+= ?abcdefghijklmnopqrstuvwxyz\n.")


def build_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """A 2-layer LlamaForCausalLM (tied embeddings) and a character-level tokenizer, saved to ``directory``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0,
        eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


TOKENS = torch.tensor([[4, 5, 13, 6, 7, 14], [8, 9, 13, 10, 11, 14]])


# ------------------------------------------------------------------------------------- selection
def test_all_linear_excludes_embeddings_and_tied_head(tiny: Path) -> None:
    model, _ = load_causal_lm(str(tiny))
    targets = select_targets(model, "all-linear")
    suffixes = {n.split(".")[-1] for n in targets.names}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(targets.names) == 14
    embed = model.get_input_embeddings().weight
    assert all(p is not embed for p in targets.params)
    assert targets.numel == sum(p.numel() for p in targets.params)
    assert targets.param_names[0] == "model.layers.0.self_attn.q_proj.weight"


def test_suffix_list_regex_and_named_embeddings(tiny: Path) -> None:
    model, _ = load_causal_lm(str(tiny))
    qv = select_targets(model, ["q_proj", "v_proj"]).names
    assert qv == [f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")]
    assert select_targets(model, r"model\.layers\.1\.mlp\..*").names == [
        f"model.layers.1.mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")
    ]
    # Named explicitly, the embedding is selected; tied to the head, the shared weight is selected once.
    both = select_targets(model, ["embed_tokens", "lm_head"])
    assert both.names == ["model.embed_tokens"] and both.params[0] is model.lm_head.weight


@pytest.mark.parametrize("bad", [["nope"], "nope.*", "(", [], [""]])
def test_unmatched_target_modules_raise(tiny: Path, bad) -> None:
    model, _ = load_causal_lm(str(tiny))
    with pytest.raises(ValueError, match="target_modules"):
        select_targets(model, bad)


def test_resolve_model_finds_gguf_files(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_model(str(tmp_path)) == (str(tmp_path), "m.gguf")
    assert resolve_model(str(tmp_path / "m.gguf")) == (str(tmp_path), "m.gguf")
    assert resolve_model("some-org/some-model") == ("some-org/some-model", None)
    folder, name = resolve_model("smollm2")
    assert name.endswith(".gguf") and (Path(folder) / name).is_file()


# ------------------------------------------------------------------------------- save and export
def test_save_model_round_trip(tiny: Path, tmp_path: Path) -> None:
    model, tok = load_causal_lm(str(tiny))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.5)
    save_model(model, tok, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    again, _ = load_causal_lm(str(tmp_path / "out"))
    torch.testing.assert_close(logits(again, TOKENS), logits(model, TOKENS), rtol=0, atol=0)


def perturb_low_rank(targets, rank: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in targets.params:
            p.add_(
                0.05 * torch.randn(p.shape[0], rank, generator=g) @ torch.randn(rank, p.shape[1], generator=g)
            )


def test_lora_export_is_exact_at_full_rank(tiny: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    model, _ = load_causal_lm(str(tiny))
    targets = select_targets(model, "all-linear")
    base = targets.snapshot()
    perturb_low_rank(targets, rank=32)  # a full-rank ΔW for the 32-wide matrices
    errors = export_lora(model, base, tmp_path / "adapter", rank=64)  # ≥ min(m, n) of every matrix
    assert max(errors.values()) < 1e-5
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 64
    fresh, _ = load_causal_lm(str(tiny))
    adapted = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    torch.testing.assert_close(logits(adapted, TOKENS), logits(model, TOKENS), rtol=1e-4, atol=1e-4)


def test_lora_export_truncation_error_is_eckart_young(tiny: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    model, _ = load_causal_lm(str(tiny))
    targets = select_targets(model, ["q_proj", "down_proj"])
    base = targets.snapshot()
    perturb_low_rank(targets, rank=6, seed=1)
    errors = export_lora(model, base, tmp_path / "adapter", rank=2)
    fresh, _ = load_causal_lm(str(tiny))
    merged = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).merge_and_unload()
    for name, w0 in base.items():
        delta = model.get_submodule(name).weight.detach() - w0
        s = torch.linalg.svdvals(delta.double())
        expected = float(s[2:].pow(2).sum().sqrt())  # best rank-2 error (Eckart–Young)
        got = float((merged.get_submodule(name).weight.detach() - (w0 + delta)).double().norm())
        assert got == pytest.approx(expected, rel=1e-3)
        assert errors[name] == pytest.approx(expected / float(delta.norm()), rel=1e-3)


def test_lora_factors_pad_above_full_rank() -> None:
    delta = torch.randn(3, 5, dtype=torch.float64)
    b, a = lora_factors(delta, 8)
    assert b.shape == (3, 8) and a.shape == (8, 5)
    torch.testing.assert_close(b @ a, delta)
    with pytest.raises(ValueError, match="rank"):
        lora_factors(delta, 0)


# ------------------------------------------------------------------------ population generation
def reward_ones(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(c.count("1")) for c in completions]


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_batched_generation_equals_sequential(tiny: Path, chunk_size) -> None:
    """One generate of K·P member-major rows gives each member the completions it gets alone."""
    runs = {}
    for batched in (False, True):
        model, tok = load_causal_lm(str(tiny))
        seen: list[str] = []
        fitness = RewardFitness(tok, lambda p, c: (seen.extend(c), reward_ones(p, c))[1], max_new_tokens=4)  # noqa: B023
        fitness.prompts = ["12+34=", "5+6=", "77+8="]
        trainer = EGGROLLTrainer(
            select_targets(model).params, model, fitness, population_size=6, learning_rate=0.0, sigma=0.5,
            rank=1, freeze_nonlora=True, batched=batched, chunk_size=chunk_size, seed=3,
        )  # fmt: skip
        runs[batched] = (seen, trainer.step())
    assert runs[True][0] == runs[False][0]
    assert len(set(runs[True][0])) > 3  # members really differ
    assert runs[True][1] == runs[False][1]


class Recorder:
    """A reward that keeps the rows it was called with: prompts, completions and fields."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str], dict]] = []

    def __call__(self, prompts, completions, **fields):
        self.calls.append((list(prompts), list(completions), fields))
        return reward_ones(prompts, completions)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_grouped_layout_gives_each_group_its_own_prompts(tiny: Path, chunk_size) -> None:
    """group_size=G: member i answers the b prompts of group i // G, its fields aligned with its rows."""
    model, tok = load_causal_lm(str(tiny))
    reward = Recorder()
    fitness = RewardFitness(tok, reward, max_new_tokens=3, group_size=2)
    prompts = ["1+1=", "2+2=", "3+3=", "4+4=", "5+5=", "6+6="]  # N/G = 3 groups × b = 2 prompts
    fitness.batch = PromptBatch(prompts, {"answer": ["2", "4", "6", "8", "10", "12"]})
    trainer = EGGROLLTrainer(
        select_targets(model).params, model, fitness, population_size=6, learning_rate=0.0, sigma=0.5, rank=1,
        freeze_nonlora=True, batched=True, chunk_size=chunk_size, group_size=2, seed=3,
    )  # fmt: skip
    trainer.step()
    rows = [p for call in reward.calls for p in call[0]]
    answers = [a for call in reward.calls for a in call[2]["answer"]]
    group_of = [i // 2 for i in range(6)]
    assert rows == [prompts[2 * g + j] for g in group_of for j in range(2)]
    assert answers == [str(2 * (int(p[0]))) for p in rows]
    # outside a step (the unperturbed model) the model answers the whole batch
    reward.calls.clear()
    assert trainer.evaluate_fitness(model) >= 0 and reward.calls[0][0] == prompts


def test_grouped_layout_rows_equal_the_members_own_generations(tiny: Path) -> None:
    """The grouped rows of one generate are what each member answers alone on its group's prompts."""
    model, tok = load_causal_lm(str(tiny))
    reward = Recorder()
    fitness = RewardFitness(tok, reward, max_new_tokens=4, group_size=2)
    fitness.prompts = ["12+34=", "5+6=", "77+8=", "9+9="]  # 2 groups × b = 2
    trainer = EGGROLLTrainer(
        select_targets(model).params, model, fitness, population_size=4, learning_rate=0.0, sigma=0.5, rank=1,
        freeze_nonlora=True, batched=True, group_size=2, seed=3,
    )  # fmt: skip
    trainer.step()
    batched = reward.calls[0][1]  # (4 members × 2 rows)
    expected = []
    for member in range(4):  # the same noise, every member answering its group's two prompts (no groups)
        group = fitness.prompts[2 * (member // 2) : 2 * (member // 2) + 2]
        alone = Recorder()
        plain = RewardFitness(tok, alone, max_new_tokens=4)
        plain.prompts = group
        EGGROLLTrainer(
            select_targets(model).params, model, plain, population_size=4, learning_rate=0.0, sigma=0.5, rank=1,
            freeze_nonlora=True, batched=True, seed=3,
        ).step()  # fmt: skip
        expected += alone.calls[0][1][2 * member : 2 * member + 2]
    assert batched == expected
    assert len(set(batched)) > 2  # members really differ


def test_grouped_layout_bad_sizes_raise(tiny: Path) -> None:
    model, tok = load_causal_lm(str(tiny))
    fitness = RewardFitness(tok, reward_ones, max_new_tokens=2, group_size=2)
    fitness.prompts = ["1+1=", "2+2=", "3+3="]  # 2 groups cannot share 3 prompts
    trainer = EGGROLLTrainer(
        select_targets(model).params, model, fitness, population_size=4, sigma=0.1, rank=1,
        freeze_nonlora=True, batched=True, group_size=2, seed=3,
    )  # fmt: skip
    with pytest.raises(ValueError, match="multiple of 2 prompts"):
        trainer.step()
    with pytest.raises(ValueError, match="field 'answer' has 1 values for 2 prompts"):
        PromptBatch(["a", "b"], {"answer": ["1"]})
    with pytest.raises(ValueError, match="group_size"):
        RewardFitness(tok, reward_ones, max_new_tokens=2, group_size=-1)


def test_population_generate_shapes_and_beam_refusal(tiny: Path) -> None:
    model, tok = load_causal_lm(str(tiny))
    enc = tok(["12+34=", "5+6="], return_tensors="pt", padding=True)
    new = population_generate(
        model, enc["input_ids"], enc["attention_mask"], max_new_tokens=3, pad_token_id=0
    )
    assert new.shape == (1, 2, 3)  # outside population mode K = 1
    with pytest.raises(ValueError, match="beam"):
        population_generate(model, enc["input_ids"], max_new_tokens=3, num_beams=2)


def test_prompt_baseline_per_prompt_advantages() -> None:
    # prompt 0: everyone right (no signal); prompt 1: one member of four right.
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    shaped = PromptBaseline()(rewards)
    torch.testing.assert_close(shaped, zscore(torch.tensor([-1.0, 3.0, -1.0, -1.0], dtype=torch.float64)))
    # Mean-only centering is a constant shift per member: "none" equals the z-score of the mean reward.
    torch.testing.assert_close(PromptBaseline(scale="none")(rewards), zscore(rewards.mean(1)))


def test_prompt_baseline_gives_every_split_prompt_the_same_weight() -> None:
    """Per-prompt z-scores: prompt 0 split 1 of 4, prompt 1 split 3 of 4; both carry the same total weight,
    so the rare success counts most."""
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    shaped = PromptBaseline()(rewards)
    assert shaped[1] == shaped[2] and shaped[0] > shaped[1] > shaped[3]
    torch.testing.assert_close(shaped, -shaped.flip(0))  # the two prompts mirror each other


def test_prompt_baseline_rank_scale_averages_ties() -> None:
    rewards = torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=torch.float64)
    shaped = PromptBaseline(scale="rank")(rewards)
    assert shaped[0] == shaped[1] and shaped[2] == shaped[3] and shaped[0] > 0
    assert torch.all(PromptBaseline(scale="rank")(torch.ones(4, 3)) == 0)  # all tied: nothing moves


def test_prompt_baseline_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="scale"):
        PromptBaseline(scale="max")
    with pytest.raises(ValueError, match=r"\(N, P\)"):
        PromptBaseline()(torch.ones(2, 3, 4))


def test_generation_memory_matches_what_is_measured(tiny: Path) -> None:
    """Each estimate against the bytes the real objects hold: the KV cache of a forward over K·P rows, the
    model's tensors, and a trainer's θ₀, best member and Adam moments after a step."""
    model, _ = load_causal_lm(str(tiny))
    targets = select_targets(model)
    members, prompts, prompt_tokens, new_tokens = 8, 4, 10, 6
    mem = generation_memory(model, targets, members, 1, prompts, prompt_tokens, new_tokens, track_best=True)
    tokens = torch.randint(3, 40, (members * prompts, prompt_tokens + new_tokens))
    with torch.no_grad():
        cache = model(input_ids=tokens, use_cache=True).past_key_values
    held = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    assert mem["KV cache"] == sum(t.numel() * t.element_size() for t in held)
    unique = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    assert mem["weights"] == sum(t.numel() * t.element_size() for t in unique)

    trainer = EGGROLLTrainer(targets.params, model=model, fitness_fn=lambda m: float(m.lm_head.weight.sum()),
                             population_size=4, seed=0, optimizer="adam")  # fmt: skip
    trainer.step()
    held = trainer.trainer_memory()
    assert mem["trainer: best member"] == held["best_member"]
    assert mem["trainer: theta_0 (CPU)"] == held["initial_params"]
    adam = generation_memory(model, targets, members, 1, prompts, prompt_tokens, new_tokens, optimizer="adam")
    moments = [t for s in trainer.state.values() for key, t in s.items() if key in ("exp_avg", "exp_avg_sq")]
    assert adam["trainer: update-rule moments"] == sum(t.numel() * t.element_size() for t in moments)
    estimate = sum(p.numel() * p.element_size() for p in targets.params)  # ĝ: one value per trained weight
    assert mem["update: ES estimate"] == estimate
    assert mem["total (estimate)"] == sum(v for k, v in mem.items() if k != "total (estimate)")
    assert (
        generation_memory(model, targets, members, 1, prompts, prompt_tokens, new_tokens)[
            "trainer: best member"
        ]
        == 0
    )


# ---------------------------------------------------------------------------------- σ calibration
def test_calibrate_sigma_grows_with_sigma_and_leaves_weights(tiny: Path) -> None:
    from eggroll_trainer.llm.calibration import calibrate_sigma

    model, tok = load_causal_lm(str(tiny))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = calibrate_sigma(
        model, tok, ["12+34=", "5+6=", "77+8="], [1e-6, 0.05, 2.0], members=4, max_new_tokens=4
    )
    assert [r["sigma"] for r in rows] == [1e-6, 0.05, 2.0]
    assert rows[0]["differ"] == 0.0 and rows[0]["mean_abs_dlogp"] < 1e-3  # no visible change
    assert (
        rows[2]["differ"] > 0.5
        and rows[2]["mean_abs_dlogp"] > rows[1]["mean_abs_dlogp"] > rows[0]["mean_abs_dlogp"]
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="members"):
        calibrate_sigma(model, tok, ["1+1="], [0.1], members=3)
