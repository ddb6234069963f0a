"""The Perceiver IO latent encoder, shared by every Perceiver IO model (MLM, classifier,
multimodal autoencoder, and the image / optical-flow models to come).

    x_bmC (from the model's input adapter: token embeddings, patches + Fourier features, ...)
    latents [n, D] --cross_attention(x)-->                      z_bnD
    z --self_attention_layers x num_self_attention_blocks-->     z_bnD  (shared weights per block)

A model subclasses :class:`LatentEncoder`, registers its input adapter's parameters, then calls
``build_latent_encoder``: the encoder's parameters are attributes of the model itself
(``latents``, ``cross_attention.*``, ``self_attention_layers.*``), so the state-dict keys are those
of HF's checkpoints and of every checkpoint this repository wrote, and activation checkpointing
finds ``self_attention_layers`` on the model (``pretrain.train.parallelize``).

Also here: ``check_positive_ints``, the field check every model config runs first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.models.attention import CrossAttentionLayer, SelfAttentionLayer, writable
from pretrain.models.flops import (
    cross_attention_layer_flops,
    cross_attention_layer_params,
    self_attention_layer_flops,
    self_attention_layer_params,
)


def check_positive_ints(cfg: Any, skip: Collection[str] = (), optional: Collection[str] = ()):
    """Refuses (ValueError naming the field) any field of the dataclass ``cfg`` that is not a
    positive int, except bools, the fields in ``skip``, and None in the fields in ``optional``."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or f.name in skip or (value is None and f.name in optional):
            continue
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{f.name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class LatentEncoderSpec:
    """Sizes of a latent encoder, derived by each model config from its own fields.

    Attributes:
        input_channels: Channels C of the input array x_bmC (the input adapter's output).
        num_latents: Latents n.
        num_latent_channels: Latent channels D.
        cross_qk: Query/key channels of the encoder cross-attention.
        cross_v: Its value channels.
        cross_heads: Its heads.
        cross_widening: MLP widening factor after it.
        use_query_residual: Residual from the latents around the cross-attention.
        self_qk: Query/key channels of the latent self-attention.
        self_v: Its value channels.
        self_heads: Its heads.
        self_widening: MLP widening factor of the self-attention layers.
        layers_per_block: Distinct self-attention layers.
        num_blocks: Applications of the block of layers (shared weights).
        dropout: Dropout on attention weights.
    """

    input_channels: int
    num_latents: int
    num_latent_channels: int
    cross_qk: int
    cross_v: int
    cross_heads: int
    cross_widening: int
    use_query_residual: bool
    self_qk: int
    self_v: int
    self_heads: int
    self_widening: int
    layers_per_block: int
    num_blocks: int
    dropout: float

    def num_params(self) -> int:
        """Parameters of the latents, the cross-attention and the self-attention layers."""
        d = self.num_latent_channels
        cross = cross_attention_layer_params(
            d, self.input_channels, self.cross_qk, self.cross_v, self.cross_widening
        )
        layer = self_attention_layer_params(d, self.self_qk, self.self_v, self.self_widening)
        return self.num_latents * d + cross + self.layers_per_block * layer

    def forward_flops(self, num_inputs: int) -> int:
        """Forward matmul FLOPs of encoding ``num_inputs`` input positions."""
        n, d = self.num_latents, self.num_latent_channels
        cross = cross_attention_layer_flops(
            n, num_inputs, d, self.input_channels, self.cross_qk, self.cross_v, self.cross_widening
        )
        layer = self_attention_layer_flops(n, d, self.self_qk, self.self_v, self.self_widening)
        return cross + self.layers_per_block * self.num_blocks * layer


class LatentEncoder(nn.Module):
    """Base class of the Perceiver IO models: learned latents that cross-attend the input array,
    then a stack of latent self-attention layers (see the module docstring)."""

    def build_latent_encoder(self, spec: LatentEncoderSpec) -> None:
        """Registers ``latents``, ``cross_attention`` and ``self_attention_layers``."""
        self.encoder_spec = spec
        d = spec.num_latent_channels
        self.latents = nn.Parameter(torch.empty(spec.num_latents, d))
        self.cross_attention = CrossAttentionLayer(
            q_dim=d,
            kv_dim=spec.input_channels,
            qk_channels=spec.cross_qk,
            v_channels=spec.cross_v,
            num_heads=spec.cross_heads,
            widening_factor=spec.cross_widening,
            use_query_residual=spec.use_query_residual,
            dropout=spec.dropout,
        )
        self.self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(
                dim=d,
                qk_channels=spec.self_qk,
                v_channels=spec.self_v,
                num_heads=spec.self_heads,
                widening_factor=spec.self_widening,
                dropout=spec.dropout,
            )
            for _ in range(spec.layers_per_block)
        )

    @torch.no_grad()
    def init_latents(self, std: float) -> None:
        """N(0, std) latents (the layers are initialised with the model's other modules)."""
        with writable(self.latents):
            nn.init.normal_(self.latents, std=std)

    def encode_inputs(self, x_bmc: Tensor, key_padding_mask_bm: Tensor | None = None) -> Tensor:
        """The latents z_bnD after the cross-attention to ``x_bmc`` and the self-attention stack.

        Args:
            x_bmc: The input adapter's output [b, m, input_channels].
            key_padding_mask_bm: Optional bool [b, m], True = real input (None: attend all).
        """
        latents_bnd = self.latents.expand(x_bmc.shape[0], -1, -1)
        z_bnd = self.cross_attention(latents_bnd, x_bmc, key_padding_mask_bm=key_padding_mask_bm)
        for _ in range(self.encoder_spec.num_blocks):
            for layer in self.self_attention_layers:
                z_bnd = layer(z_bnd)
        return z_bnd
