"""Population mode on real architectures: every member's batched score equals its sequential score.

Each model is evaluated twice for the same seed: member by member with θ + σEᵢ written into the weights
(sequential), and all members in one forward of K·b rows, member-major (batched). Scores and the updated
weights must agree to float tolerance — for a transformer LM, a CNN, Hugging Face GPT-2 and Llama, an MLP
fed flattened batches and a sequence-first transformer.
"""

import copy

import pytest
import torch
from torch import nn

from eggroll_trainer import EGGROLLTrainer, VanillaESTrainer, current_population

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, ROWS = 11, 6, 3  # vocabulary, sequence length, rows (sequences/images) per member


class TinyLM(nn.Module):
    """Embedding + learned position table (an nn.Parameter used directly) → TransformerEncoder → head."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(SEQ, 16) * 0.1)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) or (T, B) -> logits
        pos = self.pos if self.batch_first else self.pos.unsqueeze(1)
        return self.head(self.encoder(self.embed(tokens) + pos))


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)
        self.head = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) -> (B, 3)
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(h.flatten(1))


class FlatMLP(nn.Module):
    """Takes (K·b, 4) rows like every Hugging Face model: members are flattened into the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=16, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def llama():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=SEQ,
                                      tie_word_embeddings=True)  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def token_data():
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, VOCAB, (ROWS, SEQ), generator=g)  # (b, T)


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy per row: (B, T, V), (B, T) -> (B,)."""
    ce = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return ce.mean(dim=1)


def score(arch: str, model: nn.Module, members: int) -> torch.Tensor:
    """Scores (members,) of `members` members whose rows are stacked member-major (members = 1: sequential),
    with the data on the model's device."""
    device = next(model.parameters()).device
    if arch == "cnn":
        g = torch.Generator().manual_seed(2)
        x = torch.randn(ROWS, 1, 8, 8, generator=g).to(device)
        target = (torch.arange(ROWS) % 3).to(device)
        logits = model(x.repeat(members, 1, 1, 1))  # (K·b, 3)
        loss = nn.functional.cross_entropy(logits, target.repeat(members), reduction="none")
    elif arch == "mlp":
        g = torch.Generator().manual_seed(3)
        x = torch.randn(ROWS, 4, generator=g).to(device)
        loss = ((model(x.repeat(members, 1)) - x[:, :2].sin().repeat(members, 1)) ** 2).mean(dim=1)
    else:
        tokens = token_data().repeat(members, 1).to(device)  # (K·b, T)
        if arch == "lm_seq_first":
            logits = model(tokens.T).transpose(0, 1)  # the model is sequence-first: (T, K·b)
        elif arch in ("gpt2", "llama"):
            logits = model(input_ids=tokens).logits
        else:
            logits = model(tokens)
        loss = lm_loss(logits, tokens)
    return -loss.view(members, ROWS).mean(dim=1)


MODELS = {"lm": TinyLM, "lm_seq_first": lambda: TinyLM(batch_first=False), "cnn": TinyCNN, "mlp": FlatMLP,
          "gpt2": gpt2, "llama": llama}  # fmt: skip


def build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[arch]().eval()


def twin_runs(arch, cls=EGGROLLTrainer, generations=2, device="cpu", **options):
    model = build(arch).to(device)
    seq_model, bat_model = copy.deepcopy(model), copy.deepcopy(model)
    seq_scores, bat_scores = [], []

    def sequential(m):
        value = float(score(arch, m, 1)[0])
        seq_scores.append(value)
        return value

    def batched(m):
        values = score(arch, m, current_population().size)
        bat_scores.append(values)
        return values

    base = dict(population_size=8, learning_rate=0.002, sigma=0.05, seed=3)  # steps of ~0.01 per weight
    if arch == "lm_seq_first":
        base["batch_dim"] = 1
    base.update(options)
    seq = cls(seq_model.parameters(), model=seq_model, fitness_fn=sequential, **base)
    bat = cls(bat_model.parameters(), model=bat_model, fitness_fn=batched, batched=True, **base)
    for _ in range(generations):
        seq.step()
        bat.step()
    return (
        torch.tensor(seq_scores, dtype=torch.float64),
        torch.cat(bat_scores).double().cpu(),
        seq_model,
        bat_model,
    )


OPTIONS = [
    dict(rank=1),
    dict(rank=3),
    dict(rank=2, antithetic=False),
    dict(rank=1, chunk_size=3),  # chunks that split antithetic pairs
]


@pytest.mark.parametrize("options", OPTIONS, ids=["r1", "r3", "r2-no-antithetic", "r1-chunk3"])
@pytest.mark.parametrize("arch", list(MODELS))
def test_batched_scores_and_update_equal_sequential(arch, options, device):
    seq_scores, bat_scores, seq_model, bat_model = twin_runs(arch, device=device, **options)
    torch.testing.assert_close(bat_scores, seq_scores, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(seq_model.named_parameters(), bat_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("arch", ["lm", "cnn"])
def test_full_rank_noise_matches_too(arch, device):
    seq_scores, bat_scores, _, _ = twin_runs(arch, cls=VanillaESTrainer, generations=1, device=device)
    torch.testing.assert_close(bat_scores, seq_scores, rtol=1e-4, atol=1e-5)


def test_padding_row_is_never_perturbed_nor_updated():
    model = build("lm")
    padding = model.embed.weight[0].clone()
    trainer = EGGROLLTrainer(model.parameters(), model=model, population_size=8, sigma=0.1, seed=0, batched=True,
                             fitness_fn=lambda m: score("lm", m, current_population().size))  # fmt: skip
    trainer.train(2, verbose=False)
    assert torch.equal(model.embed.weight[0], padding)
    assert not torch.equal(model.embed.weight[1:], build("lm").embed.weight[1:])


def test_tied_embedding_and_head_share_one_noise(device):
    model = llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    seq_scores, bat_scores, _, _ = twin_runs("llama", rank=2, device=device)
    torch.testing.assert_close(bat_scores, seq_scores, rtol=1e-4, atol=1e-5)


def test_wrong_batch_size_names_the_module_and_shape():
    model = build("lm")
    trainer = EGGROLLTrainer(model.parameters(), model=model, population_size=8, seed=0, batched=True,
                             fitness_fn=lambda m: m(token_data()).mean(dim=(1, 2)))  # 3 rows for 8 members  # fmt: skip
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"TinyLM.*\(3, 6\)"):
        trainer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_model_is_restored_after_an_exception_inside_the_forward():
    model = build("gpt2")

    def broken(m):
        m(input_ids=token_data().repeat(current_population().size, 1))
        raise KeyError("boom")

    trainer = EGGROLLTrainer(model.parameters(), model=model, population_size=4, seed=0, batched=True,
                             fitness_fn=broken)  # fmt: skip
    with pytest.raises(KeyError):
        trainer.step()
    assert current_population() is None
    assert not torch.overrides._is_torch_function_mode_enabled()
    assert not any(m._forward_pre_hooks for m in model.modules())
    out = model(input_ids=token_data()).logits  # an ordinary model again: 3 rows in, 3 rows out
    assert out.shape == (ROWS, SEQ, VOCAB)


@pytest.mark.parametrize("arch", ["lm", "cnn", "gpt2", "llama"])
def test_short_population_run_lowers_the_loss(arch):
    model = build(arch)
    trainer = EGGROLLTrainer(model.parameters(), model=model, population_size=32, learning_rate=0.02, sigma=0.02,
                             rank=1, seed=0, batched=True, optimizer="adam",
                             fitness_fn=lambda m: score(arch, m, current_population().size))  # fmt: skip
    before = trainer.evaluate_fitness(model)
    trainer.train(15, verbose=False)
    assert trainer.evaluate_fitness(model) > before


def test_generate_with_kv_cache_equals_member_by_member():
    """K members × P prompts as K·P rows in one `generate` (greedy, KV cache): each member's completions are
    the ones it generates alone with θ + σEᵢ written into the weights."""
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    prompts = torch.randint(3, 50, (2, 5), generator=torch.Generator().manual_seed(0))  # P = 2 prompts
    completions = {"sequential": [], "batched": []}

    def generate(m, k, key):
        out = m.generate(input_ids=prompts.repeat(k, 1), attention_mask=torch.ones(2 * k, 5, dtype=torch.long),
                         max_new_tokens=6, do_sample=False, pad_token_id=0)[:, 5:]  # fmt: skip
        completions[key].append(out)
        return out.float().view(k, -1).mean(dim=1)

    for batched in (False, True):
        m = copy.deepcopy(model)
        fitness = (lambda m: generate(m, current_population().size, "batched")) if batched else (
            lambda m: float(generate(m, 1, "sequential")[0]))  # fmt: skip
        trainer = EGGROLLTrainer(m.parameters(), model=m, fitness_fn=fitness, population_size=4, sigma=0.5,
                                 seed=0, batched=batched, freeze_nonlora=True)  # fmt: skip
        trainer.step()
    sequential = torch.cat(completions["sequential"])
    assert sequential.unique().numel() > 2  # the members do generate different text
    assert torch.equal(completions["batched"][0], sequential)
