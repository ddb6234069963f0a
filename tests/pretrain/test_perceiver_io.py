"""PerceiverMLM: parameter/FLOP counts, forward contract, weight sharing, HF equivalence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from pretrain.models import MODEL_TYPES, build_config, build_model
from pretrain.models.hf_interop import (
    check_hf_compatible,
    config_from_hf,
    from_hf_state_dict,
    hf_config,
    to_hf_state_dict,
)
from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM
from tests.pretrain.flop_count import count_matmul_flops

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
HF_PAPER_PARAMS = 201_108_230  # sum(p.numel()) of HF PerceiverForMaskedLM(qk=256, v=1280)


def tiny_config(**overrides) -> PerceiverIOConfig:
    """A tiny HF-compatible config (v channels = latent channels, decoder qk 256 / 8 heads)."""
    fields = dict(
        vocab_size=30,
        max_seq_len=16,
        num_input_channels=16,
        num_latents=6,
        num_latent_channels=32,
        num_cross_attention_heads=2,
        num_self_attention_heads=4,
        cross_attention_qk_channels=16,
        cross_attention_v_channels=32,
        self_attention_qk_channels=16,
        self_attention_v_channels=32,
        cross_attention_widening_factor=2,
        self_attention_widening_factor=2,
        num_self_attention_layers_per_block=2,
        num_self_attention_blocks=2,
        dropout=0.0,
    )
    return PerceiverIOConfig(**{**fields, **overrides})


@pytest.fixture
def tiny_model() -> PerceiverMLM:
    torch.manual_seed(0)
    model = PerceiverMLM(tiny_config())
    model.init_weights()
    return model.eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 30, (3, 16), generator=gen)
    attention_mask = torch.ones(3, 16, dtype=torch.bool)
    attention_mask[1, 11:] = False
    return input_ids, attention_mask


def test_analytic_num_params_equals_numel() -> None:
    for cfg in (
        tiny_config(),
        tiny_config(self_attention_v_channels=16, num_self_attention_blocks=1),
    ):
        model = PerceiverMLM(cfg)
        assert cfg.num_params() == sum(p.numel() for p in model.parameters())


def test_paper_preset_is_201m_on_meta_device() -> None:
    spec = yaml.safe_load((CONFIGS / "perceiver_io_mlm_paper.yaml").read_text())
    assert spec["type"] == "perceiver_io_mlm"
    cfg = build_config("perceiver_io_mlm", spec)
    with torch.device("meta"):
        model = build_model("perceiver_io_mlm", cfg)
    assert all(p.is_meta for p in model.parameters())
    numel = sum(p.numel() for p in model.parameters())
    assert numel == cfg.num_params() == HF_PAPER_PARAMS
    assert abs(numel - 201.1e6) / 201.1e6 < 0.01
    import transformers

    with torch.device("meta"):
        hf = transformers.PerceiverForMaskedLM(hf_config(cfg))
    assert sum(p.numel() for p in hf.parameters()) == numel


def test_tiny_preset_builds() -> None:
    spec = yaml.safe_load((CONFIGS / "perceiver_io_mlm_tiny.yaml").read_text())
    cfg = build_config(spec["type"], spec)
    assert 100_000 < cfg.num_params() < 1_000_000
    check_hf_compatible(cfg)


@pytest.mark.parametrize(
    "field,value",
    [("num_latents", 0), ("self_attention_qk_channels", 18), ("dropout", 1.0), ("vocab_size", 2.5)],
)
def test_config_validation_names_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_build_model_refuses_unknown_keys() -> None:
    assert MODEL_TYPES["perceiver_io_mlm"] == (PerceiverIOConfig, PerceiverMLM)
    with pytest.raises(ValueError, match="num_latens"):
        build_config("perceiver_io_mlm", {"num_latens": 3})
    with pytest.raises(ValueError, match="unknown model type"):
        build_config("bert", {})


def test_forward_shapes_and_output_positions(tiny_model, batch) -> None:
    input_ids, attention_mask = batch
    full = tiny_model(input_ids, attention_mask)
    assert full.shape == (3, 16, 30)
    positions = torch.tensor([[0, 5, 15], [3, 3, 7], [1, 2, 4]])
    part = tiny_model(input_ids, attention_mask, output_positions=positions)
    assert part.shape == (3, 3, 30)
    torch.testing.assert_close(part, full.gather(1, positions[..., None].expand(-1, -1, 30)))
    short = tiny_model(input_ids[:, :10])
    assert short.shape == (3, 10, 30)
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny_model(torch.zeros(1, 17, dtype=torch.long))


def test_padding_is_not_attended(tiny_model, batch) -> None:
    input_ids, attention_mask = batch
    changed = input_ids.clone()
    changed[1, 11:] = (changed[1, 11:] + 1) % 30
    torch.testing.assert_close(
        tiny_model(input_ids, attention_mask), tiny_model(changed, attention_mask)
    )
    assert not torch.allclose(tiny_model(input_ids), tiny_model(changed))


def test_weight_sharing_repeats_the_block(tiny_model, batch) -> None:
    # 2 blocks x 2 shared layers == 4 distinct layers holding copies of the same weights.
    unrolled = PerceiverMLM(
        tiny_config(num_self_attention_layers_per_block=4, num_self_attention_blocks=1)
    ).eval()
    state = tiny_model.state_dict()
    for i in (2, 3):
        prefix = f"self_attention_layers.{i - 2}."
        state |= {
            k.replace(prefix, f"self_attention_layers.{i}."): v
            for k, v in tiny_model.state_dict().items()
            if k.startswith(prefix)
        }
    unrolled.load_state_dict(state)
    input_ids, attention_mask = batch
    torch.testing.assert_close(
        unrolled(input_ids, attention_mask), tiny_model(input_ids, attention_mask)
    )
    assert len(tiny_model.self_attention_layers) == 2


def test_meta_construction_then_init(batch) -> None:
    with torch.device("meta"):
        model = PerceiverMLM(tiny_config())
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.isfinite(model(batch[0])).all()
    assert torch.equal(model.output_bias, torch.zeros(30))
    assert 0.01 < model.latents.std().item() < 0.03


def test_flops_per_sample_matches_flop_counter(batch) -> None:
    # Unequal qk and v channels per head: the einsum reference does not pad them as SDPA does.
    cfg = tiny_config()
    model = PerceiverMLM(cfg).eval()
    input_ids, _ = batch
    positions = torch.tensor([[0, 5, 15, 9]] * 3)
    for kwargs, expected in (
        ({}, cfg.flops_per_sample()),
        ({"output_positions": positions}, cfg.flops_per_sample(num_output_positions=4)),
    ):
        with count_matmul_flops() as counter:
            model(input_ids, **kwargs)
        assert counter.get_total_flops() == len(input_ids) * expected // 3  # forward = 1/3


def test_training_backward_reaches_all_parameters(batch) -> None:
    torch.manual_seed(0)
    model = PerceiverMLM(tiny_config(dropout=0.1))
    model.init_weights()
    input_ids, attention_mask = batch
    logits = model(input_ids, attention_mask, output_positions=torch.tensor([[1, 2]] * 3))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), input_ids[:, 1:3].flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _hf_pair(cfg: PerceiverIOConfig):
    import transformers

    torch.manual_seed(0)
    hf = transformers.PerceiverForMaskedLM(hf_config(cfg)).eval()
    ours = PerceiverMLM(cfg).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
    return hf, ours


@pytest.mark.parametrize("blocks", [1, 2])
def test_hf_logits_match(blocks: int, batch) -> None:
    cfg = tiny_config(num_self_attention_blocks=blocks)
    hf, ours = _hf_pair(cfg)
    input_ids, attention_mask = batch
    with torch.no_grad():
        for mask in (None, attention_mask):
            hf_mask = None if mask is None else mask.long()
            expected = hf(input_ids=input_ids, attention_mask=hf_mask).logits
            assert (ours(input_ids, mask) - expected).abs().max() < 1e-4


def test_hf_state_dict_round_trip() -> None:
    cfg = tiny_config()
    hf, ours = _hf_pair(cfg)
    converted = to_hf_state_dict(ours.state_dict(), cfg)
    assert converted.keys() == hf.state_dict().keys()
    assert all(torch.equal(converted[k], v) for k, v in hf.state_dict().items())
    assert dataclasses.asdict(config_from_hf(hf.config)) == dataclasses.asdict(cfg)


def test_hf_incompatible_config_is_refused() -> None:
    with pytest.raises(ValueError, match="self_attention_v_channels"):
        hf_config(tiny_config(self_attention_v_channels=16))
    with pytest.raises(ValueError, match="decoder_qk_channels"):
        hf_config(tiny_config(decoder_qk_channels=64))
