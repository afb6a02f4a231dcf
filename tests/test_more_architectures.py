"""The batched ≡ sequential oracle on the models of issue 24: every member's population-mode score equals its
score with θ + σEᵢ written into the weights, and both runs end on the same weights.

Models: an embedding with ``padding_idx`` under full-rank noise, ``nn.MultiheadAttention`` with kdim/vdim and
biases, a factorised ``U @ V`` weight, a weight-normed layer, a sequence-first model that pools, a
channels-last CNN and a tiny Mixtral (3-D expert weights).
"""

import pytest
import torch
from conftest import twin_runs as batched_and_sequential
from torch import nn

from eggroll_trainer import EGGROLLTrainer, VanillaESTrainer, current_population

ROWS = 3  # rows per member


def twin_runs(build, score, cls=EGGROLLTrainer, generations=2, **options):
    """Sequential and batched runs of ``build()``; ``score(model, k)`` gives (k,) scores for k members stacked
    member-major (k = 1: sequential)."""
    torch.manual_seed(0)
    base = dict(population_size=8, learning_rate=0.002, sigma=0.05, seed=3) | options
    return batched_and_sequential(
        cls, build(), lambda m: float(score(m, 1)[0]), lambda m: score(m, current_population().size), generations,
        **base,
    )  # fmt: skip


def assert_twins(runs):
    seq_scores, bat_scores, seq_params, bat_params = runs
    torch.testing.assert_close(bat_scores, seq_scores, rtol=1e-4, atol=1e-5)
    for a, b in zip(seq_params, bat_params):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def data(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- padded embedding, full rank
class PaddedBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3, padding_idx=2)
        self.head = nn.Linear(3, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B,)
        return self.head(self.embed(ids).mean(dim=1)).squeeze(-1)


PADDED_IDS = torch.tensor([[0, 2, 1, 2], [3, 4, 2, 2], [2, 2, 2, 1]])  # (b, T), padding everywhere


def padded_score(model, k):
    return -(model(PADDED_IDS.repeat(k, 1)) - 1.0).pow(2).view(k, ROWS).mean(dim=1)


@pytest.mark.parametrize("batched", [False, True], ids=["sequential", "batched"])
def test_full_rank_noise_never_moves_the_padding_row(batched):
    torch.manual_seed(0)
    model = PaddedBag()
    start = model.embed.weight.detach().clone()
    padding = start[2].clone()
    seen = []

    def fitness(m):
        seen.append(m.embed.weight[2].clone())  # sequential: the member's weights
        return padded_score(m, current_population().size) if batched else float(padded_score(m, 1)[0])

    trainer = VanillaESTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=8,
                               learning_rate=0.1, sigma=0.1, seed=0, batched=batched)  # fmt: skip
    trainer.train(2, verbose=False)
    assert all(torch.equal(row, padding) for row in seen)
    assert torch.equal(model.embed.weight[2], padding)
    assert not torch.equal(model.embed.weight[[0, 1, 3, 4]], start[[0, 1, 3, 4]])  # the other rows did move


def test_padded_embedding_full_rank_batched_equals_sequential():
    assert_twins(twin_runs(PaddedBag, padded_score, cls=VanillaESTrainer))


# --------------------------------------------------------------------------- MultiheadAttention kdim/vdim
class CrossAttention(nn.Module):
    """Separate q/k/v projection weights (kdim, vdim ≠ embed_dim) and a packed (3E,) bias."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, kdim=5, vdim=6, bias=True, batch_first=batch_first)
        self.head = nn.Linear(8, 1)

    def forward(self, q, k, v):
        return self.head(self.attn(q, k, v, need_weights=False)[0])


def attention_score(model, k):
    q, key, value = data(ROWS, 4, 8, seed=1), data(ROWS, 7, 5, seed=2), data(ROWS, 7, 6, seed=3)
    out = model(q.repeat(k, 1, 1), key.repeat(k, 1, 1), value.repeat(k, 1, 1))  # (K·b, L, 1)
    return -out.pow(2).view(k, -1).mean(dim=1)


@pytest.mark.parametrize("rank", [1, 2])
def test_multihead_attention_with_kdim_vdim_and_bias(rank):
    assert_twins(twin_runs(CrossAttention, attention_score, rank=rank))


# --------------------------------------------------------------------------- ops on two perturbed parameters
class Factorised(nn.Module):
    """y = x (U V)ᵀ: the weight is a product of two perturbed parameters (a factorised layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(6, 2) * 0.5)
        self.v = nn.Parameter(torch.randn(2, 4) * 0.5)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        return self.head(torch.tanh(nn.functional.linear(x, self.u @ self.v)))


class WeightNormed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.utils.parametrizations.weight_norm(nn.Linear(4, 6))
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(x)))


def regression_score(model, k):
    x = data(ROWS, 4)
    return -(model(x.repeat(k, 1)).squeeze(-1) - x[:, 0].sin().repeat(k)).pow(2).view(k, ROWS).mean(dim=1)


@pytest.mark.parametrize("build", [Factorised, WeightNormed], ids=["u_at_v", "weight_norm"])
@pytest.mark.parametrize("cls", [EGGROLLTrainer, VanillaESTrainer])
def test_an_op_on_two_perturbed_parameters_perturbs_both(build, cls):
    assert_twins(twin_runs(build, regression_score, cls=cls))


def test_derived_records_do_not_pile_up_over_many_forwards():
    """A generate()-like loop: 50 forwards in one population-mode call, each deriving U @ V afresh; the records
    of the dropped products go with them."""
    torch.manual_seed(0)
    model = Factorised()
    sizes = []

    def fitness(m):
        (mode,) = [md for md in torch.overrides._get_current_function_mode_stack() if hasattr(md, "derived")]
        for _ in range(50):
            scores = regression_score(m, current_population().size)
            sizes.append(len(mode.derived))
        return scores

    EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=4, seed=0,
                   batched=True).step()  # fmt: skip
    assert max(sizes) <= 2


# --------------------------------------------------------------------------- sequence-first, pooled
class SequenceFirstClassifier(nn.Module):
    """(T, B) tokens → sequence-first encoder (T, B, d) → mean over T → (B, d) → head: a batch-first tail."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=False)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):  # (T, B) -> (B, 3)
        return self.head(self.encoder(self.embed(tokens)).mean(dim=0))


def classifier_score(model, k):
    tokens = torch.randint(0, 11, (ROWS, 5), generator=torch.Generator().manual_seed(4))  # (b, T)
    logits = model(tokens.repeat(k, 1).T)  # (K·b, 3)
    target = torch.arange(ROWS).repeat(k) % 3
    return -nn.functional.cross_entropy(logits, target, reduction="none").view(k, ROWS).mean(dim=1)


def test_sequence_first_model_that_pools():
    assert_twins(twin_runs(lambda: SequenceFirstClassifier().eval(), classifier_score, batch_dim=1, rank=2))


# --------------------------------------------------------------------------- channels-last CNN
class ChannelsLastCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):  # (B, 2, 6, 6) -> (B, 2)
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def channels_last():
    model = ChannelsLastCNN().to(memory_format=torch.channels_last)
    assert not model.conv.weight.is_contiguous()
    return model


def image_score(model, k):
    x = data(ROWS, 2, 6, 6).repeat(k, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    return -(model(x) - 0.5).pow(2).view(k, -1).mean(dim=1)


def test_channels_last_cnn():
    """Sequential mode writes low-rank noise into a kernel no (out, in·k·k) view exists of."""
    assert_twins(twin_runs(channels_last, image_score, rank=2))


# --------------------------------------------------------------------------- mixture of experts
def tiny_mixtral(implementation="grouped_mm"):
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=3,
                                        num_experts_per_tok=2, max_position_embeddings=16)  # fmt: skip
    model = transformers.MixtralForCausalLM(config).eval()
    model.config._experts_implementation = implementation
    return model


def lm_score(model, k):
    tokens = torch.randint(0, 11, (ROWS, 6), generator=torch.Generator().manual_seed(5)).repeat(
        k, 1
    )  # (K·b, T)
    logits = model(input_ids=tokens).logits
    ce = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return -ce.mean(dim=1).view(k, ROWS).mean(dim=1)


def test_each_expert_gets_its_own_low_rank_noise():
    model = tiny_mixtral()
    stack = model.model.layers[0].mlp.experts.gate_up_proj  # (E, 2·inter, d)
    theta = stack.detach().clone()
    members = []

    def fitness(m):
        members.append(stack.detach() - theta)
        return 0.0

    EGGROLLTrainer(model.parameters(), model=model, fitness_fn=fitness, population_size=2, sigma=1.0, rank=2,
                   seed=0).step()  # fmt: skip
    delta = members[0]  # (E, out, in): member 0's σ E
    assert all(int(torch.linalg.matrix_rank(delta[e])) == 2 for e in range(3))  # a rank-2 matrix per expert
    flat = delta.flatten(1)
    cosine = nn.functional.cosine_similarity(flat[0], flat[1], dim=0)
    assert abs(float(cosine)) < 0.9  # two directions, not one direction scaled per expert


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm"])
@pytest.mark.parametrize("options", [dict(rank=1), dict(rank=2, chunk_size=3), dict(cls=VanillaESTrainer)],
                         ids=["r1", "r2-chunk3", "full-rank"])  # fmt: skip
def test_tiny_mixtral(implementation, options):
    assert_twins(twin_runs(lambda: tiny_mixtral(implementation), lm_score, **options))


def test_mixtral_expert_products_never_form_dense_member_weights(monkeypatch):
    """Population mode on the expert stacks reads the members' factors: no member's dense E (K·E·m·n values
    for the population) is ever made for them."""
    from eggroll_trainer.noise.params import ParamNoise

    dense_shapes = []
    original = ParamNoise.dense

    def watched(self, pairs, signs):
        dense_shapes.append(tuple(self.spec.shape))
        return original(self, pairs, signs)

    monkeypatch.setattr(ParamNoise, "dense", watched)
    model = tiny_mixtral()
    stacks = {tuple(p.shape) for p in model.parameters() if p.dim() == 3}
    EGGROLLTrainer(model.parameters(), model=model, fitness_fn=lambda m: lm_score(m, current_population().size),
                   population_size=8, seed=0, batched=True).step()  # fmt: skip
    assert dense_shapes  # the norms' weights do take their (K, d) values
    assert not stacks & set(dense_shapes)


def test_mixtral_eager_experts_loop_is_refused_by_name():
    model = tiny_mixtral("eager")
    before = [p.detach().clone() for p in model.parameters()]
    trainer = EGGROLLTrainer(model.parameters(), model=model, population_size=4, seed=0, batched=True,
                             fitness_fn=lambda m: lm_score(m, current_population().size))  # fmt: skip
    with pytest.raises(ValueError, match=r"experts\.gate_up_proj.*_experts_implementation"):
        trainer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
