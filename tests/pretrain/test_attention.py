"""The attention function against its einsum reference, masks, rotary embedding, layers."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.bias import causal_lower_right

from pretrain.models.attention import (
    CrossAttentionLayer,
    MultiHeadAttention,
    SelfAttentionLayer,
    apply_rotary,
    attention,
    attention_reference,
    build_attention_mask,
    causal_mask,
    padding_mask_or_none,
    rotary_embedding,
)

B, H, D, E = 2, 3, 8, 12


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _qkv(n: int, m: int, gen: torch.Generator, d: int = D, e: int = E) -> tuple[torch.Tensor, ...]:
    q = torch.randn(B, H, n, d, generator=gen)
    k = torch.randn(B, H, m, d, generator=gen)
    v = torch.randn(B, H, m, e, generator=gen)
    return q, k, v


def test_causal_mask_golden() -> None:
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(3, 5), expected)
    # The lazily represented bias that `attention` hands to SDPA is the same mask.
    assert torch.equal(causal_lower_right(3, 5)._materialize(), expected)
    square = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(3, 3), square)


def test_build_attention_mask_combines_padding_and_causal() -> None:
    padding = torch.tensor([[False, True, True, True], [True, True, True, True]])
    mask = build_attention_mask(2, 4, padding, causal=True)
    expected_row0 = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    expected_row1 = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert mask.shape == (2, 1, 2, 4)
    assert torch.equal(mask[0, 0], expected_row0)
    assert torch.equal(mask[1, 0], expected_row1)
    assert build_attention_mask(2, 4) is None


def test_padding_mask_or_none() -> None:
    assert padding_mask_or_none(None) is None
    assert padding_mask_or_none(torch.ones(2, 3, dtype=torch.long)) is None  # hides nothing
    mask = padding_mask_or_none(torch.tensor([[1, 1, 0]]))
    assert mask.dtype == torch.bool and torch.equal(mask, torch.tensor([[True, True, False]]))


@pytest.mark.parametrize("n,m", [(5, 5), (3, 7), (1, 4)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_matches_reference(n: int, m: int, causal: bool, padded: bool, gen) -> None:
    q, k, v = _qkv(n, m, gen)
    padding = None
    if padded:  # hide key 1 of row 0 (every query still sees key 0)
        padding = torch.ones(B, m, dtype=torch.bool)
        padding[0, 1] = False
    out = attention(q, k, v, padding, causal)
    ref = attention_reference(q, k, v, padding, causal)
    assert out.shape == (B, H, n, E)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d,e", [(8, 8), (8, 12), (12, 8)])
def test_unequal_head_dims_match_reference(d: int, e: int, gen) -> None:
    # `attention` zero-pads the smaller head dim for the fused kernel; the result is unchanged.
    q, k, v = _qkv(3, 7, gen, d, e)
    padding = torch.ones(B, 7, dtype=torch.bool)
    padding[1, 2] = False
    for kwargs in ({}, {"causal": True}, {"key_padding_mask_bm": padding}):
        out = attention(q, k, v, **kwargs)
        assert out.shape == (B, H, 3, e)
        torch.testing.assert_close(
            out, attention_reference(q, k, v, **kwargs), atol=1e-5, rtol=1e-5
        )
    explicit = build_attention_mask(3, 7, padding, causal=True)
    torch.testing.assert_close(
        attention(q, k, v, attn_mask=explicit),
        attention_reference(q, k, v, padding, causal=True),
        atol=1e-5,
        rtol=1e-5,
    )


def test_padded_keys_are_ignored(gen) -> None:
    q, k, v = _qkv(4, 6, gen)
    padding = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 4:] = 100.0
    v2[0, :, 4:] = -100.0
    torch.testing.assert_close(attention(q, k, v, padding), attention(q, k2, v2, padding))


def test_causal_queries_ignore_future_keys(gen) -> None:
    q, k, v = _qkv(3, 5, gen)
    k2, v2 = k.clone(), v.clone()
    k2[..., 4, :] += 3.0  # only the last query may see the last key
    v2[..., 4, :] += 3.0
    out, out2 = attention(q, k, v, causal=True), attention(q, k2, v2, causal=True)
    torch.testing.assert_close(out[..., :2, :], out2[..., :2, :])
    assert not torch.allclose(out[..., 2, :], out2[..., 2, :])


def test_attention_dropout_only_when_requested(gen) -> None:
    q, k, v = _qkv(4, 4, gen)
    assert not torch.allclose(attention(q, k, v, dropout_p=0.5), attention(q, k, v))


def test_rotary_is_relative_and_norm_preserving(gen) -> None:
    r = 6
    q = torch.randn(1, H, 1, D, generator=gen)
    k = torch.randn(1, H, 1, D, generator=gen)

    def score(pos_q: int, pos_k: int) -> torch.Tensor:
        q_rot = apply_rotary(q, rotary_embedding(torch.tensor([[pos_q]]), r, D))
        k_rot = apply_rotary(k, rotary_embedding(torch.tensor([[pos_k]]), r, D))
        return (q_rot * k_rot).sum(-1)

    torch.testing.assert_close(score(7, 3), score(17, 13), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(7, 3), score(3, 7))
    rotated = apply_rotary(q, rotary_embedding(torch.tensor([[5]]), r, D))
    torch.testing.assert_close(rotated[..., r:], q[..., r:])  # channels beyond r untouched
    torch.testing.assert_close(rotated[..., :r].norm(dim=-1), q[..., :r].norm(dim=-1))
    angle = torch.tensor(5 * 10000 ** (-2 / r))  # channel pair 1 = channels (2, 3)
    x0, x1 = q[..., 2], q[..., 3]
    torch.testing.assert_close(rotated[..., 2], x0 * angle.cos() - x1 * angle.sin())
    torch.testing.assert_close(rotated[..., 3], x0 * angle.sin() + x1 * angle.cos())
    full = apply_rotary(q, rotary_embedding(torch.tensor([[5]]), D, D))
    torch.testing.assert_close(full.norm(dim=-1), q.norm(dim=-1))


def test_multi_head_attention_rejects_bad_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(8, None, qk_channels=10, v_channels=8, out_dim=8, num_heads=4)


def _ln(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)


def test_cross_attention_layer_matches_manual(gen) -> None:
    torch.manual_seed(0)
    layer = CrossAttentionLayer(
        16, 8, qk_channels=12, v_channels=20, num_heads=4, widening_factor=2
    )
    x_q, x_kv = torch.randn(2, 3, 16, generator=gen), torch.randn(2, 5, 8, generator=gen)
    padding = torch.tensor([[True] * 5, [True, True, True, False, False]])
    att = layer.attention
    w_k, w_v = att.kv_proj.weight.split([12, 20])
    b_k, b_v = att.kv_proj.bias.split([12, 20])
    kv = _ln(x_kv, layer.kv_norm)
    q = att.q_proj(_ln(x_q, layer.q_norm)).view(2, 3, 4, 3).transpose(1, 2)
    k = (kv @ w_k.T + b_k).view(2, 5, 4, 3).transpose(1, 2)
    v = (kv @ w_v.T + b_v).view(2, 5, 4, 5).transpose(1, 2)
    o = attention_reference(q, k, v, padding).transpose(1, 2).reshape(2, 3, 20)
    out = att.o_proj(o) + x_q
    out = out + layer.mlp(_ln(out, layer.mlp_norm))
    torch.testing.assert_close(layer(x_q, x_kv, key_padding_mask_bm=padding), out)
    layer.use_query_residual = False
    assert not torch.allclose(layer(x_q, x_kv, key_padding_mask_bm=padding), out)


def test_self_attention_layer_causal_and_rope(gen) -> None:
    torch.manual_seed(0)
    layer = SelfAttentionLayer(16, qk_channels=16, v_channels=16, num_heads=2, causal=True)
    x = torch.randn(2, 6, 16, generator=gen)
    rope = rotary_embedding(torch.arange(6)[None], 4, 8)
    out = layer(x, rope=rope)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    out2 = layer(x2, rope=rope)
    torch.testing.assert_close(out[:, :4], out2[:, :4])  # earlier positions see no future
    assert not torch.allclose(out[:, 4:], out2[:, 4:])
    assert not torch.allclose(layer(x), out)  # the rotary embedding changes the scores
