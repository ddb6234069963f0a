"""Parallelism and memory-saving transformations, applied to a model from the outside.

Models hold architecture only; this module changes how they execute without touching their
classes (no method patching). Order, as in torchtitan's `parallelize_llama`:

    model = build_for_training(...)           # 0. whole, or partitioned as built (ZeRO-3)
    apply_activation_checkpointing(model)     # 1. replace self_attention_layers entries
    engine = deepspeed.initialize(model, ...) # 2. ZeRO / data parallelism (pretrain.train.trainer)

Under ZeRO-3 the model is built inside `deepspeed.zero.Init`: every parameter is partitioned
across the ranks as soon as its module is constructed, and `init_weights()` gathers one module at
a time (`pretrain.models.attention.writable`), so no rank ever holds the whole model and the
weights are the same for any number of ranks.

Activation checkpointing wraps each entry of `model.self_attention_layers` (the latent stack of
both Perceivers) in `torch.distributed`'s `CheckpointWrapper` with non-reentrant
`torch.utils.checkpoint`: the layer's activations are dropped after the forward pass and
recomputed in the backward pass. The wrapper strips its own prefix from `state_dict()` keys and
accepts unprefixed keys in `load_state_dict()`, so checkpoints are interchangeable between
models with and without checkpointing. With weight sharing across blocks (Perceiver IO
`num_self_attention_blocks > 1`) each application of a shared layer is checkpointed separately.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    checkpoint_wrapper,
)

__all__ = [
    "apply_activation_checkpointing",
    "build_for_training",
    "num_parameters",
    "checkpointed_layer_indices",
    "parallelize_model",
    "unwrapped_layer",
]


def _layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(model, "self_attention_layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no ModuleList `self_attention_layers`")
    return layers


def apply_activation_checkpointing(model: nn.Module, every: int = 1) -> nn.Module:
    """Checkpoints every `every`-th layer of `model.self_attention_layers` (in place).

    Args:
        model: A model with an `nn.ModuleList` attribute `self_attention_layers`.
        every: 1 checkpoints all layers; k > 1 only layers 0, k, 2k, ... (selective
            checkpointing: less recomputation, more memory).

    Returns:
        The same model (for chaining). Applying it twice does not wrap a layer twice.

    Raises:
        TypeError: The model has no `self_attention_layers` ModuleList.
        ValueError: `every` < 1.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    layers = _layers(model)
    for i, layer in enumerate(layers):
        if i % every == 0 and not isinstance(layer, CheckpointWrapper):
            layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return model


def checkpointed_layer_indices(model: nn.Module) -> list[int]:
    """Indices of the entries of `model.self_attention_layers` that are checkpointed."""
    return [i for i, layer in enumerate(_layers(model)) if isinstance(layer, CheckpointWrapper)]


def unwrapped_layer(layer: nn.Module) -> nn.Module:
    """The original layer inside a checkpoint wrapper (or the layer itself)."""
    return layer._checkpoint_wrapped_module if isinstance(layer, CheckpointWrapper) else layer


def parallelize_model(model: nn.Module, activation_checkpointing: bool | int = False) -> nn.Module:
    """Applies the model transformations in their documented order (see the module docstring).

    Args:
        model: The model to transform in place.
        activation_checkpointing: False (off), True (every layer) or k (every k-th layer).

    Returns:
        The same model. Data parallelism / ZeRO is applied afterwards by the trainer.
    """
    if activation_checkpointing:
        every = 1 if activation_checkpointing is True else int(activation_checkpointing)
        apply_activation_checkpointing(model, every=every)
    return model


def build_for_training(
    model_type: str, model_cfg: Any, seed: int, ds_config: dict[str, Any] | None = None
) -> nn.Module:
    """Builds and initialises the model, partitioned while it is built when ``ds_config`` is a
    ZeRO stage 3 config (see the module docstring); the weights depend only on ``seed``."""
    from pretrain.models import build_model

    stage = ((ds_config or {}).get("zero_optimization") or {}).get("stage", 0)
    if stage == 3:
        import deepspeed

        context = deepspeed.zero.Init(config_dict_or_path=ds_config)
    else:
        context = contextlib.nullcontext()
    torch.manual_seed(seed)  # the same initial weights on every rank
    with context:
        model = build_model(model_type, model_cfg)
    model.init_weights()
    return model


def num_parameters(model: nn.Module) -> int:
    """Parameters of the whole model, also when ZeRO-3 holds only a slice of each on this rank."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
