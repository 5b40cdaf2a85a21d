"""The attention contract, for every registered score function."""

from __future__ import annotations

import pytest
import torch

from s2s.attention import ATTENTIONS, build_attention
from tests.conftest import ATTENTION_NAMES

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


def test_fast_tanh_matches_torch_tanh_and_its_gradient():
    from s2s.attention import fast_tanh_
    x = torch.randn(4, 3, 7, 16) * 4
    with torch.no_grad():
        torch.testing.assert_close(fast_tanh_(x.clone()), torch.tanh(x), atol=1e-6, rtol=0)
    leaf = x.clone().requires_grad_()
    y = fast_tanh_(leaf * 1.0)
    weights = torch.randn_like(x)
    (y * weights).sum().backward()
    torch.testing.assert_close(leaf.grad, weights * (1 - torch.tanh(x) ** 2), atol=1e-6, rtol=0)
    leaf64 = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: fast_tanh_(z * 1.0), (leaf64,))
