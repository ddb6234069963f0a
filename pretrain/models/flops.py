"""Analytic parameter and FLOP counts of the attention layers in `pretrain.models.attention`.

The model configs (`PerceiverIOConfig`, `PerceiverARConfig`) sum these per-layer counts in
`num_params()` and `flops_per_sample()`. FLOPs are matmul FLOPs of the forward pass
(2 * m * n * k per [m, k] @ [k, n] product, attention scores and the weighted sum of values
included, over the full score matrix even where a causal mask zeroes half of it). Layer norms,
softmax, activations and biases are not counted; a training step costs 3x the forward (the
backward computes gradients of both the inputs and the weights).
"""

from __future__ import annotations


def linear_params(in_dim: int, out_dim: int, bias: bool = True) -> int:
    """Parameters of `nn.Linear(in_dim, out_dim, bias)`."""
    return in_dim * out_dim + (out_dim if bias else 0)


def mlp_params(dim: int, widening: int, bias: bool = True) -> int:
    """Parameters of `attention.MLP(dim, widening, bias)`."""
    return linear_params(dim, widening * dim, bias) + linear_params(widening * dim, dim, bias)


def cross_attention_layer_params(
    q_dim: int,
    kv_dim: int,
    qk: int,
    v: int,
    widening: int,
    qkv_bias: bool = True,
    out_bias: bool = True,
    mlp_bias: bool = True,
) -> int:
    """Parameters of `attention.CrossAttentionLayer` (3 layer norms, projections, MLP)."""
    norms = 2 * q_dim + 2 * kv_dim + 2 * q_dim
    projections = (
        linear_params(q_dim, qk, qkv_bias)
        + linear_params(kv_dim, qk + v, qkv_bias)
        + linear_params(v, q_dim, out_bias)
    )
    return norms + projections + mlp_params(q_dim, widening, mlp_bias)


def self_attention_layer_params(
    dim: int,
    qk: int,
    v: int,
    widening: int,
    qkv_bias: bool = True,
    out_bias: bool = True,
    mlp_bias: bool = True,
) -> int:
    """Parameters of `attention.SelfAttentionLayer` (2 layer norms, projections, MLP)."""
    projections = linear_params(dim, 2 * qk + v, qkv_bias) + linear_params(v, dim, out_bias)
    return 4 * dim + projections + mlp_params(dim, widening, mlp_bias)


def attention_flops(num_q: int, num_kv: int, qk: int, v: int) -> int:
    """Forward FLOPs of the scores (q @ k^T) and of the weighted sum of values (p @ v)."""
    return 2 * num_q * num_kv * (qk + v)


def cross_attention_layer_flops(
    num_q: int, num_kv: int, q_dim: int, kv_dim: int, qk: int, v: int, widening: int
) -> int:
    """Forward matmul FLOPs of a `CrossAttentionLayer` with num_q queries and num_kv keys."""
    projections = 2 * num_q * q_dim * qk + 2 * num_kv * kv_dim * (qk + v) + 2 * num_q * v * q_dim
    mlp = 2 * 2 * num_q * q_dim * widening * q_dim
    return projections + attention_flops(num_q, num_kv, qk, v) + mlp


def self_attention_layer_flops(num_tokens: int, dim: int, qk: int, v: int, widening: int) -> int:
    """Forward matmul FLOPs of a `SelfAttentionLayer` over num_tokens positions."""
    projections = 2 * num_tokens * dim * (2 * qk + v) + 2 * num_tokens * v * dim
    mlp = 2 * 2 * num_tokens * dim * widening * dim
    return projections + attention_flops(num_tokens, num_tokens, qk, v) + mlp
