"""Perceiver IO masked language model (Jaegle et al., 2021), mirroring HF `PerceiverForMaskedLM`.

Module for module the same computation as `transformers.PerceiverForMaskedLM`, so weights convert
both ways (`pretrain.models.hf_interop`):

    tokens [b, s] -> token_embedding + position_embedding      -> x_bsc  (c = d_model)
    latents [n, D] --cross_attention(x)-->                        z_bnD  (encoder)
    z --self_attention_layers x num_self_attention_blocks-->      z_bnD  (shared weights per block)
    output_queries[positions] --decoder_cross_attention(z)-->     h_bkc  (no query residual)
    h @ token_embedding.T + output_bias                        -> logits_bkv

The fused `qkv_proj`/`kv_proj` weights are concatenations of HF's separate query/key/value
Linears. Decoder queries are independent of each other, so `output_positions` decodes only the
positions that carry a label (exact, and it skips ~85% of the decoder's work in MLM training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.attention import (
    CrossAttentionLayer,
    init_standard_weights,
    padding_mask_or_none,
    writable,
)
from pretrain.models.encoder import LatentEncoder, LatentEncoderSpec, check_positive_ints
from pretrain.models.flops import cross_attention_layer_flops, cross_attention_layer_params


@dataclass
class PerceiverIOConfig:
    """Hyperparameters of `PerceiverMLM`; the defaults are the paper's 201M byte-level model.

    Attributes:
        vocab_size: Number of token ids.
        max_seq_len: Maximum input length (learned input positions and decoder queries).
        num_input_channels: Channels of the token/position embeddings (HF `d_model`).
        num_latents: Number of latents (HF `num_latents`).
        num_latent_channels: Channels of the latents (HF `d_latents`).
        num_cross_attention_heads: Heads of the encoder cross-attention.
        num_self_attention_heads: Heads of the latent self-attention.
        cross_attention_qk_channels: Query/key channels of the encoder cross-attention.
        cross_attention_v_channels: Value channels of the encoder cross-attention.
        self_attention_qk_channels: Query/key channels of the latent self-attention.
        self_attention_v_channels: Value channels of the latent self-attention.
        cross_attention_widening_factor: MLP widening factor after the encoder cross-attention.
        self_attention_widening_factor: MLP widening factor in the self-attention layers.
        num_self_attention_layers_per_block: Distinct self-attention layers (HF
            `num_self_attends_per_block`).
        num_self_attention_blocks: How often the block of layers is applied, with shared weights
            (HF `num_blocks`).
        use_query_residual: Residual from the latents around the encoder cross-attention.
        num_decoder_heads: Heads of the decoder cross-attention (HF: 8).
        decoder_qk_channels: Query/key channels of the decoder cross-attention (HF: 8 * 32).
        dropout: Dropout on attention weights (HF `attention_probs_dropout_prob`).
        init_scale: Standard deviation of the normal initialisation (HF `initializer_range`).
    """

    type: ClassVar[str] = "perceiver_io_mlm"  # `model.type` in a config file
    vocab_size: int = 262
    max_seq_len: int = 2048
    num_input_channels: int = 768
    num_latents: int = 256
    num_latent_channels: int = 1280
    num_cross_attention_heads: int = 8
    num_self_attention_heads: int = 8
    cross_attention_qk_channels: int = 256
    cross_attention_v_channels: int = 1280
    self_attention_qk_channels: int = 256
    self_attention_v_channels: int = 1280
    cross_attention_widening_factor: int = 1
    self_attention_widening_factor: int = 1
    num_self_attention_layers_per_block: int = 26
    num_self_attention_blocks: int = 1
    use_query_residual: bool = True
    num_decoder_heads: int = 8
    decoder_qk_channels: int = 256
    dropout: float = 0.1
    init_scale: float = 0.02

    def __post_init__(self) -> None:
        check_positive_ints(self, skip=("dropout", "init_scale"))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
        for prefix, heads in (
            ("cross_attention", self.num_cross_attention_heads),
            ("self_attention", self.num_self_attention_heads),
        ):
            for kind in ("qk", "v"):
                name = f"{prefix}_{kind}_channels"
                if getattr(self, name) % heads:
                    raise ValueError(f"{name} ({getattr(self, name)}) must be divisible by {heads}")
        for name in ("decoder_qk_channels", "num_input_channels"):
            if getattr(self, name) % self.num_decoder_heads:
                raise ValueError(f"{name} must be divisible by num_decoder_heads")

    @property
    def num_self_attention_layers(self) -> int:
        """Self-attention layers applied in a forward pass (counting shared ones each time)."""
        return self.num_self_attention_layers_per_block * self.num_self_attention_blocks

    def encoder_spec(self) -> LatentEncoderSpec:
        """The latent encoder over the token + position embeddings (`num_input_channels`)."""
        return LatentEncoderSpec(
            input_channels=self.num_input_channels,
            num_latents=self.num_latents,
            num_latent_channels=self.num_latent_channels,
            cross_qk=self.cross_attention_qk_channels,
            cross_v=self.cross_attention_v_channels,
            cross_heads=self.num_cross_attention_heads,
            cross_widening=self.cross_attention_widening_factor,
            use_query_residual=self.use_query_residual,
            self_qk=self.self_attention_qk_channels,
            self_v=self.self_attention_v_channels,
            self_heads=self.num_self_attention_heads,
            self_widening=self.self_attention_widening_factor,
            layers_per_block=self.num_self_attention_layers_per_block,
            num_blocks=self.num_self_attention_blocks,
            dropout=self.dropout,
        )

    def decoder_layer_sizes(self) -> dict[str, int]:
        """Sizes of the decoder cross-attention (`pretrain.models.flops` arguments)."""
        c = self.num_input_channels
        return dict(q_dim=c, kv_dim=self.num_latent_channels, qk=self.decoder_qk_channels, v=c)

    def num_params(self) -> int:
        """Analytic number of parameters (the embedding is tied to the MLM head)."""
        c, s, v = self.num_input_channels, self.max_seq_len, self.vocab_size
        embeddings = v * c + 2 * s * c + v
        decoder = cross_attention_layer_params(**self.decoder_layer_sizes(), widening=1)
        return embeddings + self.encoder_spec().num_params() + decoder

    def flops_per_sample(
        self, seq_len: int | None = None, num_output_positions: int | None = None
    ) -> int:
        """Forward + backward matmul FLOPs for one sample (3 x the forward's 2 * m * n * k).

        Args:
            seq_len: Input length (default `max_seq_len`).
            num_output_positions: Decoded positions per sample (default: all `seq_len`; pass the
                number of `output_positions` when decoding only masked positions).

        Returns:
            FLOPs of one training step for one sample (embedding lookups and elementwise ops are
            not counted).
        """
        s = self.max_seq_len if seq_len is None else seq_len
        k = s if num_output_positions is None else num_output_positions
        forward = (
            self.encoder_spec().forward_flops(s)
            + cross_attention_layer_flops(
                num_q=k, num_kv=self.num_latents, **self.decoder_layer_sizes(), widening=1
            )
            + 2 * k * self.num_input_channels * self.vocab_size
        )
        return 3 * forward


class PerceiverIOEncoder(LatentEncoder):
    """The text input adapter (token + position embeddings) and the latent encoder, shared by
    every text head (`PerceiverMLM`, `PerceiverClassifier`).

    Heads subclass it and add their decoder; parameter names stay those of `PerceiverMLM`, so
    pretrained encoder weights load unchanged into any head.

    Args:
        cfg: Model hyperparameters (the encoder fields of `PerceiverIOConfig`).
    """

    def __init__(self, cfg: PerceiverIOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.num_input_channels)
        self.position_embedding = nn.Embedding(cfg.max_seq_len, cfg.num_input_channels)
        self.build_latent_encoder(cfg.encoder_spec())

    def decoder_cross_attention_layer(self) -> CrossAttentionLayer:
        """The decoder cross-attention of the MLM (queries of `num_input_channels`)."""
        cfg = self.cfg
        return CrossAttentionLayer(
            q_dim=cfg.num_input_channels,
            kv_dim=cfg.num_latent_channels,
            qk_channels=cfg.decoder_qk_channels,
            v_channels=cfg.num_input_channels,
            num_heads=cfg.num_decoder_heads,
            widening_factor=1,
            use_query_residual=False,
            dropout=cfg.dropout,
        )

    @torch.no_grad()
    def init_weights(self) -> None:
        """HF initialisation: N(0, init_scale) for weights, embeddings and latents; heads extend
        it for their own parameters."""
        init_standard_weights(self, self.cfg.init_scale)
        self.init_latents(self.cfg.init_scale)

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Embeds the tokens and returns the processed latents z_bnD.

        Args:
            input_ids: long [b, s] with s <= max_seq_len.
            attention_mask: Optional bool [b, s], True = real token (padding is never attended).
        """
        s = input_ids.shape[1]
        if s > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {s} exceeds max_seq_len {self.cfg.max_seq_len}")
        x_bsc = self.token_embedding(input_ids) + self.position_embedding.weight[:s]
        # packed sequences need no mask
        return self.encode_inputs(x_bsc, padding_mask_or_none(attention_mask))


class PerceiverMLM(PerceiverIOEncoder):
    """Perceiver IO masked language model (see the module docstring for the data flow).

    Args:
        cfg: Model hyperparameters. Parameters are allocated but not initialised: call
            `init_weights()` (allows construction on the meta device).
    """

    def __init__(self, cfg: PerceiverIOConfig) -> None:
        super().__init__(cfg)
        self.output_queries = nn.Parameter(torch.empty(cfg.max_seq_len, cfg.num_input_channels))
        self.decoder_cross_attention = self.decoder_cross_attention_layer()
        self.output_bias = nn.Parameter(torch.empty(cfg.vocab_size))

    @torch.no_grad()
    def init_weights(self) -> None:
        """HF initialisation: N(0, init_scale) for weights, embeddings, latents and queries."""
        super().init_weights()
        with writable(self.output_queries, self.output_bias):
            nn.init.normal_(self.output_queries, std=self.cfg.init_scale)
            nn.init.zeros_(self.output_bias)

    def decode(self, z_bnd: Tensor, queries_bkc: Tensor) -> Tensor:
        """Cross-attends decoder queries (rows of `output_queries`) to the latents z_bnD.

        Returns:
            Logits [b, k, vocab_size].
        """
        h_bkc = self.decoder_cross_attention(queries_bkc, z_bnd)
        return F.linear(h_bkc, self.token_embedding.weight, self.output_bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        output_positions: Tensor | None = None,
    ) -> Tensor:
        """Masked-LM logits.

        Args:
            input_ids: long [b, s].
            attention_mask: Optional bool [b, s], True = real token.
            output_positions: Optional long [b, k] positions to decode (e.g. the masked ones;
                rows may repeat a position to pad to a common k). None decodes all s positions.

        Returns:
            Logits [b, s, vocab_size], or [b, k, vocab_size] with `output_positions`.
        """
        z_bnd = self.encode(input_ids, attention_mask)
        if output_positions is None:
            b, s = input_ids.shape
            queries_bkc = self.output_queries[:s].expand(b, -1, -1)
        else:
            queries_bkc = self.output_queries[output_positions]
        return self.decode(z_bnd, queries_bkc)
