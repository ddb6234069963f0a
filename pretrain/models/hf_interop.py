"""Weight conversion between `PerceiverMLM` and HF `transformers.PerceiverForMaskedLM`, and what
every HF conversion uses (`pretrain.models.hf_vision` too): the attention-layer key tables and the
latent-encoder field mapping (`latent_fields_to_hf`, `latent_fields_from_hf`).

The two models compute the same function; only parameter names differ and our self-attention
(`qkv_proj`) and cross-attention (`kv_proj`) projections are row-wise concatenations of HF's
separate query/key/value Linears. `transformers` is imported lazily (only `hf_config` and
`config_from_hf` need it), so the model package does not depend on it.

    hf = PerceiverForMaskedLM(hf_config(cfg))
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg))
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pretrain.models.perceiver_io import PerceiverIOConfig

if TYPE_CHECKING:
    from transformers import PerceiverConfig

    from pretrain.models.encoder import LatentEncoderConfig

HF_DECODER_QK_CHANNELS = 8 * 32  # hard-coded in HF PerceiverForMaskedLM
HF_DECODER_HEADS = 8

# (our suffix, HF suffix) inside one attention layer; the fused projections are handled apart.
_LAYER_KEYS = [
    ("attention.o_proj.weight", "attention.output.dense.weight"),
    ("attention.o_proj.bias", "attention.output.dense.bias"),
    ("mlp_norm.weight", "layernorm.weight"),
    ("mlp_norm.bias", "layernorm.bias"),
    ("mlp.fc1.weight", "mlp.dense1.weight"),
    ("mlp.fc1.bias", "mlp.dense1.bias"),
    ("mlp.fc2.weight", "mlp.dense2.weight"),
    ("mlp.fc2.bias", "mlp.dense2.bias"),
]
_CROSS_KEYS = _LAYER_KEYS + [
    ("q_norm.weight", "attention.self.layernorm1.weight"),
    ("q_norm.bias", "attention.self.layernorm1.bias"),
    ("kv_norm.weight", "attention.self.layernorm2.weight"),
    ("kv_norm.bias", "attention.self.layernorm2.bias"),
    ("attention.q_proj.weight", "attention.self.query.weight"),
    ("attention.q_proj.bias", "attention.self.query.bias"),
]
_SELF_KEYS = _LAYER_KEYS + [
    ("norm.weight", "attention.self.layernorm1.weight"),
    ("norm.bias", "attention.self.layernorm1.bias"),
]
_TOP_KEYS = [
    ("token_embedding.weight", "perceiver.input_preprocessor.embeddings.weight"),
    ("position_embedding.weight", "perceiver.input_preprocessor.position_embeddings.weight"),
    ("latents", "perceiver.embeddings.latents"),
    ("output_queries", "perceiver.decoder.output_position_encodings.position_embeddings"),
    ("output_bias", "embedding_decoder.bias"),
]


def check_hf_compatible(cfg: PerceiverIOConfig) -> None:
    """Raises ValueError naming the field if HF's PerceiverForMaskedLM cannot represent `cfg`."""
    pairs = [
        ("cross_attention_qk_channels", "self_attention_qk_channels"),
        ("cross_attention_v_channels", "self_attention_v_channels"),
        ("self_attention_v_channels", "num_latent_channels"),
    ]
    for a, b in pairs:
        if getattr(cfg, a) != getattr(cfg, b):
            raise ValueError(
                f"HF Perceiver needs {a} == {b} ({getattr(cfg, a)} != {getattr(cfg, b)})"
            )
    if cfg.decoder_qk_channels != HF_DECODER_QK_CHANNELS:
        raise ValueError(f"HF Perceiver needs decoder_qk_channels == {HF_DECODER_QK_CHANNELS}")
    if cfg.num_decoder_heads != HF_DECODER_HEADS:
        raise ValueError(f"HF Perceiver needs num_decoder_heads == {HF_DECODER_HEADS}")
    for name in ("num_cross_attention_heads", "num_self_attention_heads"):
        if cfg.num_latent_channels % getattr(cfg, name):
            raise ValueError(f"HF Perceiver needs num_latent_channels divisible by {name}")


def latent_fields_to_hf(
    cfg: PerceiverIOConfig | LatentEncoderConfig,
    d_model: int,
    qk_channels: int | None,
    v_channels: int | None,
) -> dict[str, Any]:
    """``transformers.PerceiverConfig`` arguments of the latent encoder of ``cfg`` (any of our
    Perceiver IO configs: they share the latent field names), with HF's ``d_model`` (the input
    channels) and its one (qk_channels, v_channels) pair that the caller resolved."""
    return dict(
        num_latents=cfg.num_latents,
        d_latents=cfg.num_latent_channels,
        d_model=d_model,
        num_blocks=cfg.num_self_attention_blocks,
        num_self_attends_per_block=cfg.num_self_attention_layers_per_block,
        num_self_attention_heads=cfg.num_self_attention_heads,
        num_cross_attention_heads=cfg.num_cross_attention_heads,
        qk_channels=qk_channels,
        v_channels=v_channels,
        self_attention_widening_factor=cfg.self_attention_widening_factor,
        cross_attention_widening_factor=cfg.cross_attention_widening_factor,
        hidden_act="gelu",
        attention_probs_dropout_prob=cfg.dropout,
        initializer_range=cfg.init_scale,
        use_query_residual=cfg.use_query_residual,
    )


def latent_fields_from_hf(hf_cfg: Any) -> dict[str, Any]:
    """Our latent-encoder fields (the names every Perceiver IO config shares) of a
    ``transformers.PerceiverConfig``: its one qk_channels / v_channels pair goes to both the
    cross- and the self-attention (a caller changes what its HF class resolves otherwise)."""
    qk, v = hf_cfg.qk_channels, hf_cfg.v_channels
    return dict(
        num_latents=hf_cfg.num_latents,
        num_latent_channels=hf_cfg.d_latents,
        num_cross_attention_heads=hf_cfg.num_cross_attention_heads,
        num_self_attention_heads=hf_cfg.num_self_attention_heads,
        cross_attention_qk_channels=qk,
        cross_attention_v_channels=v,
        self_attention_qk_channels=qk,
        self_attention_v_channels=v,
        cross_attention_widening_factor=hf_cfg.cross_attention_widening_factor,
        self_attention_widening_factor=hf_cfg.self_attention_widening_factor,
        num_self_attention_layers_per_block=hf_cfg.num_self_attends_per_block,
        num_self_attention_blocks=hf_cfg.num_blocks,
        use_query_residual=hf_cfg.use_query_residual,
        dropout=hf_cfg.attention_probs_dropout_prob,
        init_scale=hf_cfg.initializer_range,
    )


def hf_config(cfg: PerceiverIOConfig) -> PerceiverConfig:
    """The `transformers.PerceiverConfig` of the HF model equivalent to `cfg`."""
    from transformers import PerceiverConfig

    check_hf_compatible(cfg)
    qk, v = cfg.self_attention_qk_channels, cfg.self_attention_v_channels
    return PerceiverConfig(
        **latent_fields_to_hf(cfg, cfg.num_input_channels, qk, v),
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_seq_len,
    )


def config_from_hf(hf_cfg: Any) -> PerceiverIOConfig:
    """Our `PerceiverIOConfig` for a `transformers.PerceiverConfig` (its qk/v channels set)."""
    if hf_cfg.qk_channels is None or hf_cfg.v_channels is None:
        raise ValueError("qk_channels and v_channels must be set in the HF config")
    return PerceiverIOConfig(
        vocab_size=hf_cfg.vocab_size,
        max_seq_len=hf_cfg.max_position_embeddings,
        num_input_channels=hf_cfg.d_model,
        **latent_fields_from_hf(hf_cfg),
    )


def _layer_prefixes(cfg: PerceiverIOConfig) -> list[tuple[str, str, bool]]:
    """(our prefix, HF prefix, is_cross_attention) of every attention layer."""
    decoder = ("decoder_cross_attention.", "perceiver.decoder.decoding_cross_attention.", True)
    return [decoder, *encoder_layer_prefixes(cfg.num_self_attention_layers_per_block)]


LayerPrefixes = list[tuple[str, str, bool]]  # (our prefix, HF prefix, is_cross_attention)


def layers_to_hf(state_dict: Mapping[str, Tensor], layers: LayerPrefixes) -> dict[str, Tensor]:
    """HF names and layouts of the attention layers at ``layers`` (our fused q/k/v projections
    split into HF's separate query, key and value Linears)."""
    out = {}
    for ours_prefix, hf_prefix, is_cross in layers:
        for ours, hf in _CROSS_KEYS if is_cross else _SELF_KEYS:
            out[hf_prefix + hf] = state_dict[ours_prefix + ours]
        v = state_dict[ours_prefix + "attention.o_proj.weight"].shape[1]
        names = ["key", "value"] if is_cross else ["query", "key", "value"]
        fused = "attention.kv_proj." if is_cross else "attention.qkv_proj."
        for param in ("weight", "bias"):
            fused_tensor = state_dict[ours_prefix + fused + param]
            qk = (fused_tensor.shape[0] - v) // (len(names) - 1)
            sizes = [qk] * (len(names) - 1) + [v]
            for name, part in zip(names, fused_tensor.split(sizes, dim=0)):
                out[f"{hf_prefix}attention.self.{name}.{param}"] = part.clone()
    return out


def layers_from_hf(hf_state_dict: Mapping[str, Tensor], layers: LayerPrefixes) -> dict[str, Tensor]:
    """Our names and layouts of HF's attention layers at ``layers`` (inverse of
    ``layers_to_hf``)."""
    out = {}
    for ours_prefix, hf_prefix, is_cross in layers:
        for ours, hf in _CROSS_KEYS if is_cross else _SELF_KEYS:
            out[ours_prefix + ours] = hf_state_dict[hf_prefix + hf]
        names = ["key", "value"] if is_cross else ["query", "key", "value"]
        fused = "attention.kv_proj." if is_cross else "attention.qkv_proj."
        for param in ("weight", "bias"):
            parts = [hf_state_dict[f"{hf_prefix}attention.self.{name}.{param}"] for name in names]
            out[ours_prefix + fused + param] = torch.cat(parts, dim=0)
    return out


def encoder_layer_prefixes(num_self_attention_layers: int) -> LayerPrefixes:
    """The latent encoder's layers: ``perceiver.encoder.*`` in every HF Perceiver model."""
    layers = [("cross_attention.", "perceiver.encoder.cross_attention.", True)]
    for i in range(num_self_attention_layers):
        layers.append(
            (f"self_attention_layers.{i}.", f"perceiver.encoder.self_attends.{i}.", False)
        )
    return layers


def to_hf_state_dict(state_dict: Mapping[str, Tensor], cfg: PerceiverIOConfig) -> dict[str, Tensor]:
    """Converts a `PerceiverMLM` state dict to `PerceiverForMaskedLM` names and layouts."""
    check_hf_compatible(cfg)
    out = {hf: state_dict[ours] for ours, hf in _TOP_KEYS}
    return {**out, **layers_to_hf(state_dict, _layer_prefixes(cfg))}


def from_hf_state_dict(
    hf_state_dict: Mapping[str, Tensor], cfg: PerceiverIOConfig
) -> dict[str, Tensor]:
    """Converts a `PerceiverForMaskedLM` state dict to `PerceiverMLM` names and layouts."""
    check_hf_compatible(cfg)
    out = {ours: hf_state_dict[hf] for ours, hf in _TOP_KEYS}
    return {**out, **layers_from_hf(hf_state_dict, _layer_prefixes(cfg))}
