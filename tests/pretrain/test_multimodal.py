"""Perceiver IO multimodal autoencoder: paper size, HF equivalence, objective, 2-rank training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pretrain.config import ConfigError, load_config
from pretrain.models import build_model
from pretrain.models.hf_interop import _CROSS_KEYS, _SELF_KEYS
from pretrain.models.multimodal import (
    PerceiverMultimodal,
    PerceiverMultimodalConfig,
    fourier_features,
    grid_positions,
    index_positions,
)
from tests.conftest import REPO, run_perceiver

PAPER_PARAMS = 20.0e6
TINY = REPO / "configs" / "multimodal_tiny.yaml"


def _paper() -> PerceiverMultimodalConfig:
    return load_config(REPO / "configs" / "kinetics_multimodal.yaml").model


def test_paper_preset_has_the_papers_parameter_count():
    cfg = _paper()
    with torch.device("meta"):
        model = PerceiverMultimodal(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == cfg.num_params()
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.01, n
    assert (cfg.num_latents, cfg.num_latent_channels, cfg.num_self_attention_layers) == (
        784,
        512,
        8,
    )
    assert (cfg.input_channels, cfg.query_channels, cfg.num_inputs) == (704, 1026, 50176 + 1920 + 1)


def test_paper_preset_matches_hf_parameter_count():
    import transformers

    hf_cfg = transformers.PerceiverConfig(
        num_latents=784,
        d_latents=512,
        num_self_attends_per_block=8,
        num_cross_attention_heads=1,
        num_self_attention_heads=8,
        num_labels=700,
        image_size=224,
        output_shape=[1, 16, 224, 224],
    )
    with torch.device("meta"):
        hf = transformers.PerceiverForMultimodalAutoencoding(hf_cfg)
    cfg = _paper()
    # HF also holds mask tokens for audio and image, which it never uses (mask probability 0).
    assert sum(p.numel() for p in hf.parameters()) == cfg.num_params() + 2 * cfg.input_channels


def test_tiny_preset_counts_and_flops():
    cfg = load_config(TINY, ["data.dir=x"]).model
    model = build_model("perceiver_io_multimodal", cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    assert cfg.flops_per_sample() > cfg.flops_per_sample(256, 64)  # default: decode everything
    assert cfg.flops_per_sample(256, 64) > cfg.flops_per_sample(
        num_video_queries=0, num_audio_queries=0
    )


def test_position_encodings_golden():
    # freqs linspace(1, 4 / 2, 2) = [1, 2]; pos 0.5 -> [0.5, sin(pi/2), sin(pi), cos(pi/2), cos(pi)]
    got = fourier_features(torch.tensor([[0.5]]), num_bands=2, max_resolution=(4,))
    torch.testing.assert_close(got, torch.tensor([[0.5, 1.0, 0.0, 0.0, -1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(grid_positions((3,)), torch.tensor([[-1.0], [0.0], [1.0]]))
    idx = torch.tensor([[0, 5, 23]])  # grid (2, 3, 4): 5 = (0, 1, 1), 23 = (1, 2, 3)
    want = torch.tensor([[[-1, -1, -1], [-1, -1 / 3, -0.5], [0, 1 / 3, 0.5]]])
    torch.testing.assert_close(index_positions(idx, (2, 3, 4)), want.float())


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="frame_height"):
        PerceiverMultimodalConfig(frame_height=30)
    with pytest.raises(ConfigError, match="objective.train_audio_queries"):
        load_config(
            TINY, ["data.dir=x", "model.num_frames=1", "objective.train_audio_queries=1000"]
        )
    with pytest.raises(ValueError, match="self_attention_qk_channels"):
        PerceiverMultimodalConfig(self_attention_qk_channels=100)


def _hf_to_ours(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """HF PerceiverForMultimodalAutoencoding weights under our names (test-only conversion)."""
    out = {
        "latents": sd["perceiver.embeddings.latents"],
        "label_mask_token": sd["perceiver.input_preprocessor.mask.label"],
        "label_query": sd[
            "perceiver.decoder.modalities.label.decoder.output_position_encodings."
            "position_embeddings"
        ],
    }
    for ours, hf in (("audio", "audio"), ("video", "image"), ("label", "label")):
        out[f"input_padding.{ours}"] = sd[f"perceiver.input_preprocessor.padding.{hf}"]
        out[f"query_padding.{ours}"] = sd[f"perceiver.decoder.padding.{hf}"]
        for p in ("weight", "bias"):
            hf_key = f"perceiver.output_postprocessor.modalities.{hf}.classifier.{p}"
            out[f"{ours}_head.{p}"] = sd[hf_key]
    for p in ("weight", "bias"):
        out[f"decoder_output.{p}"] = sd[f"perceiver.decoder.decoder.final_layer.{p}"]
    layers = [
        ("cross_attention.", "perceiver.encoder.cross_attention.", True),
        ("decoder_cross_attention.", "perceiver.decoder.decoder.decoding_cross_attention.", True),
    ] + [
        (f"self_attention_layers.{i}.", f"perceiver.encoder.self_attends.{i}.", False)
        for i in range(num_layers)
    ]
    for ours_prefix, hf_prefix, cross in layers:
        for ours, hf in _CROSS_KEYS if cross else _SELF_KEYS:
            out[ours_prefix + ours] = sd[hf_prefix + hf]
        names = ["key", "value"] if cross else ["query", "key", "value"]
        fused = "attention.kv_proj." if cross else "attention.qkv_proj."
        for p in ("weight", "bias"):
            parts = [sd[f"{hf_prefix}attention.self.{n}.{p}"] for n in names]
            out[ours_prefix + fused + p] = torch.cat(parts)
    return out


def test_matches_hf_multimodal_autoencoder():
    import transformers

    t, s, spf, c = 2, 16, 64, 5
    hf_cfg = transformers.PerceiverConfig(
        num_latents=16,
        d_latents=32,
        num_self_attends_per_block=2,
        num_cross_attention_heads=1,
        num_self_attention_heads=4,
        num_labels=c,
        image_size=s,
        num_frames=t,
        audio_samples_per_frame=spf,
        samples_per_patch=16,
        output_shape=[1, t, s, s],
        output_num_channels=24,
        _label_trainable_num_channels=8,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    hf = transformers.PerceiverForMultimodalAutoencoding(hf_cfg).eval()
    cfg = PerceiverMultimodalConfig(
        num_frames=t,
        frame_height=s,
        frame_width=s,
        audio_samples_per_frame=spf,
        num_classes=c,
        label_query_channels=8,
        num_latents=16,
        num_latent_channels=32,
        num_self_attention_heads=4,
        num_self_attention_layers_per_block=2,
        decoder_output_channels=24,
        decode_chunk_size=100,
    )
    model = PerceiverMultimodal(cfg).eval()
    model.load_state_dict(_hf_to_ours(hf.state_dict(), 2))
    frames, audio = torch.rand(2, t, s, s, 3), torch.rand(2, t * spf) * 2 - 1
    label = torch.tensor([3, 1])
    vidx, aidx = torch.tensor([0, 5, 100, 511, 300]), torch.tensor([0, 3, 7])
    with torch.no_grad():
        want = hf(
            inputs={
                "image": frames.permute(0, 1, 4, 2, 3),
                "audio": audio[..., None],
                "label": torch.nn.functional.one_hot(label, c).float(),
            },
            subsampled_output_points={"image": vidx, "audio": aidx, "label": None},
        ).logits
        masked = torch.ones(2, dtype=torch.bool)  # HF always masks the label input
        got = model(frames, audio, label, masked, vidx.expand(2, -1), aidx.expand(2, -1))
        full = model(frames, audio, label, masked)
    torch.testing.assert_close(got["video"], want["image"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["audio"].flatten(1), want["audio"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["label"], want["label"], atol=1e-5, rtol=1e-4)
    # Chunked full reconstruction decodes the same queries to the same values.
    assert full["video"].shape == (2, t, s, s, 3) and full["audio"].shape == (2, t * spf)
    torch.testing.assert_close(full["video"].flatten(1, 3)[:, vidx], got["video"])
    torch.testing.assert_close(full["audio"].reshape(2, -1, 16)[:, aidx], got["audio"])
    torch.testing.assert_close(full["label"], got["label"])


def _objective(overrides: tuple[str, ...] = ()):
    from pretrain.objectives.registry import build_objective

    cfg = load_config(TINY, ["data.dir=x", *overrides])
    assert cfg.objective.name == "multimodal_ae"
    return cfg, build_objective(cfg)


def _raw_batch(cfg, b: int = 4) -> dict[str, torch.Tensor]:
    mc = cfg.model
    g = torch.Generator().manual_seed(0)
    return {
        "frames": torch.randint(0, 256, (b, 4, 32, 32, 3), generator=g, dtype=torch.uint8),
        "audio": torch.rand(b, mc.num_audio_samples, generator=g) - 0.5,
        "has_audio": torch.tensor([True, False, True, True])[:b],
        "label": torch.tensor([0, 3, 7, 1])[:b],
    }


def test_psnr_golden():
    from pretrain.objectives.multimodal import psnr

    assert psnr(se_sum=0.01 * 100, count=100) == pytest.approx(20.0)  # MSE 0.01, peak 1
    assert psnr(se_sum=0.0, count=10) == math.inf


def test_objective_transform_is_a_function_of_the_key():
    cfg, objective = _objective()
    raw = _raw_batch(cfg)
    a, b, c = objective.transform(raw, 7), objective.transform(raw, 7), objective.transform(raw, 8)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["video_query_idx"], c["video_query_idx"])
    mc, st = cfg.model, cfg.objective
    assert a["video_query_idx"].shape == (4, st.train_video_queries)
    assert a["audio_query_idx"].shape == (4, st.train_audio_queries)
    for row in a["video_query_idx"]:  # without replacement, within range
        assert len(set(row.tolist())) == st.train_video_queries and row.max() < mc.num_pixels
    masks = torch.cat([objective.transform(raw, k)["label_mask"] for k in range(200)])
    assert 0.4 < masks.float().mean() < 0.6


def test_objective_step_train_and_eval():
    cfg, objective = _objective()
    torch.manual_seed(0)
    model = build_model(cfg.model_type, cfg.model)
    model.init_weights()
    batch = objective.transform(_raw_batch(cfg), 0)
    loss, sums = objective.step(model, batch)
    assert set(sums) == set(objective.stat_keys)
    loss.backward()
    assert model.latents.grad is not None and loss.item() > 0
    assert sums["audio_count"] == 3 * cfg.objective.train_audio_queries * 16  # one mute clip
    assert sums["count"] == batch["label_mask"].sum()
    metrics = objective.summarize({k: float(v) for k, v in sums.items()}, "train")
    assert math.isfinite(metrics["train/video_psnr"]) and "train/audio_psnr" in metrics
    assert metrics["train/loss"] == pytest.approx(loss.item(), rel=1e-5)

    model.eval()
    with torch.no_grad():
        _, sums = objective.step(model, batch)
    mc = cfg.model
    assert sums["video_count"] == 4 * mc.num_pixels * 3 and sums["count"] == 4  # all masked
    images = objective.images()
    assert list(images) == ["val/reconstruction"]
    assert images["val/reconstruction"].shape == (4, 32, 64, 3)
    assert images["val/reconstruction"].dtype == torch.uint8
    assert objective.images() == {}  # handed out once per evaluation


def test_activation_checkpointing_keeps_loss_and_gradients():
    from pretrain.train.parallelize import (
        apply_activation_checkpointing,
        checkpointed_layer_indices,
    )

    cfg, objective = _objective()
    batch = objective.transform(_raw_batch(cfg), 3)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model_type, cfg.model)
        model.init_weights()
        if checkpointing:
            apply_activation_checkpointing(model)
            assert checkpointed_layer_indices(model) == [0, 1]
        loss, _ = objective.step(model, batch)
        loss.backward()
        grads.append((loss.detach(), model.latents.grad.clone()))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.fixture(scope="module")
def tiny_video_shards(tmp_path_factory) -> Path:
    """4 classes, 32 clips of 4 frames at 32 x 32 with 48 kHz audio.

    Colours, tone and a constant audio level differ by class; the level is what a few training
    steps can learn (a tone takes longer), so the audio-dominated loss visibly falls.
    """
    from data_pipeline.video.decode import ClipSpec
    from data_pipeline.video.shards import prepare_videos
    from tests.data_pipeline.test_video import write_clip

    root = tmp_path_factory.mktemp("videos")
    for c, tone in enumerate((300.0, 700.0, 1500.0, 3000.0)):
        for i in range(4):
            write_clip(
                root / "in" / f"class{c}" / f"v{i}.mp4",
                num_frames=10,
                seed=60 * c + 7 * i,
                tone_hz=tone,
                amplitude=0.1,
                offset=0.2 + 0.1 * c,
                size=(40, 40),
            )
    spec = ClipSpec(num_frames=4, height=32, width=32, clips_per_video=2)
    prepare_videos(root / "in", root / "shards", spec, val_fraction=0.25, progress=False)
    return root / "shards"


def test_check_data_refuses_mismatched_clips(tiny_video_shards):
    from pretrain.objectives.registry import check_data

    cfg = load_config(TINY, [f"data.dir={tiny_video_shards}"])
    check_data(cfg)
    bad = load_config(TINY, [f"data.dir={tiny_video_shards}", "model.num_frames=8"])
    with pytest.raises(ConfigError, match="data.dir: .*num_frames=4 but the model needs 8"):
        check_data(bad)


@pytest.mark.slow
def test_empty_val_split_warns_once_and_trains_without_validation(tmp_path):
    """As for text shards (test_train_e2e.py): an empty val split is no reason to stop."""
    from data_pipeline.video.decode import ClipSpec
    from data_pipeline.video.shards import prepare_videos
    from tests.data_pipeline.test_video import write_clip

    for c in range(2):
        for i in range(2):
            write_clip(tmp_path / "in" / f"class{c}" / f"v{i}.mp4", num_frames=6, seed=50 * c + i)
    data = tmp_path / "shards"
    spec = ClipSpec(num_frames=4, height=32, width=32)
    prepare_videos(tmp_path / "in", data, spec, val_fraction=0.0, progress=False)
    run = tmp_path / "run"
    proc = run_perceiver(
        [
            "train", str(TINY), f"data.dir={data}", f"trainer.run_dir={run}",
            "logging.progress_bar=false", "trainer.max_steps=2", "trainer.log_every=1",
            "trainer.val_every=1", "checkpoint.every=0",
        ]
    )  # fmt: skip
    assert proc.stderr.count("no validation (trainer.val_every=1 skipped)") == 1
    assert f"{data / 'val'} has no clips" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["state"]["step"] == 2
    assert summary["val_metrics"] == {}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    assert not any(k.startswith("val/") for r in rows for k in r)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_zero2_training_reduces_the_loss(tiny_video_shards, tmp_path):
    run = tmp_path / "run"
    run_perceiver(
        [
            "train",
            str(TINY),
            f"data.dir={tiny_video_shards}",
            f"trainer.run_dir={run}",
            "logging.progress_bar=false",
            "trainer.max_steps=16",
            "trainer.log_every=2",
            "trainer.val_every=16",
            "trainer.val_batches=1",
            "checkpoint.every=0",
            "--nproc-per-node",
            "2",
        ]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["state"]["step"] == 16
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 8
    assert sum(losses[-2:]) < 0.7 * sum(losses[:2]), losses
    val = summary["val_metrics"]
    assert {"val/loss", "val/video_psnr", "val/audio_psnr", "val/top1"} <= set(val)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "val/reconstruction" in events.Tags()["images"]
    assert (run / "checkpoints").is_dir()


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_losses_exactly(tiny_video_shards, tmp_path):
    """Stop after step 3, resume: steps 4-6 see the same clips, masks and dropout as a run that
    never stopped (loader state, per-step mask keys and every RNG come back)."""

    def train(run: Path, *extra: str) -> dict[int, float]:
        run_perceiver(
            [
                "train", str(TINY), f"data.dir={tiny_video_shards}", f"trainer.run_dir={run}",
                "logging.progress_bar=false", "logging.tensorboard=false", "trainer.max_steps=6",
                "trainer.log_every=1", "trainer.val_every=0", "checkpoint.every=0", *extra,
            ]
        )  # fmt: skip
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    full = train(tmp_path / "full")
    train(tmp_path / "parts", "--stop-at-step", "3")
    summary = json.loads((tmp_path / "parts" / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["state"]["step"] == 3
    parts = train(tmp_path / "parts")
    summary = json.loads((tmp_path / "parts" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step_00000003")
    assert sorted(full) == sorted(parts) == list(range(1, 7))
    assert [full[s] for s in range(1, 7)] == [parts[s] for s in range(1, 7)]  # bit-identical


@pytest.mark.slow
def test_video_mixture_trains_and_refuses_mismatched_clips(tiny_video_shards, tmp_path):
    import shutil

    import yaml

    from data_pipeline.shards.manifest import check_shards
    from pretrain.objectives.registry import check_data

    root = tmp_path / "data"
    for name in ("kinetics", "other"):
        shutil.copytree(tiny_video_shards, root / name)
    raw = yaml.safe_load(TINY.read_text())
    raw["data"] = {
        "dir": str(root),
        "mixture": [
            {"name": "kinetics", "dir": "kinetics", "proportion": 0.7},
            {"name": "other", "dir": "other", "proportion": 0.3},
        ],
    }
    config = tmp_path / "mixture.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    run_perceiver(
        [
            "train", str(config), f"trainer.run_dir={run}", "logging.progress_bar=false",
            "logging.tensorboard=false", "trainer.max_steps=2", "trainer.log_every=1",
            "trainer.val_every=2", "trainer.val_batches=2", "checkpoint.every=0",
        ]
    )  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and "val/video_psnr" in summary["val_metrics"]

    # Clips of another geometry: refused before training, naming the mixture entry.
    manifest_path = root / "other" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["video"]["num_frames"] = 8
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"data.mixture\[1\].dir: .*num_frames=8"):
        check_data(load_config(config))
    with pytest.raises(ValueError, match="one clip geometry"):
        check_shards([root / "kinetics", root / "other"])
    text = tmp_path / "text"
    (text).mkdir()
    (text / "manifest.json").write_text(
        json.dumps({**manifest, "kind": "tokens", "format_version": manifest["format_version"]})
    )
    with pytest.raises(ValueError, match="a mixture needs one kind"):
        check_shards([root / "kinetics", text])
