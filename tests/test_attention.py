"""The attention contract, for every registered score function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s2s.config import config_from_dict
from s2s.model.attention import ATTENTIONS, WEIGHTED_VALUES, Attention, build_attention, register
from s2s.search.runner import search
from tests.conftest import ATTENTION_NAMES, overfit, plain_and_prepared, random_batch, tiny_model

B, T, S, DQ, DK = 3, 4, 6, 16, 16


def make(name: str):
    torch.manual_seed(0)
    return build_attention(name, DQ, DK, attention_size=10, num_heads=4, max_source_length=8)


def inputs():
    torch.manual_seed(1)
    query = torch.randn(B, T, DQ, requires_grad=True)
    states = torch.randn(B, S, DK, requires_grad=True)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 1 + [0] * 5], dtype=torch.bool)
    return query, states, mask


def test_registry_holds_every_documented_type():
    assert set(ATTENTION_NAMES) <= set(ATTENTIONS)
    assert ATTENTIONS["concat"] is ATTENTIONS["bahdanau"]


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_shapes_normalization_and_masking(name):
    attention = make(name)
    query, states, mask = inputs()
    keys, values = attention.precompute(states, states)
    context, weights = attention(query, keys, values, mask)
    assert context.shape == (B, T, attention.context_size)
    assert weights.shape == (B, T, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, T))
    assert torch.all(weights.masked_select(~mask.unsqueeze(1).expand(B, T, S)) == 0)
    assert torch.all(weights >= 0)


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_padding_does_not_change_the_result(name):
    """Extra padded positions (any values) leave context and real weights unchanged."""
    attention = make(name)
    query, states, mask = inputs()
    padded_states = torch.cat([states, 100 * torch.randn(B, 2, DK)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(B, 2, dtype=torch.bool)], dim=1)
    context, weights = attention(query, *attention.precompute(states, states), mask)
    context2, weights2 = attention(query, *attention.precompute(padded_states, padded_states),
                                   padded_mask)
    torch.testing.assert_close(context, context2)
    torch.testing.assert_close(weights, weights2[..., :S])


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_gradients_reach_every_parameter_and_input(name):
    attention = make(name)
    query, states, mask = inputs()
    context, _ = attention(query, *attention.precompute(states, states), mask)
    context.pow(2).sum().backward()
    for pname, param in attention.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname
    if name != "location":  # location scores ignore the keys by definition
        assert states.grad.abs().sum() > 0
    assert query.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_one_step_equals_the_matching_row_of_all_steps(name):
    attention = make(name)
    query, states, mask = inputs()
    memory = attention.precompute(states, states)
    all_context, all_weights = attention(query, *memory, mask)
    for t in range(T):
        context, weights = attention(query[:, t:t + 1], *memory, mask)
        torch.testing.assert_close(context[:, 0], all_context[:, t])
        torch.testing.assert_close(weights[:, 0], all_weights[:, t])


def test_score_functions_follow_their_equations():
    query, states, mask = inputs()
    full = torch.ones(B, S, dtype=torch.bool)
    dot = make("dot")
    _, w = dot(query, states, states, full)
    torch.testing.assert_close(w, torch.softmax(query @ states.transpose(1, 2), -1))
    scaled = make("scaled_dot")
    _, w = scaled(query, states, states, full)
    torch.testing.assert_close(w, torch.softmax(query @ states.transpose(1, 2) / DK ** 0.5, -1))
    general = make("general")
    _, w = general(query, *general.precompute(states, states), full)
    W = general.key_proj.weight  # [DQ, DK]
    torch.testing.assert_close(w, torch.softmax(query @ W @ states.transpose(1, 2), -1))
    bahdanau = make("bahdanau")
    _, w = bahdanau(query, *bahdanau.precompute(states, states), full)
    energy = torch.tanh(bahdanau.query_proj(query)[:, :, None] + bahdanau.key_proj(states)[:, None])
    torch.testing.assert_close(w, torch.softmax(bahdanau.energy(energy).squeeze(-1), -1))
    location = make("location")
    _, w = location(query, states, states, full)
    torch.testing.assert_close(w, torch.softmax(location.position_logits(query)[..., :S], -1))


def test_multihead_follows_its_equation_head_by_head():
    query, states, mask = inputs()
    attention = make("multihead")  # 4 heads of size DQ / 4
    context, weights = attention(query, *attention.precompute(states, states), mask)
    d_h = DQ // 4
    Wq, Wk, Wv, Wo = (attention.query_proj.weight.T, attention.key_proj.weight.T,
                      attention.value_proj.weight.T, attention.out_proj.weight.T)
    heads, head_weights = [], []
    for i in range(4):  # head_i = softmax((s W_i^Q)(H W_i^K)^T / sqrt(d_h)) H W_i^V
        part = slice(i * d_h, (i + 1) * d_h)
        scores = (query @ Wq[:, part]) @ (states @ Wk[:, part]).transpose(1, 2) / d_h ** 0.5
        alpha = torch.softmax(scores.masked_fill(~mask[:, None, :], float("-inf")), -1)
        heads.append(alpha @ (states @ Wv[:, part]))
        head_weights.append(alpha)
    torch.testing.assert_close(context, torch.cat(heads, dim=-1) @ Wo)  # [head_1; ...] W^O
    torch.testing.assert_close(weights, torch.stack(head_weights).mean(0))


def test_location_attention_renormalizes_and_cannot_reach_past_its_maximum():
    attention = build_attention("location", DQ, DK, max_source_length=4)
    query = torch.randn(1, 2, DQ)
    states = torch.randn(1, 6, DK)
    _, weights = attention(query, states, states, torch.ones(1, 6, dtype=torch.bool))
    assert torch.all(weights[..., 4:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2))


def test_multihead_uses_heads_of_size_d_over_h():
    attention = build_attention("multihead", 16, 12, num_heads=4)
    assert attention.head_size == 4 and attention.context_size == 16
    with pytest.raises(ValueError):
        build_attention("multihead", 16, 12, num_heads=3)


# ------------------------------------- a new type, as docs/architecture.md adds it
class CosineAttention(Attention):
    """score(s, h) = g · cos(s, W h); W h normalized once per batch."""

    speedups = frozenset({WEIGHTED_VALUES})  # its context is weights @ values

    def __init__(self, query_size, key_size, **_):
        super().__init__(query_size, key_size)
        self.key_proj = nn.Linear(key_size, query_size, bias=False)
        self.sharpness = nn.Parameter(torch.tensor(5.0))

    def precompute(self, keys, values):
        return F.normalize(self.key_proj(keys), dim=-1), values

    def score(self, query, keys):
        return self.sharpness * torch.bmm(F.normalize(query, dim=-1), keys.transpose(1, 2))


@pytest.fixture
def cosine():
    register("cosine")(CosineAttention)  # the registry line
    yield "cosine"
    del ATTENTIONS["cosine"]


def test_a_new_type_is_one_class_and_one_registry_line(cosine):
    """Selected by name in a config, it keeps the attention contract, computes its equation,
    trains and decodes (greedy, and beam search over the folded memory) alike on both
    backends, and lets a tiny model learn a toy task."""
    config = config_from_dict({"data": {"corpus": "toy"}, "model": {"attention": cosine}})
    attention = build_attention(config.model.attention, DQ, DK)
    query, states, mask = inputs()
    keys, values = attention.precompute(states, states)
    context, weights = attention(query, keys, values, mask)
    projected = attention.key_proj(states)
    cosines = torch.cosine_similarity(query[:, :, None], projected[:, None], dim=-1)
    expected = torch.softmax((5.0 * cosines).masked_fill(~mask[:, None], -torch.inf), -1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(context, expected @ states)
    plain, fast = tiny_model(cosine), tiny_model(cosine, backend="cpu")
    batch = random_batch(seed=2)
    plain_out, fast_out = plain(batch), fast(batch)
    torch.testing.assert_close(fast_out.loss, plain_out.loss)
    plain, prepared = plain_and_prepared(cosine)
    assert prepared.folding is not None  # it declared weighted_values: beam search folds
    sources = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [17]]
    for beam in (1, 3):
        found = [search(model, sources, batch_size=2, max_output_length=6,
                        max_output_ratio=2.0, beam_size=beam) for model in (plain, prepared)]
        assert [[h.tokens for h in hyps] for hyps in found[0]] == \
            [[h.tokens for h in hyps] for hyps in found[1]]
    assert overfit(fast, updates=150)[1] < 0.05
