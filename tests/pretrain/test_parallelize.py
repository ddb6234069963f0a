"""Activation checkpointing applied from outside: same state dict, recomputation, same grads."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pretrain.models.perceiver_ar import PerceiverAR, PerceiverARConfig
from pretrain.models.perceiver_io import PerceiverMLM
from pretrain.train.parallelize import (
    apply_activation_checkpointing,
    checkpointed_layer_indices,
    parallelize_model,
    unwrapped_layer,
)
from tests.pretrain.test_perceiver_io import tiny_config


def tiny_mlm() -> PerceiverMLM:
    return PerceiverMLM(
        tiny_config(num_self_attention_layers_per_block=3, num_self_attention_blocks=2, dropout=0.1)
    )


def tiny_ar() -> PerceiverAR:
    cfg = PerceiverARConfig(
        vocab_size=30,
        max_seq_len=16,
        num_latents=6,
        num_channels=32,
        num_heads=4,
        num_self_attention_layers=3,
        dropout=0.1,
        residual_dropout=0.1,
    )
    return PerceiverAR(cfg)


FACTORIES = {"mlm": tiny_mlm, "ar": tiny_ar}


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    """Two identically initialised models, the second with activation checkpointing."""
    torch.manual_seed(0)
    plain = FACTORIES[name]()
    plain.init_weights()
    checkpointed = FACTORIES[name]()
    checkpointed.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(checkpointed)
    return plain.train(), checkpointed.train()


def _loss(model: nn.Module) -> torch.Tensor:
    input_ids = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)  # dropout masks (prefix dropout included) identical in both runs
    return model(input_ids).float().logsumexp(-1).mean()


@pytest.mark.parametrize("name", ["mlm", "ar"])
def test_state_dict_keys_unchanged(name: str) -> None:
    plain, checkpointed = _pair(name)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    assert checkpointed_layer_indices(checkpointed) == [0, 1, 2]
    assert checkpointed_layer_indices(plain) == []
    # Checkpoints load both ways.
    plain.load_state_dict(checkpointed.state_dict())
    checkpointed.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("name", ["mlm", "ar"])
def test_backward_recomputes_and_gradients_are_identical(name: str) -> None:
    plain, checkpointed = _pair(name)
    flops = {}
    for label, model in (("plain", plain), ("checkpointed", checkpointed)):
        with FlopCounterMode(display=False) as counter:
            _loss(model).backward()
        flops[label] = counter.get_total_flops()
    assert flops["checkpointed"] > flops["plain"]
    grads = {k: p.grad for k, p in plain.named_parameters()}
    for name_, param in checkpointed.named_parameters():
        key = name_.replace("_checkpoint_wrapped_module.", "")
        torch.testing.assert_close(param.grad, grads[key], atol=1e-6, rtol=1e-5)


def test_forward_only_costs_the_same() -> None:
    plain, checkpointed = _pair("mlm")
    counts = []
    for model in (plain.eval(), checkpointed.eval()):
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 16, dtype=torch.long))
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1]


def test_selective_and_idempotent() -> None:
    model = tiny_ar()
    apply_activation_checkpointing(model, every=2)
    assert checkpointed_layer_indices(model) == [0, 2]
    apply_activation_checkpointing(model)
    assert checkpointed_layer_indices(model) == [0, 1, 2]
    inner = unwrapped_layer(model.self_attention_layers[0])
    assert type(inner).__name__ == "SelfAttentionLayer"
    assert unwrapped_layer(inner) is inner
    assert not hasattr(inner, "_checkpoint_wrapped_module")


def test_parallelize_model_and_errors() -> None:
    model = parallelize_model(tiny_mlm(), activation_checkpointing=3)
    assert checkpointed_layer_indices(model) == [0]
    assert checkpointed_layer_indices(parallelize_model(tiny_mlm())) == []
    with pytest.raises(ValueError, match="every"):
        apply_activation_checkpointing(tiny_mlm(), every=0)
    with pytest.raises(TypeError, match="self_attention_layers"):
        apply_activation_checkpointing(nn.Linear(2, 2))
