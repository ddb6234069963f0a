"""PerceiverAR: golden masks, causality, prefix dropout, KV-cache decoding, counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch.nn.attention.bias import causal_lower_right

from pretrain.models import MODEL_TYPES, build_config, build_model
from pretrain.models.perceiver_ar import PerceiverAR, PerceiverARConfig, perceiver_ar_mask
from tests.pretrain.flop_count import count_matmul_flops

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
V = 50


def tiny_config(**overrides) -> PerceiverARConfig:
    fields = dict(
        vocab_size=V,
        max_seq_len=24,
        num_latents=6,
        num_channels=32,
        num_heads=4,
        num_self_attention_layers=2,
        cross_attention_widening_factor=2,
        self_attention_widening_factor=2,
        cross_attention_dropout=0.5,
    )
    return PerceiverARConfig(**{**fields, **overrides})


def make_model(**overrides) -> PerceiverAR:
    torch.manual_seed(0)
    model = PerceiverAR(tiny_config(**overrides))
    model.init_weights()
    return model.eval()


@pytest.fixture
def model() -> PerceiverAR:
    return make_model()


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))


def test_golden_masks() -> None:
    # 3 latents (the last 3 of 5 positions) over 5 keys: the prefix plus latents up to itself.
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(perceiver_ar_mask(3, 5), expected)
    assert torch.equal(causal_lower_right(3, 5)._materialize(), expected)  # what SDPA gets on GPU
    # Self-attention among 3 latents.
    expected_self = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(perceiver_ar_mask(3, 3), expected_self)
    # Left padding of 2 positions in row 0: hidden except from their own position.
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    padded = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    mask = perceiver_ar_mask(3, 5, padding)
    assert mask.shape == (2, 1, 3, 5)
    assert torch.equal(mask[0, 0], padded)
    assert torch.equal(mask[1, 0], expected)
    padding_latent = torch.tensor([[0, 0, 0, 0, 1]], dtype=torch.bool)
    own_only = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(perceiver_ar_mask(3, 5, padding_latent)[0, 0], own_only)


def test_analytic_num_params_equals_numel() -> None:
    for overrides in ({}, {"tie_embeddings": False, "abs_pos_emb": False}):
        cfg = tiny_config(**overrides)
        assert cfg.num_params() == sum(p.numel() for p in PerceiverAR(cfg).parameters())


def test_presets_build_on_meta_device() -> None:
    for name, low, high in (("perceiver_ar_tiny", 1e5, 1e6), ("perceiver_ar_byte_8k", 5e7, 5e8)):
        spec = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert spec["type"] == "perceiver_ar"
        with torch.device("meta"):
            model = build_model("perceiver_ar", spec)
        assert isinstance(model, MODEL_TYPES["perceiver_ar"][1])
        assert low < sum(p.numel() for p in model.parameters()) == model.cfg.num_params() < high


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_latents", 25),
        ("num_heads", 5),
        ("rotary_fraction", 1.5),
        ("cross_attention_dropout", 1.0),
        ("num_self_attention_rotary_layers", -2),
    ],
)
def test_config_validation_names_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})
    with pytest.raises(ValueError, match=field):
        build_config("perceiver_ar", {**tiny_config().__dict__, field: value})


def test_forward_shapes(model, input_ids) -> None:
    assert model(input_ids).shape == (2, 6, V)
    assert model(input_ids[:, :10]).shape == (2, 6, V)
    assert model(input_ids[:, :4]).shape == (2, 4, V)  # fewer tokens than latents: all latents
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_causality(model, input_ids) -> None:
    logits = model(input_ids)
    future = input_ids.clone()
    future[:, 21] = (future[:, 21] + 1) % V  # position 21 = latent 3 of 6 (positions 18..23)
    changed = model(future)
    torch.testing.assert_close(changed[:, :3], logits[:, :3])
    assert not torch.allclose(changed[:, 3:], logits[:, 3:])
    prefix = input_ids.clone()
    prefix[:, 2] = (prefix[:, 2] + 1) % V  # every latent sees the whole prefix
    assert not torch.allclose(model(prefix)[:, 0], logits[:, 0])


def test_left_padding_equals_unpadded_row(model, input_ids) -> None:
    padded = input_ids.clone()
    padded[0, :5] = 0
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[0, :5] = False
    torch.testing.assert_close(
        model(padded, mask)[0], model(input_ids[:1, 5:])[0], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(model(padded, mask)[1], model(input_ids)[1], atol=1e-5, rtol=0)


def test_prefix_dropout_drops_prefix_only() -> None:
    # Without position information the model is invariant to the order of the prefix, so prefix
    # dropout must equal the eval forward over (the kept prefix positions + all latents).
    model = make_model(abs_pos_emb=False, rotary_fraction=0.0, cross_attention_dropout=0.75)
    ids = torch.randint(0, V, (2, 22), generator=torch.Generator().manual_seed(2))
    model.train()
    torch.manual_seed(5)
    dropped = model(ids)
    torch.manual_seed(5)
    keep_bk = torch.rand(2, 16).topk(16 - int(16 * 0.75), dim=1).indices  # what forward draws
    model.eval()
    for row in range(2):
        kept = torch.cat([ids[row, keep_bk[row].sort().values], ids[row, 16:]])
        torch.testing.assert_close(dropped[row], model(kept[None])[0], atol=1e-5, rtol=0)
    assert not torch.allclose(dropped, model(ids))
    model.train()
    torch.testing.assert_close(model(ids, prefix_dropout=0.0), model.eval()(ids))


def test_incremental_decoding_equals_full_forward(model, input_ids) -> None:
    logits, cache = model.prefill(input_ids[:, :3])
    torch.testing.assert_close(logits, model(input_ids[:, :3])[:, -1], atol=1e-5, rtol=0)
    with torch.no_grad():
        for t in range(3, 24):
            logits, cache = model.decode_step(input_ids[:, t], cache)
            assert cache.seq_len == t + 1
            full = model(input_ids[:, : t + 1])[:, -1]
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.decode_step(input_ids[:, 0], cache)


def test_incremental_decoding_with_left_padding(model, input_ids) -> None:
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[1, :4] = False
    logits, cache = model.prefill(input_ids[:, :10], mask[:, :10])
    with torch.no_grad():
        for t in range(10, 24):
            logits, cache = model.decode_step(input_ids[:, t], cache)
            full = model(input_ids[:, : t + 1], mask[:, : t + 1])[:, -1]
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
        # Row 1 equals the unpadded row.
        torch.testing.assert_close(logits[1], model(input_ids[1:, 4:])[0, -1], atol=1e-5, rtol=0)


def test_generate_greedy_matches_argmax_and_crops(model, input_ids) -> None:
    model.train()
    out = model.generate(input_ids[:, :8], max_new_tokens=4, temperature=0.0)
    assert model.training  # mode restored
    assert out.shape == (2, 12)
    model.eval()
    seq = input_ids[:, :8]
    for _ in range(4):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    gen = torch.Generator().manual_seed(0)
    long = model.generate(input_ids[:, :20], 10, temperature=1.0, top_k=5, generator=gen)
    assert long.shape == (2, 30) and torch.equal(long[:, :20], input_ids[:, :20])


def test_flops_per_sample_matches_flop_counter(model, input_ids) -> None:
    with count_matmul_flops() as counter:
        model(input_ids)
    assert counter.get_total_flops() == 2 * model.cfg.flops_per_sample(prefix_dropout=0.0) // 3
    assert model.cfg.flops_per_sample() < model.cfg.flops_per_sample(prefix_dropout=0.0)


def test_meta_construction_then_init(input_ids) -> None:
    with torch.device("meta"):
        model = PerceiverAR(tiny_config(tie_embeddings=False))
    model.to_empty(device="cpu")
    model.init_weights()
    model.train()
    loss = model(input_ids).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
