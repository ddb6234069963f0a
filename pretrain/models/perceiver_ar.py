"""Perceiver AR (Hawthorne et al., 2022) in the style of krasserm/perceiver-io and lucidrains.

    tokens [b, s] -> token_embedding (+ position_embedding)                      -> x_bsc
    latents = the last n = min(num_latents, s) positions of x (their own embeddings)
    cross_attention(latents -> [prefix (randomly thinned in training), latents]),
        causal mask aligned to the bottom right (latent i sees keys j <= i + m - n)   -> h_bnc
    self_attention_layers: causal self-attention among the latents                 -> h_bnc
    output_norm, h @ token_embedding.T + output_bias (or an untied projection)      -> logits_bnv

Rotary position embeddings use absolute positions and rotate the first `rotary_dim` channels of
every query/key head in the cross-attention and the self-attention layers. All keys of the
cross-attention (prefix and latents alike) go through the same `kv_norm`, so the keys and values
of a position never change once computed: generation caches them (`PerceiverARCache`), adds one
cross-attention query per new token and recomputes only the latent self-attention stack over
the last n positions, which is what makes incremental decoding equal to the full forward pass
(the window of latents slides by one position per token, so their self-attention states change).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.attention import (
    CrossAttentionLayer,
    Rope,
    SelfAttentionLayer,
    causal_mask,
    init_standard_weights,
    padding_mask_or_none,
    rotary_embedding,
    writable,
)
from pretrain.models.encoder import check_positive_ints
from pretrain.models.flops import (
    cross_attention_layer_flops,
    cross_attention_layer_params,
    self_attention_layer_flops,
    self_attention_layer_params,
)


@dataclass
class PerceiverARConfig:
    """Hyperparameters of `PerceiverAR`.

    Attributes:
        vocab_size: Number of token ids.
        max_seq_len: Maximum sequence length (prefix + latents).
        num_latents: Number of latents (the last positions, whose next tokens are predicted).
        num_channels: Model channels (also the qk and v channels of every attention).
        num_heads: Heads of the cross- and self-attention.
        num_self_attention_layers: Causal self-attention layers among the latents.
        cross_attention_widening_factor: MLP widening factor after the cross-attention.
        self_attention_widening_factor: MLP widening factor in the self-attention layers.
        rotary_fraction: Fraction of each head's qk channels rotated by the rotary embedding.
        num_self_attention_rotary_layers: Self-attention layers (the first ones) that use the
            rotary embedding; -1 = all. The cross-attention always uses it (if rotary_dim > 0).
        abs_pos_emb: Add learned absolute position embeddings to the token embeddings.
        cross_attention_dropout: Fraction of prefix positions dropped in training (prefix dropout).
        dropout: Dropout on attention weights.
        residual_dropout: Dropout on residual branches.
        tie_embeddings: Output projection tied to the token embedding (plus a bias).
        init_scale: Standard deviation of the normal initialisation.
    """

    type: ClassVar[str] = "perceiver_ar"  # `model.type` in a config file
    vocab_size: int = 262
    max_seq_len: int = 4096
    num_latents: int = 1024
    num_channels: int = 512
    num_heads: int = 8
    num_self_attention_layers: int = 8
    cross_attention_widening_factor: int = 4
    self_attention_widening_factor: int = 4
    rotary_fraction: float = 0.5
    num_self_attention_rotary_layers: int = -1
    abs_pos_emb: bool = True
    cross_attention_dropout: float = 0.5
    dropout: float = 0.0
    residual_dropout: float = 0.0
    tie_embeddings: bool = True
    init_scale: float = 0.02

    def __post_init__(self) -> None:
        floats = ("rotary_fraction", "cross_attention_dropout", "dropout", "residual_dropout")
        check_positive_ints(self, skip=floats + ("init_scale", "num_self_attention_rotary_layers"))
        if self.num_self_attention_rotary_layers < -1:
            raise ValueError(
                f"num_self_attention_rotary_layers must be >= -1, got "
                f"{self.num_self_attention_rotary_layers}"
            )
        if self.num_latents > self.max_seq_len:
            raise ValueError(f"num_latents ({self.num_latents}) must be <= max_seq_len")
        if self.num_channels % self.num_heads:
            raise ValueError(f"num_channels ({self.num_channels}) must be divisible by num_heads")
        if not 0.0 <= self.rotary_fraction <= 1.0:
            raise ValueError(f"rotary_fraction must be in [0, 1], got {self.rotary_fraction}")
        if self.rotary_dim and self.head_dim % 2:
            raise ValueError("num_channels / num_heads must be even when rotary_fraction > 0")
        for name in floats[1:]:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")

    @property
    def head_dim(self) -> int:
        """Query/key/value channels per head."""
        return self.num_channels // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """Rotated channels per head (even)."""
        return 2 * int(self.rotary_fraction * self.head_dim / 2)

    def num_params(self) -> int:
        """Analytic number of parameters."""
        c, v = self.num_channels, self.vocab_size
        no_bias = dict(qkv_bias=False, out_bias=False, mlp_bias=False)
        embeddings = v * c + (self.max_seq_len * c if self.abs_pos_emb else 0)
        cross = cross_attention_layer_params(
            c, c, c, c, self.cross_attention_widening_factor, **no_bias
        )
        layer = self_attention_layer_params(c, c, c, self.self_attention_widening_factor, **no_bias)
        head = 2 * c + v + (0 if self.tie_embeddings else v * c)
        return embeddings + cross + self.num_self_attention_layers * layer + head

    def flops_per_sample(
        self, seq_len: int | None = None, prefix_dropout: float | None = None
    ) -> int:
        """Forward + backward matmul FLOPs for one sample, as trained.

        Args:
            seq_len: Sequence length (default `max_seq_len`).
            prefix_dropout: Fraction of prefix positions dropped (default
                `cross_attention_dropout`, what a training step does; 0.0 for evaluation).

        Returns:
            3 x forward matmul FLOPs (see `pretrain.models.flops`), with the logits of the
            `num_latents` positions.
        """
        s = self.max_seq_len if seq_len is None else seq_len
        rate = self.cross_attention_dropout if prefix_dropout is None else prefix_dropout
        n = min(self.num_latents, s)
        prefix = s - n
        num_kv = prefix - int(prefix * rate) + n
        c = self.num_channels
        forward = (
            cross_attention_layer_flops(n, num_kv, c, c, c, c, self.cross_attention_widening_factor)
            + self.num_self_attention_layers
            * self_attention_layer_flops(n, c, c, c, self.self_attention_widening_factor)
            + 2 * n * c * self.vocab_size
        )
        return 3 * forward


def perceiver_ar_mask(
    num_latents: int, num_keys: int, key_padding_mask_bm: Tensor | None = None
) -> Tensor:
    """The boolean mask of Perceiver AR attention (True = may attend).

    Latent i (the (m - n + i)-th of m positions) sees keys j <= i + (m - n): the prefix and the
    latents up to itself. With key padding, padded keys are hidden except from their own
    position, so rows of padded latents are never empty (their outputs are unused).

    Args:
        num_latents: Number of queries n (the last n positions).
        num_keys: Number of keys m >= n (num_keys == num_latents for the self-attention).
        key_padding_mask_bm: Optional bool [b, m], True = real token.

    Returns:
        bool [n, m], or [b, 1, n, m] with key padding.
    """
    mask_nm = causal_mask(
        num_latents, num_keys, None if key_padding_mask_bm is None else key_padding_mask_bm.device
    )
    if key_padding_mask_bm is None:
        return mask_nm
    own_nm = torch.eye(num_latents, dtype=torch.bool, device=mask_nm.device)
    own_nm = F.pad(own_nm, (num_keys - num_latents, 0))
    return (key_padding_mask_bm[:, None, None, :] & mask_nm) | own_nm


@dataclass
class PerceiverARCache:
    """Generation state: cross-attention keys/values of all positions and the latent window.

    Attributes:
        k_bhmd: Cross-attention keys (rotary applied) of all m positions so far.
        v_bhme: Cross-attention values of all m positions.
        latents_bnc: Cross-attention layer outputs of the last n <= num_latents positions.
        latent_positions_bn: Positions ([b, n] or [1, n]) of those latents.
        key_padding_mask_bm: bool [b, m], True = real token; None without padding.
    """

    k_bhmd: Tensor
    v_bhme: Tensor
    latents_bnc: Tensor
    latent_positions_bn: Tensor
    key_padding_mask_bm: Tensor | None

    @property
    def seq_len(self) -> int:
        """Number of positions m seen so far (padding included)."""
        return self.k_bhmd.shape[2]


class PerceiverAR(nn.Module):
    """Perceiver AR causal language model (see the module docstring for the data flow).

    Args:
        cfg: Model hyperparameters. Parameters are allocated but not initialised: call
            `init_weights()` (allows construction on the meta device).
    """

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.num_channels
        common = dict(
            qk_channels=c,
            v_channels=c,
            num_heads=cfg.num_heads,
            dropout=cfg.dropout,
            residual_dropout=cfg.residual_dropout,
            qkv_bias=False,
            out_bias=False,
            mlp_bias=False,
        )
        self.token_embedding = nn.Embedding(cfg.vocab_size, c)
        self.position_embedding = nn.Embedding(cfg.max_seq_len, c) if cfg.abs_pos_emb else None
        self.cross_attention = CrossAttentionLayer(
            q_dim=c,
            kv_dim=c,
            widening_factor=cfg.cross_attention_widening_factor,
            use_query_residual=True,
            **common,
        )
        self.self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(
                dim=c, widening_factor=cfg.self_attention_widening_factor, causal=True, **common
            )
            for _ in range(cfg.num_self_attention_layers)
        )
        self.output_norm = nn.LayerNorm(c)
        self.output_proj = None if cfg.tie_embeddings else nn.Linear(c, cfg.vocab_size, bias=False)
        self.output_bias = nn.Parameter(torch.empty(cfg.vocab_size))

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_scale) weights and embeddings, zero biases, unit LayerNorm scales."""
        init_standard_weights(self, self.cfg.init_scale)
        with writable(self.output_bias):
            nn.init.zeros_(self.output_bias)

    def _rope(self, positions_bn: Tensor) -> Rope | None:
        if self.cfg.rotary_dim == 0:
            return None
        return rotary_embedding(positions_bn, self.cfg.rotary_dim, self.cfg.head_dim)

    def _embed(self, input_ids_bs: Tensor, positions_bs: Tensor) -> Tensor:
        x_bsc = self.token_embedding(input_ids_bs)
        if self.position_embedding is not None:
            x_bsc = x_bsc + self.position_embedding(positions_bs)
        return x_bsc

    def _self_attend(self, h_bnc: Tensor, positions_bn: Tensor, mask_bn: Tensor | None) -> Tensor:
        """Causal self-attention stack over the latents; returns normalised hidden states."""
        rope = self._rope(positions_bn)
        n = h_bnc.shape[1]
        attn_mask = None if mask_bn is None else perceiver_ar_mask(n, n, mask_bn)
        num_rotary = self.cfg.num_self_attention_rotary_layers
        for i, layer in enumerate(self.self_attention_layers):
            use_rope = num_rotary == -1 or i < num_rotary
            h_bnc = layer(h_bnc, rope=rope if use_rope else None, attn_mask=attn_mask)
        return self.output_norm(h_bnc)

    def _logits(self, h_bnc: Tensor) -> Tensor:
        weight = (
            self.token_embedding.weight if self.output_proj is None else self.output_proj.weight
        )
        return F.linear(h_bnc, weight, self.output_bias)

    def _encode(
        self, input_ids: Tensor, attention_mask: Tensor | None, prefix_dropout: float
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """Cross-attention of the latents: (h_bnc, latent positions, (k_bhmd, v_bhme))."""
        b, s = input_ids.shape
        if s > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {s} exceeds max_seq_len {self.cfg.max_seq_len}")
        n = min(self.cfg.num_latents, s)
        p = s - n
        if attention_mask is None:
            positions_bs = torch.arange(s, device=input_ids.device)[None]
        else:  # left padding: the first real token gets position 0
            positions_bs = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        x_bsc = self._embed(input_ids, positions_bs)
        x_kv_bmc, positions_kv_bm, mask_kv_bm = x_bsc, positions_bs, attention_mask
        keep = p - int(p * prefix_dropout)
        if keep < p:
            # Same number of prefix positions per row; the kept ones keep their positions (for
            # rotary). Their order does not matter: every latent sees the whole (kept) prefix.
            idx_bk = torch.rand(b, p, device=x_bsc.device).topk(keep, dim=1).indices
            x_prefix_bkc = x_bsc[:, :p].gather(1, idx_bk[..., None].expand(-1, -1, x_bsc.shape[-1]))
            x_kv_bmc = torch.cat([x_prefix_bkc, x_bsc[:, p:]], dim=1)
            positions_bs = positions_bs.expand(b, s)
            positions_kv_bm = torch.cat(
                [positions_bs[:, :p].gather(1, idx_bk), positions_bs[:, p:]], 1
            )
            if attention_mask is not None:
                kept_mask_bk = attention_mask[:, :p].gather(1, idx_bk)
                mask_kv_bm = torch.cat([kept_mask_bk, attention_mask[:, p:]], dim=1)
        positions_bn = positions_bs[:, p:]
        kv = self.cross_attention.keys_values(x_kv_bmc, self._rope(positions_kv_bm))
        m = x_kv_bmc.shape[1]
        attn_mask = None if mask_kv_bm is None else perceiver_ar_mask(n, m, mask_kv_bm)
        h_bnc = self.cross_attention(
            x_bsc[:, p:], kv=kv, causal=True, rope_q=self._rope(positions_bn), attn_mask=attn_mask
        )
        return h_bnc, positions_bn, kv

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        prefix_dropout: float | None = None,
    ) -> Tensor:
        """Next-token logits of the last n = min(num_latents, s) positions.

        Args:
            input_ids: long [b, s], s <= max_seq_len.
            attention_mask: Optional bool [b, s], True = real token; padding must be on the left
                (logits at padded positions are meaningless).
            prefix_dropout: Fraction of prefix positions to drop; default `cross_attention_dropout`
                in training mode and 0.0 in eval mode.

        Returns:
            Logits [b, n, vocab_size]; position i predicts token s - n + i + 1.
        """
        if prefix_dropout is None:
            prefix_dropout = self.cfg.cross_attention_dropout if self.training else 0.0
        attention_mask = padding_mask_or_none(attention_mask)
        h_bnc, positions_bn, _ = self._encode(input_ids, attention_mask, prefix_dropout)
        n = h_bnc.shape[1]
        mask_bn = None if attention_mask is None else attention_mask[:, -n:]
        return self._logits(self._self_attend(h_bnc, positions_bn, mask_bn))

    @torch.no_grad()
    def prefill(
        self, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> tuple[Tensor, PerceiverARCache]:
        """Processes a prompt (no prefix dropout): last-position logits [b, V] and the cache."""
        attention_mask = padding_mask_or_none(attention_mask)
        h_bnc, positions_bn, (k_bhmd, v_bhme) = self._encode(input_ids, attention_mask, 0.0)
        n = h_bnc.shape[1]
        mask_bn = None if attention_mask is None else attention_mask[:, -n:]
        hidden_bnc = self._self_attend(h_bnc, positions_bn, mask_bn)
        cache = PerceiverARCache(k_bhmd, v_bhme, h_bnc, positions_bn, attention_mask)
        return self._logits(hidden_bnc[:, -1]), cache

    @torch.no_grad()
    def decode_step(
        self, token_ids: Tensor, cache: PerceiverARCache
    ) -> tuple[Tensor, PerceiverARCache]:
        """Appends one token per row (long [b]); returns its next-token logits [b, V] and the cache.

        Equal to `forward(all_tokens)[:, -1]` in eval mode: the new position's keys/values join
        the cache, its cross-attention row is computed once, and the self-attention stack runs
        over the (cached) cross-attention outputs of the last num_latents positions.
        """
        if cache.seq_len >= self.cfg.max_seq_len:
            raise ValueError(f"the cache holds max_seq_len={self.cfg.max_seq_len} positions")
        positions_b1 = cache.latent_positions_bn[:, -1:] + 1
        x_b1c = self._embed(token_ids[:, None], positions_b1)
        rope = self._rope(positions_b1)
        k_new, v_new = self.cross_attention.keys_values(x_b1c, rope)
        k_bhmd = torch.cat([cache.k_bhmd, k_new], dim=2)
        v_bhme = torch.cat([cache.v_bhme, v_new], dim=2)
        mask_bm = cache.key_padding_mask_bm
        if mask_bm is not None:
            mask_bm = F.pad(mask_bm, (0, 1), value=True)
        h_b1c = self.cross_attention(
            x_b1c, kv=(k_bhmd, v_bhme), key_padding_mask_bm=mask_bm, rope_q=rope
        )
        n = self.cfg.num_latents
        latents_bnc = torch.cat([cache.latents_bnc, h_b1c], dim=1)[:, -n:]
        positions_bn = torch.cat([cache.latent_positions_bn, positions_b1], dim=1)[:, -n:]
        mask_bn = None if mask_bm is None else mask_bm[:, -latents_bnc.shape[1] :]
        hidden_bnc = self._self_attend(latents_bnc, positions_bn, mask_bn)
        cache = PerceiverARCache(k_bhmd, v_bhme, latents_bnc, positions_bn, mask_bm)
        return self._logits(hidden_bnc[:, -1]), cache

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        attention_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
    ) -> Tensor:
        """Samples `max_new_tokens` tokens per row with the KV cache (in eval mode).

        Args: as `stream`.

        Returns:
            long [b, s + max_new_tokens].
        """
        new = list(
            self.stream(
                input_ids, max_new_tokens, temperature, top_k, attention_mask, generator, top_p
            )
        )
        return torch.cat([input_ids, *(t[:, None] for t in new)], dim=1)

    @torch.no_grad()
    def stream(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        attention_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
    ) -> Iterator[Tensor]:
        """Yields the sampled tokens (long [b]) one step at a time, decoding with the KV cache.

        When the sequence reaches `max_seq_len`, the context is cropped to its last
        max(num_latents, max_seq_len - num_latents) tokens and re-prefilled (positions restart).

        Args:
            input_ids: long [b, s] prompt (left-padded if rows differ in length).
            max_new_tokens: Number of tokens to sample.
            temperature: Softmax temperature; 0 selects the most likely token (greedy).
            top_k: Sample only among the k most likely tokens.
            attention_mask: Optional bool [b, s], True = real token.
            generator: Random generator for sampling.
            top_p: Sample only from the smallest set of tokens whose probability reaches p.
        """
        was_training = self.training
        self.eval()
        try:
            tokens, mask = input_ids, attention_mask
            logits_bv, cache = self.prefill(tokens, mask)
            for step in range(max_new_tokens):
                next_b = _sample(logits_bv, temperature, top_k, generator, top_p)
                yield next_b
                tokens = torch.cat([tokens, next_b[:, None]], dim=1)
                if mask is not None:
                    mask = F.pad(mask.bool(), (0, 1), value=True)
                if step == max_new_tokens - 1:
                    break
                if cache.seq_len < self.cfg.max_seq_len:
                    logits_bv, cache = self.decode_step(next_b, cache)
                else:
                    keep = max(self.cfg.num_latents, self.cfg.max_seq_len - self.cfg.num_latents)
                    crop_mask = None if mask is None else mask[:, -keep:]
                    logits_bv, cache = self.prefill(tokens[:, -keep:], crop_mask)
        finally:
            self.train(was_training)


def _sample(
    logits_bv: Tensor,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
    top_p: float | None = None,
) -> Tensor:
    """Greedy (temperature 0) or temperature / top-k / top-p (nucleus) sampling, one token a row."""
    if temperature == 0.0:
        return logits_bv.argmax(dim=-1)
    logits_bv = logits_bv.float() / temperature
    if top_k is not None:
        kth_b1 = logits_bv.topk(min(top_k, logits_bv.shape[-1]), dim=-1).values[:, -1:]
        logits_bv = logits_bv.masked_fill(logits_bv < kth_b1, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_bv, order_bv = logits_bv.sort(dim=-1, descending=True)
        probs_bv = sorted_bv.softmax(dim=-1)
        # drop a token when the tokens more likely than it already reach top_p (never the first)
        drop_bv = probs_bv.cumsum(dim=-1) - probs_bv >= top_p
        logits_bv = logits_bv.masked_fill(
            torch.zeros_like(drop_bv).scatter(-1, order_bv, drop_bv), float("-inf")
        )
    probs_bv = logits_bv.softmax(dim=-1)
    return torch.multinomial(probs_bv, 1, generator=generator)[:, 0]
