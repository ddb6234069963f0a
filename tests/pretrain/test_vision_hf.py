"""HF equivalence of the image classifiers and the optical-flow model: the same outputs from
converted weights (both ways), ``perceiver import-hf`` / ``export --format hf`` round trips, and
refusals naming the field."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.export import load_pretrained, read_hf, write_hf, write_native
from pretrain.models import build_model
from pretrain.models.hf_vision import (
    config_from_hf,
    from_hf_state_dict,
    hf_class_name,
    hf_config,
    hf_model_class,
    to_hf_state_dict,
)
from pretrain.models.image_classifier import PerceiverImageClassifierConfig
from pretrain.models.optical_flow import PerceiverOpticalFlowConfig, extract_patches
from tests.conftest import run_perceiver


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread (two OpenMP threads on a loaded 2-core machine wait for each
    other at every op, up to 30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LATENTS = dict(
    num_latents=8,
    num_latent_channels=32,
    num_cross_attention_heads=1,
    num_self_attention_heads=2,
    num_self_attention_layers_per_block=1,
    num_self_attention_blocks=2,  # weight sharing
    self_attention_widening_factor=2,
    dropout=0.0,
)


def tiny(kind: str):
    """A tiny config every HF class represents (HF's hard-coded bands and resolutions)."""
    if kind == "flow":
        return PerceiverOpticalFlowConfig(**LATENTS, image_height=8, image_width=12)
    resolution = {"fourier": 224, "conv": 56, "learned": None}[kind]
    return PerceiverImageClassifierConfig(
        **LATENTS,
        image_size=16,
        preprocessing=kind,
        fourier_max_resolution=resolution,
        num_classes=5,
    )


def inputs(cfg, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(our input, HF's input): HF's flow model takes the patches."""
    gen = torch.Generator().manual_seed(1)
    if isinstance(cfg, PerceiverOpticalFlowConfig):
        frames = torch.rand(batch, 2, 3, cfg.image_height, cfg.image_width, generator=gen) * 2 - 1
        return frames, extract_patches(frames)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)
    return images, images


def random_hf(cfg):
    """The HF model with every parameter and buffer random (biases, norms and batchnorm
    statistics included), in eval mode."""
    torch.manual_seed(0)
    hf = hf_model_class(cfg)(hf_config(cfg)).eval()
    with torch.no_grad():
        for name, t in hf.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand_like(t) + 0.5 if "running_var" in name else 0.2 * torch.randn_like(t)
                )
    return hf


KINDS = ["fourier", "learned", "conv", "flow"]


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_equal_hfs_with_converted_weights_both_ways(kind):
    cfg = tiny(kind)
    hf = random_hf(cfg)
    ours = build_model(cfg.type, cfg).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
    x, hf_x = inputs(cfg)
    with torch.no_grad():
        expected = hf(inputs=hf_x).logits
        got = ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # Ours (own initialisation) -> HF: the same outputs, and the weights come back unchanged.
    torch.manual_seed(1)
    ours.init_weights()
    hf2 = hf_model_class(cfg)(hf_config(cfg)).eval()
    hf2.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf2(inputs=hf_x).logits, atol=1e-4, rtol=1e-4)
    back = from_hf_state_dict(hf2.state_dict(), cfg)
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    assert config_from_hf(hf_config(cfg)) == cfg


def test_paper_configs_convert_both_ways():
    from tests.pretrain.test_vision_models import preset

    for name in ("fourier", "learned", "conv"):
        cfg = preset(f"perceiver_io_image_{name}")
        assert config_from_hf(hf_config(cfg)) == cfg
    flow = preset("perceiver_io_flow")
    assert config_from_hf(hf_config(flow)) == flow
    assert hf_config(flow).train_size == [368, 496]


def test_refusals_name_the_field():
    import transformers

    with pytest.raises(ValueError, match="num_frequency_bands"):
        hf_config(PerceiverImageClassifierConfig(num_frequency_bands=32))
    with pytest.raises(ValueError, match="fourier_max_resolution"):
        hf_config(PerceiverImageClassifierConfig(image_size=32))  # HF: Fourier at 224
    with pytest.raises(ValueError, match="preprocessing_channels"):
        hf_config(PerceiverImageClassifierConfig(preprocessing="learned", preprocessing_channels=8))
    with pytest.raises(ValueError, match="flow_scale"):
        hf_config(PerceiverOpticalFlowConfig(flow_scale=20.0))
    with pytest.raises(ValueError, match="self_attention_qk_channels"):
        hf_config(PerceiverOpticalFlowConfig(self_attention_qk_channels=256))
    with pytest.raises(ValueError, match="num_decoder_heads"):
        hf_config(PerceiverOpticalFlowConfig(num_decoder_heads=2))
    for field, value in [
        ("patch_size", 5),
        ("decoder_query_residual", True),
        ("decoder_widening_factor", 4),
        ("correlation_radius", 2),
    ]:
        with pytest.raises(ValueError, match=f"{field}: HF PerceiverForOpticalFlow fixes it"):
            hf_config(PerceiverOpticalFlowConfig(**{field: value}))
    hf_cfg = hf_config(tiny("conv"))
    hf_cfg.hidden_act = "relu"
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_hf(hf_cfg)
    with pytest.raises(ValueError, match="architectures"):
        config_from_hf(transformers.PerceiverConfig(architectures=["PerceiverForMaskedLM"]))
    with pytest.raises(ValueError, match="train_size"):
        config_from_hf(
            transformers.PerceiverConfig(train_size=[4, 4, 4]), "PerceiverForOpticalFlow"
        )


@pytest.mark.parametrize("kind, cli", [("conv", True), ("flow", False)])
def test_import_hf_and_export_hf_round_trip(kind, cli, tmp_path):
    """``perceiver import-hf`` and ``perceiver export --format hf`` (the CLI once, then the same
    functions in-process: each CLI call costs an interpreter start)."""
    cfg = tiny(kind)
    hf = random_hf(cfg)
    hf.save_pretrained(str(tmp_path / "hf"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [
        hf_class_name(cfg)
    ]
    if cli:
        run_perceiver(["import-hf", str(tmp_path / "hf"), "--output", str(tmp_path / "native")])
    else:
        write_native(read_hf(tmp_path / "hf"), tmp_path / "native")
    native = load_pretrained(tmp_path / "native")
    assert native.model_type == cfg.type and native.source["kind"] == "hf"
    ours = build_model(native.model_type, native.model).eval()
    ours.load_state_dict(native.state_dict)
    x, hf_x = inputs(cfg, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(inputs=hf_x).logits, atol=1e-4, rtol=1e-4)
    out = tmp_path / "hf2"
    if cli:
        run_perceiver(["export", str(tmp_path / "native"), "--output", str(out), "--format", "hf"])
    else:
        write_hf(native, out)
    again = hf_model_class(cfg).from_pretrained(str(out))
    for key, value in hf.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    write_hf(native, tmp_path / "hf3", dtype="bf16")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "hf3" / "model.safetensors")
    assert saved["perceiver.embeddings.latents"].dtype == torch.bfloat16
