"""Weight conversion between the image / optical-flow models and HF's Perceiver classes.

    PerceiverImageClassifier "fourier"  <->  PerceiverForImageClassificationFourier
    PerceiverImageClassifier "learned"  <->  PerceiverForImageClassificationLearned
    PerceiverImageClassifier "conv"     <->  PerceiverForImageClassificationConvProcessing
    PerceiverOpticalFlow                <->  PerceiverForOpticalFlow

The models compute the same functions; parameter names differ, and our fused q/k/v projections
are concatenations of HF's separate Linears (the attention-layer tables of
``pretrain.models.hf_interop``). HF hard-codes what our configs make fields (the Fourier bands and
resolutions, the preprocessing channels, the flow scale): ``check_hf_compatible`` refuses, naming
the field, what HF cannot represent, and ``config_from_hf`` refuses an HF config our models cannot
represent. HF's optical-flow model takes the 3x3 patches of both frames
(``pretrain.models.optical_flow.extract_patches``); ours takes the frames. ``transformers`` is
imported lazily.

    hf = hf_model_class(cfg)(hf_config(cfg))
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg))
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.models.hf_interop import (
    encoder_layer_prefixes,
    latent_fields_from_hf,
    latent_fields_to_hf,
    layers_from_hf,
    layers_to_hf,
)
from pretrain.models.image_classifier import PerceiverImageClassifierConfig
from pretrain.models.optical_flow import PerceiverOpticalFlowConfig

VisionConfig = PerceiverImageClassifierConfig | PerceiverOpticalFlowConfig

IMAGE_CLASSES = {
    "fourier": "PerceiverForImageClassificationFourier",
    "learned": "PerceiverForImageClassificationLearned",
    "conv": "PerceiverForImageClassificationConvProcessing",
}
FLOW_CLASS = "PerceiverForOpticalFlow"
ARCHITECTURES = {
    **{name: "perceiver_io_image_classifier" for name in IMAGE_CLASSES.values()},
    FLOW_CLASS: "perceiver_io_optical_flow",
}
# What HF's classes hard-code: field -> value, per class.
_HF_FIXED = {
    "fourier": {"num_image_channels": 3, "num_frequency_bands": 64, "fourier_resolution": 224},
    "learned": {"num_image_channels": 3, "prep_channels": 256},
    "conv": {
        "num_image_channels": 3,
        "num_frequency_bands": 64,
        "fourier_resolution": 56,
        "prep_channels": 64,
    },
    "flow": {
        "num_image_channels": 3,
        "num_frequency_bands": 64,
        "num_patch_channels": 64,
        "flow_scale": 100.0,
        "patch_size": 3,
        "decoder_query_residual": False,
        "decoder_widening_factor": 1,
        "correlation_radius": 0,
    },
}
_FIELD_OF = {
    "fourier_resolution": "fourier_max_resolution",
    "prep_channels": "preprocessing_channels",
}
_DECODER = "perceiver.decoder.decoder."


def hf_class_name(cfg: VisionConfig) -> str:
    """The name of the ``transformers`` class equivalent to ``cfg``."""
    if isinstance(cfg, PerceiverOpticalFlowConfig):
        return FLOW_CLASS
    return IMAGE_CLASSES[cfg.preprocessing]


def hf_model_class(cfg: VisionConfig) -> type:
    """The ``transformers`` class equivalent to ``cfg``."""
    import transformers

    return getattr(transformers, hf_class_name(cfg))


def _kind(cfg: VisionConfig) -> str:
    return "flow" if isinstance(cfg, PerceiverOpticalFlowConfig) else cfg.preprocessing


def _hf_channels(cfg: VisionConfig) -> tuple[int | None, int | None]:
    """HF's shared (qk_channels, v_channels) that resolve to our four attention channel counts.

    HF resolves one pair for the encoder's cross- and self-attention: cross q/k = qk_channels or
    the input channels, self q/k = qk_channels or D, each v = v_channels or its q/k.
    """
    (cqk, cv), (sqk, sv) = (
        cfg.attention_channels(n) for n in ("cross_attention", "self_attention")
    )
    c, d = cfg.input_channels, cfg.num_latent_channels
    for qk in (None, cqk):
        for v in (None, cv):
            hf_cqk, hf_sqk = qk or c, qk or d
            if (hf_cqk, v or hf_cqk, hf_sqk, v or hf_sqk) == (cqk, cv, sqk, sv):
                return qk, v
    raise ValueError(
        "HF Perceiver shares qk_channels / v_channels between the cross- and self-attention: "
        f"cross_attention_qk_channels={cqk}, cross_attention_v_channels={cv}, "
        f"self_attention_qk_channels={sqk}, self_attention_v_channels={sv} cannot be represented"
    )


def check_hf_compatible(cfg: VisionConfig) -> None:
    """Raises ValueError naming the field if HF's class cannot represent ``cfg``."""
    for name, value in _HF_FIXED[_kind(cfg)].items():
        if getattr(cfg, name) != value:
            raise ValueError(
                f"{_FIELD_OF.get(name, name)}: HF {hf_class_name(cfg)} fixes it at {value}, "
                f"got {getattr(cfg, name)}"
            )
    _hf_channels(cfg)
    d = cfg.num_latent_channels
    if cfg.attention_channels("self_attention")[1] != d:
        raise ValueError(f"self_attention_v_channels: HF needs num_latent_channels ({d})")
    if cfg.attention_channels("decoder") != (d, d):
        raise ValueError(
            f"decoder_qk_channels / decoder_v_channels: HF's decoder uses num_latent_channels ({d})"
        )
    if cfg.num_decoder_heads != 1:
        raise ValueError("num_decoder_heads: HF's decoder has 1 head")


def hf_config(cfg: VisionConfig) -> Any:
    """The ``transformers.PerceiverConfig`` of the HF model equivalent to ``cfg``."""
    from transformers import PerceiverConfig

    check_hf_compatible(cfg)
    qk, v = _hf_channels(cfg)
    common = dict(
        **latent_fields_to_hf(cfg, cfg.input_channels, qk, v), architectures=[hf_class_name(cfg)]
    )
    if isinstance(cfg, PerceiverOpticalFlowConfig):
        return PerceiverConfig(**common, train_size=[cfg.image_height, cfg.image_width])
    return PerceiverConfig(**common, image_size=cfg.image_size, num_labels=cfg.num_classes)


def architecture_of(hf_cfg: Any) -> str:
    """The HF class named by a config's ``architectures`` (ValueError if none we convert)."""
    names = [a for a in (getattr(hf_cfg, "architectures", None) or []) if a in ARCHITECTURES]
    if not names:
        raise ValueError(
            f"architectures: {getattr(hf_cfg, 'architectures', None)} names none of "
            f"{sorted(ARCHITECTURES)}"
        )
    return names[0]


def config_from_hf(hf_cfg: Any, architecture: str | None = None) -> VisionConfig:
    """Our config for a ``transformers.PerceiverConfig`` of ``architecture`` (default: the
    config's ``architectures``).

    Raises:
        ValueError: A setting our models cannot represent, naming the HF field.
    """
    architecture = architecture or architecture_of(hf_cfg)
    if hf_cfg.hidden_act != "gelu":
        raise ValueError(f"hidden_act: only gelu is supported, got {hf_cfg.hidden_act!r}")
    shape = getattr(hf_cfg, "cross_attention_shape_for_attention", "kv")
    if shape not in ("kv", "q"):
        raise ValueError(f"cross_attention_shape_for_attention: {shape!r} is neither kv nor q")
    common = latent_fields_from_hf(hf_cfg)
    # shape "q": an unset cross-attention q/k size is the latents' (D), not the inputs'
    common["cross_attention_qk_channels"] = hf_cfg.qk_channels or (
        hf_cfg.d_latents if shape == "q" else None
    )
    if architecture == FLOW_CLASS:
        train_size = list(hf_cfg.train_size)
        if len(train_size) != 2:
            raise ValueError(f"train_size: expected [height, width], got {train_size}")
        cfg = PerceiverOpticalFlowConfig(
            **common, image_height=train_size[0], image_width=train_size[1]
        )
    elif architecture in IMAGE_CLASSES.values():
        prep = next(k for k, name in IMAGE_CLASSES.items() if name == architecture)
        resolution = _HF_FIXED[prep].get("fourier_resolution")
        default = hf_cfg.image_size // 4 if prep == "conv" else hf_cfg.image_size
        cfg = PerceiverImageClassifierConfig(
            **common,
            image_size=hf_cfg.image_size,
            preprocessing=prep,
            fourier_max_resolution=None if resolution in (None, default) else resolution,
            num_classes=hf_cfg.num_labels,
        )
    else:
        raise ValueError(f"architectures: {architecture} is not one of {sorted(ARCHITECTURES)}")
    check_hf_compatible(cfg)
    return cfg


def _top_keys(cfg: VisionConfig) -> list[tuple[str, str]]:
    """(our name, HF name) of the parameters (and buffers) outside the attention layers."""
    keys = [("latents", "perceiver.embeddings.latents")]
    prep = "perceiver.input_preprocessor."
    if isinstance(cfg, PerceiverOpticalFlowConfig):
        keys += [
            (f"patch_projection.{p}", f"{prep}conv_after_patches.{p}") for p in ("weight", "bias")
        ]
        keys += [(f"flow_head.{p}", f"{_DECODER}final_layer.{p}") for p in ("weight", "bias")]
        return keys
    keys += [("class_query", f"{_DECODER}output_position_encodings.position_embeddings")]
    keys += [(f"classifier.{p}", f"{_DECODER}final_layer.{p}") for p in ("weight", "bias")]
    if cfg.preprocessing == "learned":
        keys += [(f"conv1x1.{p}", f"{prep}convnet_1x1.{p}") for p in ("weight", "bias")]
        keys += [("position_embeddings", f"{prep}position_embeddings.position_embeddings")]
        keys += [
            (f"position_projection.{p}", f"{prep}positions_projection.{p}")
            for p in ("weight", "bias")
        ]
    elif cfg.preprocessing == "conv":
        keys += [("conv.weight", f"{prep}convnet.conv.weight")]
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            keys.append((f"batchnorm.{p}", f"{prep}convnet.batchnorm.{p}"))
    return keys


def _layers(cfg: VisionConfig) -> list[tuple[str, str, bool]]:
    decoder = ("decoder_cross_attention.", f"{_DECODER}decoding_cross_attention.", True)
    return [decoder, *encoder_layer_prefixes(cfg.num_self_attention_layers_per_block)]


def to_hf_state_dict(state_dict: Mapping[str, Tensor], cfg: VisionConfig) -> dict[str, Tensor]:
    """Our state dict -> the names and layouts of ``hf_class_name(cfg)``."""
    check_hf_compatible(cfg)
    out = {hf: state_dict[ours] for ours, hf in _top_keys(cfg)}
    return {**out, **layers_to_hf(state_dict, _layers(cfg))}


def from_hf_state_dict(hf_state_dict: Mapping[str, Tensor], cfg: VisionConfig) -> dict[str, Tensor]:
    """A state dict of ``hf_class_name(cfg)`` -> our names and layouts."""
    check_hf_compatible(cfg)
    out = {ours: hf_state_dict[hf] for ours, hf in _top_keys(cfg)}
    return {**out, **layers_from_hf(hf_state_dict, _layers(cfg))}


def read_hf_directory(directory: str | Path, hf_cfg: Any) -> tuple[str, dict[str, Any], dict]:
    """Loads a ``save_pretrained`` directory of one of the four classes.

    Returns:
        (our model type, our config's fields, our fp32 state dict).
    """
    architecture = architecture_of(hf_cfg)
    cfg = config_from_hf(hf_cfg, architecture)
    import transformers

    hf = getattr(transformers, architecture).from_pretrained(str(directory))
    weights = from_hf_state_dict(hf.state_dict(), cfg)
    weights = {k: v.detach().float().contiguous().clone() for k, v in weights.items()}
    return ARCHITECTURES[architecture], dataclasses.asdict(cfg), weights


def write_hf_directory(
    cfg: VisionConfig, state_dict: Mapping[str, Tensor], output: str | Path, dtype: torch.dtype
) -> Path:
    """Writes a directory ``transformers.<hf_class_name(cfg)>.from_pretrained`` loads."""
    hf = hf_model_class(cfg)(hf_config(cfg))
    hf_state = to_hf_state_dict(state_dict, cfg)
    own = hf.state_dict()  # integer buffers (batchnorm's step count) keep their dtype
    hf.load_state_dict({k: v.to(own[k].dtype) for k, v in hf_state.items()})
    hf.to(dtype).save_pretrained(str(output), safe_serialization=True)
    return Path(output)
