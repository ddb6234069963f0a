"""The one attention function of the codebase and the attention/MLP building blocks.

Shape legend (suffixes of tensor names):
    b  batch size
    h  number of attention heads
    n  number of queries (latents, output queries, or the last positions in Perceiver AR)
    m  number of keys/values (input positions, or prefix + latents in Perceiver AR)
    d  query/key channels per head
    e  value channels per head
    r  rotary channels per head (the first r of d)
    c  model channels (the input of a projection)
    f  hidden channels of an MLP (widening_factor * c)

Masks are boolean with True = "may attend" (the convention of
`torch.nn.functional.scaled_dot_product_attention`). Causal masks are aligned to the bottom right:
with n queries and m >= n keys, query i may see keys j <= i + (m - n), so the last query sees
every key. This is what Perceiver AR needs (the latents are the last n of the m positions); note
that SDPA's `is_causal=True` is aligned to the top left and is only used here when n == m.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right
from torch.utils._python_dispatch import _get_current_dispatch_mode

Rope = Tensor  # complex rope_b1n(d/2) from `rotary_embedding`


def causal_mask(num_queries: int, num_keys: int, device: torch.device | None = None) -> Tensor:
    """Bottom-right aligned causal mask: query i may see keys j <= i + (num_keys - num_queries).

    Args:
        num_queries: Number of queries n.
        num_keys: Number of keys m (m >= n for every query to see at least one key).
        device: Device of the returned tensor.

    Returns:
        Boolean mask of shape [n, m], True where attention is allowed.
    """
    i_n1 = torch.arange(num_queries, device=device)[:, None]
    j_1m = torch.arange(num_keys, device=device)[None, :]
    return j_1m <= i_n1 + (num_keys - num_queries)


def padding_mask_or_none(key_padding_mask_bm: Tensor | None) -> Tensor | None:
    """The boolean padding mask, or None if there is none or it hides nothing.

    Dropping an all-True mask lets SDPA take its fastest kernels (flash attention takes no
    mask); checking costs one host-device sync on GPU.
    """
    if key_padding_mask_bm is None or bool(key_padding_mask_bm.all()):
        return None
    return key_padding_mask_bm.bool()


def build_attention_mask(
    num_queries: int,
    num_keys: int,
    key_padding_mask_bm: Tensor | None = None,
    causal: bool = False,
    device: torch.device | None = None,
) -> Tensor | None:
    """Explicit boolean mask combining key padding and a bottom-right causal mask.

    Args:
        num_queries: Number of queries n.
        num_keys: Number of keys m.
        key_padding_mask_bm: Optional bool [b, m], True = real key.
        causal: Whether to apply the bottom-right aligned causal mask.
        device: Device of the mask when only the causal part is built.

    Returns:
        None (no masking), a bool [n, m] mask (causal only) or a bool [b, 1, n, m] mask.
    """
    mask_nm = causal_mask(num_queries, num_keys, device) if causal else None
    if key_padding_mask_bm is None:
        return mask_nm
    mask_b1nm = key_padding_mask_bm[:, None, None, :]
    return mask_b1nm if mask_nm is None else mask_b1nm & mask_nm


def _use_causal_bias(q_bhnd: Tensor) -> bool:
    """Whether to pass SDPA a `CausalBias` rather than an explicit [n, m] bool mask.

    Only on GPU, where it selects flash / memory-efficient kernels (on CPU SDPA materialises it
    anyway), and not under a dispatch mode such as `FlopCounterMode` or under `torch.compile`,
    which cannot create that tensor subclass.
    """
    return (
        q_bhnd.is_cuda
        and _get_current_dispatch_mode() is None
        and not torch.compiler.is_compiling()
    )


def attention(
    q_bhnd: Tensor,
    k_bhmd: Tensor,
    v_bhme: Tensor,
    key_padding_mask_bm: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """Multi-head scaled dot-product attention over SDPA (flash / memory-efficient kernels on GPU).

    Args:
        q_bhnd: Queries.
        k_bhmd: Keys.
        v_bhme: Values (e may differ from d).
        key_padding_mask_bm: Optional bool [b, m], True = real key. Every query must see at least
            one key (fully masked rows give NaN).
        causal: Bottom-right aligned causal masking (see module docstring).
        dropout_p: Dropout probability on the attention weights (pass 0.0 in eval mode).
        attn_mask: Optional precomputed bool mask broadcastable to [b, h, n, m]; replaces
            `key_padding_mask_bm` and `causal`.

    Returns:
        Attention output o_bhne.
    """
    n, m = q_bhnd.shape[-2], k_bhmd.shape[-2]
    d, e = q_bhnd.shape[-1], v_bhme.shape[-1]
    scale = d**-0.5
    if d < e:
        # Fused kernels (flash on CPU and GPU) need equal head dims: zero channels added to
        # queries and keys leave the scores unchanged (the scale stays 1/sqrt(d)).
        q_bhnd, k_bhmd = F.pad(q_bhnd, (0, e - d)), F.pad(k_bhmd, (0, e - d))
    elif d > e:
        v_bhmd = F.pad(v_bhme, (0, d - e))
        o_bhnd = attention(
            q_bhnd, k_bhmd, v_bhmd, key_padding_mask_bm, causal, dropout_p, attn_mask
        )
        return o_bhnd[..., :e]
    sdpa = functools.partial(F.scaled_dot_product_attention, dropout_p=dropout_p, scale=scale)
    if attn_mask is not None:
        return sdpa(q_bhnd, k_bhmd, v_bhme, attn_mask=attn_mask)
    if key_padding_mask_bm is None:
        if not causal:
            return sdpa(q_bhnd, k_bhmd, v_bhme)
        if n == m:  # top-left == bottom-right alignment when square
            return sdpa(q_bhnd, k_bhmd, v_bhme, is_causal=True)
        if _use_causal_bias(q_bhnd):
            # Lazily represented bottom-right mask: flash / mem-efficient kernels on GPU.
            return sdpa(q_bhnd, k_bhmd, v_bhme, attn_mask=causal_lower_right(n, m))
    mask = build_attention_mask(n, m, key_padding_mask_bm, causal, device=q_bhnd.device)
    return sdpa(q_bhnd, k_bhmd, v_bhme, attn_mask=mask)


def attention_reference(
    q_bhnd: Tensor,
    k_bhmd: Tensor,
    v_bhme: Tensor,
    key_padding_mask_bm: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    """Plain einsum implementation of `attention` (no dropout); used by tests only."""
    n, m = q_bhnd.shape[-2], k_bhmd.shape[-2]
    scores_bhnm = torch.einsum("bhnd,bhmd->bhnm", q_bhnd, k_bhmd) / math.sqrt(q_bhnd.shape[-1])
    if causal:
        scores_bhnm = scores_bhnm.masked_fill(~causal_mask(n, m, q_bhnd.device), float("-inf"))
    if key_padding_mask_bm is not None:
        scores_bhnm = scores_bhnm.masked_fill(~key_padding_mask_bm[:, None, None, :], float("-inf"))
    return torch.einsum("bhnm,bhme->bhne", scores_bhnm.softmax(dim=-1), v_bhme)


def rotary_embedding(
    positions_bn: Tensor, rotary_dim: int, head_dim: int, base: float = 10000.0
) -> Rope:
    """Rotary position embedding (Su et al., 2021) of absolute positions as complex rotations.

    Channel pairs (2i, 2i + 1) of a head form complex numbers; the first r / 2 pairs rotate by
    position * base^(-2i / r), the remaining (d - r) / 2 pairs by 0 (they pass through), so
    `apply_rotary` is one complex multiplication.

    Args:
        positions_bn: Integer positions, [b, n] (or [1, n] to broadcast over the batch).
        rotary_dim: Number r of rotated channels per head (even).
        head_dim: Channels d of a query/key head (even, >= r).
        base: Frequency base.

    Returns:
        complex64 rope_b1n(d/2), broadcastable against heads viewed as [b, h, n, d / 2].
    """
    inv_freq = base ** (-torch.arange(0, rotary_dim, 2, device=positions_bn.device) / rotary_dim)
    inv_freq = F.pad(inv_freq, (0, (head_dim - rotary_dim) // 2))
    angles_bnd2 = positions_bn[..., None].float() * inv_freq
    return torch.polar(torch.ones_like(angles_bnd2), angles_bnd2)[:, None]


def apply_rotary(x_bhnd: Tensor, rope: Rope) -> Tensor:
    """Rotates channel pairs of every query/key head by the angles of `rope`.

    Args:
        x_bhnd: Queries or keys (d even).
        rope: Complex rotations from `rotary_embedding` for the same n positions.

    Returns:
        Tensor of the same shape and dtype with rotated (and passed-through) channels.
    """
    x_complex = torch.view_as_complex(x_bhnd.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(x_complex * rope).flatten(-2).type_as(x_bhnd)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate qk and v channel counts.

    Self-attention (`kv_dim=None`) uses one fused projection `qkv_proj` for queries, keys and
    values; cross-attention uses `q_proj` and a fused `kv_proj`. The fused weights are row-wise
    concatenations of the separate [q; k; v] weights (what HF conversion splits/concatenates).

    Args:
        q_dim: Channels of the query input.
        kv_dim: Channels of the key/value input; None for self-attention (then kv_dim = q_dim).
        qk_channels: Total query/key channels (over all heads).
        v_channels: Total value channels (over all heads).
        out_dim: Output channels of the output projection.
        num_heads: Number of heads.
        dropout: Dropout probability on the attention weights.
        qkv_bias: Bias in the query/key/value projections.
        out_bias: Bias in the output projection.
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int | None,
        qk_channels: int,
        v_channels: int,
        out_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        qkv_bias: bool = True,
        out_bias: bool = True,
    ) -> None:
        super().__init__()
        if qk_channels % num_heads or v_channels % num_heads:
            raise ValueError(
                f"qk_channels ({qk_channels}) and v_channels ({v_channels}) must be divisible by "
                f"num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.qk_channels = qk_channels
        self.v_channels = v_channels
        self.dropout = dropout
        self.is_self_attention = kv_dim is None
        if self.is_self_attention:
            self.qkv_proj = nn.Linear(q_dim, 2 * qk_channels + v_channels, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(q_dim, qk_channels, bias=qkv_bias)
            self.kv_proj = nn.Linear(kv_dim, qk_channels + v_channels, bias=qkv_bias)
        self.o_proj = nn.Linear(v_channels, out_dim, bias=out_bias)

    def _heads(self, x_bnc: Tensor) -> Tensor:
        b, n, _ = x_bnc.shape
        return x_bnc.view(b, n, self.num_heads, -1).transpose(1, 2)

    def project_q(self, x_bnc: Tensor, rope: Rope | None = None) -> Tensor:
        """Queries q_bhnd of a cross-attention, rotary embedding applied if given."""
        q_bhnd = self._heads(self.q_proj(x_bnc))
        return q_bhnd if rope is None else apply_rotary(q_bhnd, rope)

    def project_kv(self, x_bmc: Tensor, rope: Rope | None = None) -> tuple[Tensor, Tensor]:
        """Keys k_bhmd (rotary applied if given) and values v_bhme of a cross-attention."""
        k_bmc, v_bmc = self.kv_proj(x_bmc).split([self.qk_channels, self.v_channels], dim=-1)
        k_bhmd = self._heads(k_bmc)
        return (k_bhmd if rope is None else apply_rotary(k_bhmd, rope)), self._heads(v_bmc)

    def project_qkv(self, x_bnc: Tensor, rope: Rope | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of a self-attention from one fused projection."""
        qk, v = self.qk_channels, self.v_channels
        q_bnc, k_bnc, v_bnc = self.qkv_proj(x_bnc).split([qk, qk, v], dim=-1)
        q_bhnd, k_bhnd = self._heads(q_bnc), self._heads(k_bnc)
        if rope is not None:
            q_bhnd, k_bhnd = apply_rotary(q_bhnd, rope), apply_rotary(k_bhnd, rope)
        return q_bhnd, k_bhnd, self._heads(v_bnc)

    def attend(
        self,
        q_bhnd: Tensor,
        k_bhmd: Tensor,
        v_bhme: Tensor,
        key_padding_mask_bm: Tensor | None = None,
        causal: bool = False,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Attention over projected heads followed by the output projection.

        Args:
            q_bhnd: Queries.
            k_bhmd: Keys.
            v_bhme: Values.
            key_padding_mask_bm: Optional bool [b, m], True = real key.
            causal: Bottom-right aligned causal masking.
            attn_mask: Optional precomputed boolean mask (overrides the two arguments above).

        Returns:
            Output [b, n, out_dim].
        """
        dropout_p = self.dropout if self.training else 0.0
        o_bhne = attention(
            q_bhnd, k_bhmd, v_bhme, key_padding_mask_bm, causal, dropout_p, attn_mask=attn_mask
        )
        b, _, n, _ = o_bhne.shape
        return self.o_proj(o_bhne.transpose(1, 2).reshape(b, n, self.v_channels))


class MLP(nn.Module):
    """Transformer MLP: Linear(c, widening_factor * c) -> exact GELU -> Linear(f, c)."""

    def __init__(self, dim: int, widening_factor: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, widening_factor * dim, bias=bias)
        self.fc2 = nn.Linear(widening_factor * dim, dim, bias=bias)

    def forward(self, x_bnc: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x_bnc)))


@contextlib.contextmanager
def writable(*params: nn.Parameter) -> Iterator[None]:
    """Makes parameters whole for initialisation code, one module's worth at a time.

    A no-op for ordinary parameters. Parameters partitioned by DeepSpeed ZeRO-3 (a model built
    under ``deepspeed.zero.Init``) hold only their rank's slice: they are gathered, rank 0's
    writes are kept, and they are partitioned again. Rank 0 draws the same random numbers in the
    same order as an unpartitioned initialisation, so the weights do not depend on the number of
    ranks, and no rank ever holds more than one module's parameters whole.
    """
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield


@torch.no_grad()
def init_standard_weights(root: nn.Module, std: float) -> None:
    """HF-style initialisation of every submodule: N(0, std) for Linear and Embedding weights,
    zero biases, unit LayerNorm scales. Models add their own learned vectors afterwards."""
    for module in root.modules():
        if not isinstance(module, nn.Linear | nn.Embedding | nn.LayerNorm):
            continue
        with writable(*module.parameters(recurse=False)):
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                continue
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class CrossAttentionLayer(nn.Module):
    """Pre-LayerNorm cross-attention followed by a pre-LayerNorm MLP (HF `PerceiverLayer`).

    out = o_proj(attn(q_norm(x_q), kv_norm(x_kv))) [+ x_q if use_query_residual]
    out = out + mlp(mlp_norm(out))

    Args:
        q_dim: Query input channels (also the output channels).
        kv_dim: Key/value input channels.
        qk_channels: Total query/key channels.
        v_channels: Total value channels.
        num_heads: Number of heads.
        widening_factor: MLP widening factor.
        use_query_residual: Add the (un-normalised) query input to the attention output.
        dropout: Dropout on attention weights.
        residual_dropout: Dropout on the attention and MLP branches before the residual sums.
        qkv_bias: Bias of the q/k/v projections.
        out_bias: Bias of the output projection.
        mlp_bias: Bias of the MLP.
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        qk_channels: int,
        v_channels: int,
        num_heads: int,
        widening_factor: int = 1,
        use_query_residual: bool = True,
        dropout: float = 0.0,
        residual_dropout: float = 0.0,
        qkv_bias: bool = True,
        out_bias: bool = True,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        self.use_query_residual = use_query_residual
        self.q_norm = nn.LayerNorm(q_dim)
        self.kv_norm = nn.LayerNorm(kv_dim)
        self.attention = MultiHeadAttention(
            q_dim, kv_dim, qk_channels, v_channels, q_dim, num_heads, dropout, qkv_bias, out_bias
        )
        self.mlp_norm = nn.LayerNorm(q_dim)
        self.mlp = MLP(q_dim, widening_factor, mlp_bias)
        self.residual_dropout = nn.Dropout(residual_dropout)

    def keys_values(self, x_kv_bmc: Tensor, rope_k: Rope | None = None) -> tuple[Tensor, Tensor]:
        """Normalised and projected keys k_bhmd and values v_bhme (cacheable per position)."""
        return self.attention.project_kv(self.kv_norm(x_kv_bmc), rope_k)

    def forward(
        self,
        x_q_bnc: Tensor,
        x_kv_bmc: Tensor | None = None,
        key_padding_mask_bm: Tensor | None = None,
        causal: bool = False,
        rope_q: Rope | None = None,
        rope_k: Rope | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Cross-attends x_q to x_kv (or to precomputed `kv` from `keys_values`).

        Returns:
            Output [b, n, q_dim].
        """
        k_bhmd, v_bhme = self.keys_values(x_kv_bmc, rope_k) if kv is None else kv
        q_bhnd = self.attention.project_q(self.q_norm(x_q_bnc), rope_q)
        out_bnc = self.attention.attend(
            q_bhnd, k_bhmd, v_bhme, key_padding_mask_bm, causal, attn_mask
        )
        out_bnc = self.residual_dropout(out_bnc)
        if self.use_query_residual:
            out_bnc = out_bnc + x_q_bnc
        return out_bnc + self.residual_dropout(self.mlp(self.mlp_norm(out_bnc)))


class SelfAttentionLayer(nn.Module):
    """Pre-LayerNorm self-attention followed by a pre-LayerNorm MLP, both with residuals.

    Args:
        dim: Channels of the input and output.
        qk_channels: Total query/key channels.
        v_channels: Total value channels.
        num_heads: Number of heads.
        widening_factor: MLP widening factor.
        causal: Causal self-attention.
        dropout: Dropout on attention weights.
        residual_dropout: Dropout on the attention and MLP branches before the residual sums.
        qkv_bias: Bias of the fused qkv projection.
        out_bias: Bias of the output projection.
        mlp_bias: Bias of the MLP.
    """

    def __init__(
        self,
        dim: int,
        qk_channels: int,
        v_channels: int,
        num_heads: int,
        widening_factor: int = 1,
        causal: bool = False,
        dropout: float = 0.0,
        residual_dropout: float = 0.0,
        qkv_bias: bool = True,
        out_bias: bool = True,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(
            dim, None, qk_channels, v_channels, dim, num_heads, dropout, qkv_bias, out_bias
        )
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, widening_factor, mlp_bias)
        self.residual_dropout = nn.Dropout(residual_dropout)

    def forward(
        self,
        x_bnc: Tensor,
        key_padding_mask_bn: Tensor | None = None,
        rope: Rope | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Self-attention + MLP over x_bnc; returns [b, n, dim]."""
        q_bhnd, k_bhnd, v_bhne = self.attention.project_qkv(self.norm(x_bnc), rope)
        attn_bnc = self.attention.attend(
            q_bhnd, k_bhnd, v_bhne, key_padding_mask_bn, self.causal, attn_mask
        )
        x_bnc = x_bnc + self.residual_dropout(attn_bnc)
        return x_bnc + self.residual_dropout(self.mlp(self.mlp_norm(x_bnc)))
