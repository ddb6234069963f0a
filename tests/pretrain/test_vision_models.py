"""Perceiver IO image classifier and optical flow: paper presets (HF's parameter counts), analytic
counts and FLOPs, patch extraction, config errors, activation checkpointing, the bench script."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from pretrain.models import build_config, build_model
from pretrain.models.image_classifier import PerceiverImageClassifierConfig, conv_downsample_size
from pretrain.models.optical_flow import (
    PerceiverOpticalFlowConfig,
    extract_patches,
    local_cost_volume,
)
from tests.conftest import REPO
from tests.pretrain.flop_count import count_matmul_flops

PRESETS = REPO / "configs" / "model"
# HF's counts: the classes built on the meta device from the published configs (the learned
# classifier at image_size 224; PerceiverConfig's default image_size 56 would give 50,213,608).
PAPER = {
    "perceiver_io_image_fourier": ("PerceiverForImageClassificationFourier", 48_440_627),
    "perceiver_io_image_learned": ("PerceiverForImageClassificationLearned", 62_255_848),
    "perceiver_io_image_conv": ("PerceiverForImageClassificationConvProcessing", 48_646_522),
    "perceiver_io_flow": ("PerceiverForOpticalFlow", 41_057_134),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread (two OpenMP threads on a loaded 2-core machine wait for each
    other at every op, up to 30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def preset(name: str, **overrides):
    raw = {**yaml.safe_load((PRESETS / f"{name}.yaml").read_text()), **overrides}
    return build_config(raw["type"], raw)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets_have_hfs_parameter_counts(name):
    import transformers

    from pretrain.models.hf_vision import hf_class_name, hf_config

    cfg = preset(name)
    hf_name, expected = PAPER[name]
    assert hf_class_name(cfg) == hf_name
    with torch.device("meta"):
        ours = build_model(cfg.type, cfg)
        hf = getattr(transformers, hf_name)(hf_config(cfg))
    n = sum(p.numel() for p in ours.parameters())
    assert n == cfg.num_params() == sum(p.numel() for p in hf.parameters()) == expected


def test_learned_classifier_at_hfs_default_image_size_has_the_published_count():
    """50,213,608: HF's PerceiverForImageClassificationLearned with PerceiverConfig's defaults
    (image_size 56, so 56 x 56 learned positions), the count HF's docs quote."""
    import transformers

    from pretrain.models.hf_vision import hf_config

    cfg = preset("perceiver_io_image_learned", image_size=56)
    with torch.device("meta"):
        ours = build_model(cfg.type, cfg)
        hf = transformers.PerceiverForImageClassificationLearned(hf_config(cfg))
    n = sum(p.numel() for p in ours.parameters())
    assert hf.config.image_size == transformers.PerceiverConfig().image_size == 56
    assert n == cfg.num_params() == sum(p.numel() for p in hf.parameters()) == 50_213_608


def test_paper_input_sizes():
    assert [
        preset(f"perceiver_io_image_{p}").input_channels for p in ("fourier", "learned", "conv")
    ] == [261, 512, 322]
    assert (
        conv_downsample_size(224) == 55 and preset("perceiver_io_image_conv").num_inputs == 55 * 55
    )
    flow = preset("perceiver_io_flow")
    assert (flow.input_channels, flow.num_inputs, flow.patch_features) == (322, 368 * 496, 54)


TINY_IMAGE = {"image_size": 16, "num_frequency_bands": 4, "num_classes": 3}


@pytest.mark.parametrize("prep", ["fourier", "learned", "conv"])
def test_image_counts_and_flops_match_the_model(prep):
    extra = {"preprocessing_channels": 8} if prep != "fourier" else {}
    cfg = preset("perceiver_io_image_tiny", preprocessing=prep, **TINY_IMAGE, **extra)
    torch.manual_seed(0)
    model = build_model(cfg.type, cfg)
    model.init_weights()
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    model.eval()
    with count_matmul_flops() as counter:
        logits = model(torch.randn(1, 3, 16, 16))
    assert logits.shape == (1, 3)
    assert counter.get_total_flops() == cfg.flops_per_sample() // 3


HF_FLOW = dict(
    patch_size=3, decoder_query_residual=False, decoder_widening_factor=1, correlation_radius=0
)
NON_HF_FLOW = dict(
    patch_size=5, decoder_query_residual=True, decoder_widening_factor=2, correlation_radius=1
)


@pytest.mark.parametrize("options", [HF_FLOW, NON_HF_FLOW], ids=["hf", "non_hf_options"])
def test_flow_counts_flops_and_output_shape(options):
    cfg = preset(
        "perceiver_io_flow_tiny", image_height=8, image_width=12, num_frequency_bands=4, **options
    )
    torch.manual_seed(0)
    model = build_model(cfg.type, cfg)
    model.init_weights()
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    model.eval()
    with count_matmul_flops() as counter:
        flow = model(torch.rand(1, 2, 3, 8, 12) * 2 - 1)
    assert flow.shape == (1, 8, 12, 2)
    assert counter.get_total_flops() == cfg.flops_per_sample() // 3


@pytest.mark.parametrize("patch", [3, 5])
def test_patch_projection_equals_linear_over_extracted_patches(patch):
    cfg = preset("perceiver_io_flow_tiny", image_height=5, image_width=7, patch_size=patch)
    torch.manual_seed(0)
    model = build_model(cfg.type, cfg)
    model.init_weights()
    frames = torch.randn(2, 2, 3, 5, 7)
    patches = extract_patches(frames, patch)  # [b, 2, patch^2 3, H, W], channels (ky, kx, c)
    # Golden: pixel (y, x) = (0, 0) of frame 1, patch entry (ky, kx, c) = (r, r + 1, 0) is the
    # frame's pixel (y + ky - r, x + kx - r) = (0, 1), channel 0; rows ky < r are padding.
    r = patch // 2
    assert patches[0, 1, (r * patch + r + 1) * 3 + 0, 0, 0] == frames[0, 1, 0, 0, 1]
    assert torch.all(patches[:, :, : r * patch * 3, 0, :] == 0)
    if patch == 5:  # (ky, kx) = (4, 0) at pixel (1, 3): the frame's pixel (3, 1)
        assert patches[1, 0, (4 * 5 + 0) * 3 + 2, 1, 3] == frames[1, 0, 2, 3, 1]
    # per pixel: frame 0's patch^2 3 values, then frame 1's
    x = patches.permute(0, 3, 4, 1, 2).reshape(2, 35, 2 * patch * patch * 3)
    torch.testing.assert_close(
        model.project_patches(frames), model.patch_projection(x), atol=1e-5, rtol=1e-5
    )


def test_decoder_query_residual_reads_each_pixel_directly():
    """With the decoder's attention output zeroed, each pixel's flow depends on its own patches
    alone through the query residual, and on nothing without it."""
    for residual in (True, False):
        cfg = preset("perceiver_io_flow_tiny", image_height=6, image_width=8,
                     decoder_query_residual=residual, correlation_radius=0)  # fmt: skip
        torch.manual_seed(0)
        model = build_model(cfg.type, cfg)
        model.init_weights()
        with torch.no_grad():
            model.decoder_cross_attention.attention.o_proj.weight.zero_()
            model.decoder_cross_attention.attention.o_proj.bias.zero_()
        frames = torch.rand(1, 2, 3, 6, 8) * 2 - 1
        moved = frames.clone()
        moved[0, 1, :, 0, 0] += 0.5  # frame 1, pixel (0, 0)
        changed = (model(moved) - model(frames)).abs().amax(-1)[0] > 1e-6  # [H, W]
        expected = torch.zeros(6, 8, dtype=torch.bool)
        if residual:
            expected[:2, :2] = True  # the pixels whose 3x3 patch holds (0, 0)
        assert torch.equal(changed, expected)


def test_local_cost_volume_peaks_at_the_true_shift():
    gen = torch.Generator().manual_seed(0)
    frame0 = torch.rand(2, 3, 9, 11, generator=gen) * 2 - 1
    frame1 = torch.roll(frame0, shifts=(1, -2), dims=(2, 3))  # content moves by dy=1, dx=-2
    cost = local_cost_volume(torch.stack([frame0, frame1], 1), radius=2)  # [b, H W, 25]
    assert cost.shape == (2, 99, 25)
    best = cost.view(2, 9, 11, 25)[:, 3:-3, 3:-3].argmax(-1)  # interior: no wrap-around
    assert torch.all(best == (1 + 2) * 5 + (-2 + 2))  # displacement index (dy + r) 5 + dx + r
    # Explicit value at one pixel: minus the 3x3-box, channel mean of the squared differences,
    # standardised over the 25 displacements.
    y, x = 4, 5
    raw = torch.stack([
        (frame1[0, :, y - 1 + dy : y + 2 + dy, x - 1 + dx : x + 2 + dx]
         - frame0[0, :, y - 1 : y + 2, x - 1 : x + 2]).square().mean()
        for dy in range(-2, 3) for dx in range(-2, 3)
    ])  # fmt: skip
    want = (raw.mean() - raw) / (raw.std() + 1e-3)
    torch.testing.assert_close(cost[0, y * 11 + x], want, atol=1e-5, rtol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="preprocessing"):
        PerceiverImageClassifierConfig(preprocessing="patches")
    with pytest.raises(ValueError, match="image_size"):
        PerceiverImageClassifierConfig(image_size=0)
    with pytest.raises(ValueError, match="self_attention_qk_channels"):
        PerceiverImageClassifierConfig(self_attention_qk_channels=100)
    with pytest.raises(ValueError, match="flow_scale"):
        PerceiverOpticalFlowConfig(flow_scale=0.0)
    with pytest.raises(ValueError, match="num_patch_channels"):
        PerceiverOpticalFlowConfig(num_patch_channels=-1)
    with pytest.raises(ValueError, match="patch_size must be odd"):
        PerceiverOpticalFlowConfig(patch_size=4)
    with pytest.raises(ValueError, match="correlation_radius"):
        PerceiverOpticalFlowConfig(correlation_radius=-1)
    with pytest.raises(ValueError, match="decoder_query_residual"):
        PerceiverOpticalFlowConfig(decoder_query_residual="yes")
    model = build_model("perceiver_io_optical_flow", preset("perceiver_io_flow_tiny"))
    with pytest.raises(ValueError, match=r"\[b, 2, 3, 32, 48\]"):
        model(torch.zeros(1, 2, 3, 64, 48))


@pytest.mark.parametrize("name", ["perceiver_io_image_tiny", "perceiver_io_flow_tiny"])
def test_activation_checkpointing_keeps_loss_and_gradients(name):
    from pretrain.train.parallelize import checkpointed_layer_indices, parallelize_model

    cfg = preset(name)
    shape = (2, 3, 32, 32) if "image" in name else (2, 2, 3, 32, 48)
    x = torch.randn(shape)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.type, cfg)
        model.init_weights()
        parallelize_model(model, activation_checkpointing=checkpointing)
        loss = model(x).square().mean()
        loss.backward()
        grads = {
            k.replace("_checkpoint_wrapped_module.", ""): p.grad
            for k, p in model.named_parameters()
        }
        results.append((loss.detach(), grads))
    assert checkpointed_layer_indices(model) == list(range(len(model.self_attention_layers)))
    torch.testing.assert_close(results[0][0], results[1][0])
    for key, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][key], msg=key)


def test_tiny_image_classifier_learns_a_batch():
    cfg = preset("perceiver_io_image_tiny")
    torch.manual_seed(0)
    model = build_model(cfg.type, cfg)
    model.init_weights()
    labels = torch.arange(16) % 4  # the class is the mean colour of a noisy image
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, -1, -1]])
    images = torch.randn(16, 3, 32, 32) * 0.5 + colors[labels][:, :, None, None]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


def test_bench_vision_smoke_runs():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "bench_vision.py"),
            "--smoke",
            "--models",
            "conv",
            "flow",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        line.split()
        for line in proc.stdout.splitlines()
        if line.split()[:1] in (["conv"], ["flow"])
    ]
    assert [r[0] for r in rows] == ["conv", "flow"]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows), proc.stdout


def _build_partitioned(rank: int, world: int, out: str) -> None:
    import deepspeed

    from pretrain.train.parallelize import build_for_training, num_parameters

    deepspeed.init_distributed("gloo")
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    saved = {}
    for name, overrides in ZERO3_MODELS:
        cfg = preset(name, **overrides)
        model = build_for_training(cfg.type, cfg, 0, ds_config)
        assert sum(p.numel() for p in model.parameters()) == 0  # partitioned: none held whole
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            weights = {k: p.detach().clone() for k, p in model.named_parameters()}
        saved[name + str(overrides)] = (num_parameters(model), weights)
    if rank == 0:
        torch.save(saved, f"{out}/partitioned.pt")


ZERO3_MODELS = [
    ("perceiver_io_image_tiny", {"preprocessing": "conv", "preprocessing_channels": 8}),
    ("perceiver_io_image_tiny", {"preprocessing": "learned", "preprocessing_channels": 8}),
    ("perceiver_io_flow_tiny", {}),
]


@pytest.mark.distributed
def test_zero3_builds_partitioned_with_the_weights_of_a_whole_build(tmp_path):
    from pretrain.train.parallelize import build_for_training
    from tests.conftest import run_distributed

    run_distributed(_build_partitioned, 2, (str(tmp_path),))
    saved = torch.load(tmp_path / "partitioned.pt")
    for name, overrides in ZERO3_MODELS:
        cfg = preset(name, **overrides)
        whole = dict(build_for_training(cfg.type, cfg, 0).named_parameters())
        total, weights = saved[name + str(overrides)]
        assert total == cfg.num_params() and weights.keys() == whole.keys()
        for key, value in weights.items():
            assert torch.equal(value, whole[key]), (name, key)
