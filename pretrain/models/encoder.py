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


@dataclass
class LatentEncoderConfig:
    """Latent-encoder and decoder-attention fields shared by the image, optical-flow and
    multimodal models (each subclass redeclares the fields whose defaults differ).

    Unset (None) attention channels resolve as HF's ``PerceiverConfig(qk_channels=None,
    v_channels=None)`` does: a cross-attention's query/key channels are its key/value input's
    channels (HF ``cross_attention_shape_for_attention="kv"``), a self-attention's the latent
    channels, and value channels default to the query/key channels. Subclasses define
    ``input_channels`` (what their input adapter produces) and call ``check_latent_fields``.

    Attributes:
        num_latents: Latents n (HF ``num_latents``).
        num_latent_channels: Latent channels D (HF ``d_latents``).
        num_cross_attention_heads: Heads of the encoder cross-attention.
        num_self_attention_heads: Heads of the latent self-attention.
        cross_attention_qk_channels: Encoder cross-attention q/k channels (None: input channels).
        cross_attention_v_channels: Its value channels (None: its q/k channels).
        self_attention_qk_channels: Self-attention q/k channels (None: D).
        self_attention_v_channels: Self-attention value channels (None: its q/k channels).
        cross_attention_widening_factor: MLP widening after the encoder cross-attention.
        self_attention_widening_factor: MLP widening in the self-attention layers.
        num_self_attention_layers_per_block: Distinct self-attention layers (HF
            ``num_self_attends_per_block``).
        num_self_attention_blocks: Applications of the block, shared weights (HF ``num_blocks``).
        use_query_residual: Residual from the latents around the encoder cross-attention.
        num_decoder_heads: Heads of the decoder cross-attention (HF: 1).
        decoder_qk_channels: Decoder q/k channels (None: D, the latents it attends to).
        decoder_v_channels: Decoder value channels (None: its q/k channels).
        dropout: Dropout on attention weights (HF ``attention_probs_dropout_prob``).
        init_scale: Standard deviation of the normal initialisation (HF ``initializer_range``).
    """

    num_latents: int = 512
    num_latent_channels: int = 1024
    num_cross_attention_heads: int = 1
    num_self_attention_heads: int = 8
    cross_attention_qk_channels: int | None = None
    cross_attention_v_channels: int | None = None
    self_attention_qk_channels: int | None = None
    self_attention_v_channels: int | None = None
    cross_attention_widening_factor: int = 1
    self_attention_widening_factor: int = 1
    num_self_attention_layers_per_block: int = 6
    num_self_attention_blocks: int = 8
    use_query_residual: bool = True
    num_decoder_heads: int = 1
    decoder_qk_channels: int | None = None
    decoder_v_channels: int | None = None
    dropout: float = 0.1
    init_scale: float = 0.02

    OPTIONAL_CHANNELS = tuple(
        f"{layer}_{kind}_channels"
        for layer in ("cross_attention", "self_attention", "decoder")
        for kind in ("qk", "v")
    )

    @property
    def input_channels(self) -> int:
        """Channels C of the input array the latents cross-attend (set by the subclass)."""
        raise NotImplementedError

    def check_latent_fields(
        self, skip: Collection[str] = (), optional: Collection[str] = ()
    ) -> None:
        """Positive ints (None allowed in the attention channels and in ``optional``), dropout
        and init_scale in range, channels divisible by their heads; ValueError naming the field.
        ``skip``: the subclass's fields that are not ints (it checks them itself)."""
        check_positive_ints(
            self,
            skip=("dropout", "init_scale", *skip),
            optional=(*self.OPTIONAL_CHANNELS, *optional),
        )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
        for layer, heads in (
            ("cross_attention", self.num_cross_attention_heads),
            ("self_attention", self.num_self_attention_heads),
            ("decoder", self.num_decoder_heads),
        ):
            for kind, channels in zip(("qk", "v"), self.attention_channels(layer)):
                if channels % heads:
                    raise ValueError(
                        f"{layer}_{kind}_channels ({channels}) must be divisible by {heads} heads"
                    )

    @property
    def num_self_attention_layers(self) -> int:
        """Self-attention layers applied in a forward pass (counting shared ones each time)."""
        return self.num_self_attention_layers_per_block * self.num_self_attention_blocks

    def attention_channels(self, layer: str) -> tuple[int, int]:
        """Resolved (qk, v) channels of ``"cross_attention"``, ``"self_attention"`` or
        ``"decoder"`` (see the class docstring)."""
        default = self.input_channels if layer == "cross_attention" else self.num_latent_channels
        qk = getattr(self, f"{layer}_qk_channels") or default
        return qk, getattr(self, f"{layer}_v_channels") or qk

    def encoder_spec(self) -> LatentEncoderSpec:
        """The latent encoder over the input adapter's ``input_channels``."""
        (cqk, cv), (sqk, sv) = (
            self.attention_channels(n) for n in ("cross_attention", "self_attention")
        )
        return LatentEncoderSpec(
            input_channels=self.input_channels,
            num_latents=self.num_latents,
            num_latent_channels=self.num_latent_channels,
            cross_qk=cqk,
            cross_v=cv,
            cross_heads=self.num_cross_attention_heads,
            cross_widening=self.cross_attention_widening_factor,
            use_query_residual=self.use_query_residual,
            self_qk=sqk,
            self_v=sv,
            self_heads=self.num_self_attention_heads,
            self_widening=self.self_attention_widening_factor,
            layers_per_block=self.num_self_attention_layers_per_block,
            num_blocks=self.num_self_attention_blocks,
            dropout=self.dropout,
        )

    def encoder_decoder_params(self, query_channels: int, widening: int = 1) -> int:
        """Parameters of the latent encoder and of the decoder cross-attention with queries of
        ``query_channels`` and an MLP of ``widening`` (what every subclass's ``num_params`` adds
        its adapters to)."""
        sizes = self.decoder_layer_sizes(query_channels)
        decoder = cross_attention_layer_params(**sizes, widening=widening)
        return self.encoder_spec().num_params() + decoder

    def encoder_decoder_flops(
        self, num_inputs: int, num_queries: int, query_channels: int, widening: int = 1
    ) -> int:
        """Forward matmul FLOPs of encoding ``num_inputs`` positions and decoding ``num_queries``
        queries of ``query_channels`` (decoder MLP of ``widening``)."""
        decoder = cross_attention_layer_flops(
            num_q=num_queries,
            num_kv=self.num_latents,
            **self.decoder_layer_sizes(query_channels),
            widening=widening,
        )
        return self.encoder_spec().forward_flops(num_inputs) + decoder

    def decoder_layer_sizes(self, query_channels: int) -> dict[str, int]:
        """Sizes of a decoder cross-attention with queries of ``query_channels``
        (``pretrain.models.flops`` arguments)."""
        qk, v = self.attention_channels("decoder")
        return dict(q_dim=query_channels, kv_dim=self.num_latent_channels, qk=qk, v=v)

    def decoder_cross_attention_layer(
        self, query_channels: int, query_residual: bool, widening: int = 1
    ):
        """The decoder's ``CrossAttentionLayer`` (queries of ``query_channels``; HF's decoders
        have an MLP of widening 1)."""
        sizes = self.decoder_layer_sizes(query_channels)
        return CrossAttentionLayer(
            q_dim=sizes["q_dim"],
            kv_dim=sizes["kv_dim"],
            qk_channels=sizes["qk"],
            v_channels=sizes["v"],
            num_heads=self.num_decoder_heads,
            widening_factor=widening,
            use_query_residual=query_residual,
            dropout=self.dropout,
        )
