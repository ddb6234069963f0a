"""Models: Perceiver IO (masked LM, classifier, multimodal autoencoder, image classifier, optical
flow) and Perceiver AR (causal LM).

    from pretrain.models import build_model
    model = build_model("perceiver_ar", {"num_latents": 64, ...})  # or a config dataclass
    model.init_weights()

Model presets live in `configs/model/*.yaml` as flat mappings of the config fields plus `type`
(each config class's `type`); `pretrain.config` builds the typed config of a run from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from pretrain.models.classifier import PerceiverClassifier, PerceiverClassifierConfig
from pretrain.models.image_classifier import (
    PerceiverImageClassifier,
    PerceiverImageClassifierConfig,
)
from pretrain.models.multimodal import PerceiverMultimodal, PerceiverMultimodalConfig
from pretrain.models.optical_flow import PerceiverOpticalFlow, PerceiverOpticalFlowConfig
from pretrain.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM

MODEL_TYPES: dict[str, tuple[type, type[nn.Module]]] = {
    "perceiver_io_mlm": (PerceiverIOConfig, PerceiverMLM),
    "perceiver_ar": (PerceiverARConfig, PerceiverAR),
    "perceiver_io_multimodal": (PerceiverMultimodalConfig, PerceiverMultimodal),
    "perceiver_io_classifier": (PerceiverClassifierConfig, PerceiverClassifier),
    "perceiver_io_image_classifier": (PerceiverImageClassifierConfig, PerceiverImageClassifier),
    "perceiver_io_optical_flow": (PerceiverOpticalFlowConfig, PerceiverOpticalFlow),
}

# The typed `model` section of a run config, discriminated by each class's `type`.
ModelConfig = (
    PerceiverIOConfig
    | PerceiverARConfig
    | PerceiverMultimodalConfig
    | PerceiverClassifierConfig
    | PerceiverImageClassifierConfig
    | PerceiverOpticalFlowConfig
)


def build_config(model_type: str, cfg: Mapping[str, Any] | ModelConfig) -> ModelConfig:
    """The config dataclass of `model_type` from a mapping of its fields (or the dataclass).

    Raises:
        ValueError: Unknown model type, unknown field names (listing the valid ones), or a
            dataclass of another model type.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; valid: {sorted(MODEL_TYPES)}")
    config_cls = MODEL_TYPES[model_type][0]
    if isinstance(cfg, config_cls):
        return cfg
    if dataclasses.is_dataclass(cfg):
        raise ValueError(f"{type(cfg).__name__} is not the config of {model_type!r}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"unknown {model_type} config keys {unknown}; valid: {sorted(fields)}")
    if "type" in cfg and cfg["type"] != model_type:
        raise ValueError(f"config type {cfg['type']!r} does not match {model_type!r}")
    return config_cls(**kwargs)


def build_model(model_type: str, cfg: Mapping[str, Any] | ModelConfig) -> nn.Module:
    """Constructs (without initialising: call `init_weights()`) the model of `model_type`.

    Args:
        model_type: A key of `MODEL_TYPES` (e.g. "perceiver_io_mlm", "perceiver_io_optical_flow").
        cfg: The config dataclass or a mapping of its fields (a `type` key is allowed).

    Returns:
        The model; construct it under `torch.device("meta")` to count parameters for free.
    """
    config = build_config(model_type, cfg)
    return MODEL_TYPES[model_type][1](config)


__all__ = [
    "MODEL_TYPES",
    "ModelConfig",
    "PerceiverAR",
    "PerceiverARConfig",
    "PerceiverClassifier",
    "PerceiverClassifierConfig",
    "PerceiverIOConfig",
    "PerceiverImageClassifier",
    "PerceiverImageClassifierConfig",
    "PerceiverMLM",
    "PerceiverMultimodal",
    "PerceiverMultimodalConfig",
    "PerceiverOpticalFlow",
    "PerceiverOpticalFlowConfig",
    "build_config",
    "build_model",
]
