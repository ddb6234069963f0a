"""The vision objectives through the real loop: image classification and optical flow on tiny
shards (the demo's drawn shapes, generated flow pairs), pre-flight checks, metrics, schedules."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pretrain.config import ConfigError, load_config
from tests.conftest import REPO
from tests.pretrain.test_loop import one_rank  # noqa: F401 (fixture)

TINY_IMAGE = REPO / "configs" / "tiny_image.yaml"
TINY_FLOW = REPO / "configs" / "tiny_flow.yaml"


def _demo():
    spec = importlib.util.spec_from_file_location("demo_vision", REPO / "tools" / "demo_vision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory) -> Path:
    from data_pipeline.images.prepare import prepare_images

    root = tmp_path_factory.mktemp("images")
    _demo().draw_shapes(root / "in", per_class=8, seed=0)
    prepare_images(root / "in", root / "shards", val_fraction=0.25, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def flow_shards(tmp_path_factory) -> Path:
    from data_pipeline.flow.shards import generate_flow

    out = tmp_path_factory.mktemp("flow") / "shards"
    generate_flow(out, train=24, val=8, height=36, width=52, seed=0, max_flow=2.0, progress=False)
    return out


def test_demo_draws_labelled_shape_folders_deterministically(tmp_path):
    demo = _demo()
    classes = demo.draw_shapes(tmp_path / "a", per_class=2, seed=3)
    demo.draw_shapes(tmp_path / "b", per_class=2, seed=3)
    assert classes == demo.CLASSES and len(classes) == 6
    for cls in classes:
        files = sorted((tmp_path / "a" / cls).glob("*.png"))
        assert [f.name for f in files] == ["0000.png", "0001.png"]
        for f in files:
            assert f.read_bytes() == (tmp_path / "b" / cls / f.name).read_bytes()


def test_check_data_refuses_wrong_kind_classes_and_small_frames(image_shards, flow_shards):
    from pretrain.config import check_inputs

    check_inputs(load_config(TINY_IMAGE, [f"data.dir={image_shards}"]))
    check_inputs(load_config(TINY_FLOW, [f"data.dir={flow_shards}"]))
    with pytest.raises(ConfigError, match="data.dir"):
        check_inputs(load_config(TINY_IMAGE, [f"data.dir={flow_shards}"]))
    with pytest.raises(ConfigError, match="data.dir"):
        check_inputs(load_config(TINY_FLOW, [f"data.dir={image_shards}"]))
    with pytest.raises(ConfigError, match="data.dir"):  # 6 classes in the shards
        check_inputs(load_config(TINY_IMAGE, [f"data.dir={image_shards}", "model.num_classes=5"]))
    big = [f"data.dir={flow_shards}", "model.image_height=40", "model.image_width=48"]
    with pytest.raises(ConfigError, match="smaller than the model's training size"):
        check_inputs(load_config(TINY_FLOW, big))
    with pytest.raises(ConfigError, match="objective.mixup_alpha"):
        load_config(TINY_IMAGE, ["data.dir=x", "objective.mixup_alpha=-1"])
    with pytest.raises(ConfigError, match="objective.max_log2_scale"):
        load_config(TINY_FLOW, ["data.dir=x", "objective.max_log2_scale=-1"])


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, images_bchw: torch.Tensor) -> torch.Tensor:
        return self.logits[: images_bchw.shape[0]]


def test_image_objective_top1_top5_counts_and_mixed_loss():
    from pretrain.objectives.vision import ImageClassificationObjective

    cfg = load_config(TINY_IMAGE, ["data.dir=x", "model.num_classes=7", "objective.mixup_alpha=1"])
    objective = ImageClassificationObjective(cfg)
    logits = torch.tensor([[7.0, 6, 5, 4, 3, 2, 1]]).repeat(4, 1)
    labels = torch.tensor([0, 4, 5, 6])  # top-1: 1 image; top-5 (classes 0-4): 2 images
    raw = {
        "images": torch.randint(0, 256, (4, 3, 40, 36), dtype=torch.uint8),
        "sizes": torch.tensor([[40, 36], [32, 32], [40, 20], [33, 36]]),
        "labels": labels,
    }
    model = FixedLogits(logits).eval()
    _, sums = objective.step(model, objective.transform(raw, key=0))
    assert (sums["correct"].item(), sums["correct5"].item(), sums["samples"].item()) == (1, 2, 4)
    want = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert math.isclose(sums["loss_sum"].item(), want.item(), rel_tol=1e-6)
    metrics = objective.summarize({k: float(v) for k, v in sums.items()}, "val")
    assert metrics["val/loss"] == pytest.approx(want.item() / 4)
    assert (metrics["val/top1"], metrics["val/top5"]) == (0.25, 0.5)
    model.train()  # MixUp on: a mixture of the two cross-entropies with label smoothing
    batch = objective.transform(raw, key=1)
    images, partner, lam = objective.model_inputs(batch, training=True)
    assert images.shape == (4, 3, 32, 32) and torch.equal(partner, labels.flip(0))
    loss, _ = objective.step(model, batch)
    ce = torch.nn.functional.cross_entropy
    mixed = lam * ce(logits, labels, label_smoothing=0.1, reduction="none") + (1 - lam) * ce(
        logits, partner, label_smoothing=0.1, reduction="none"
    )
    assert math.isclose(loss.item(), mixed.mean().item(), rel_tol=1e-5)


def test_flow_objective_epe_and_zero_baseline():
    from pretrain.objectives.vision import OpticalFlowObjective

    cfg = load_config(TINY_FLOW, ["data.dir=x"])
    objective = OpticalFlowObjective(cfg)
    h, w = cfg.model.image_height, cfg.model.image_width

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cfg = SimpleNamespace(image_height=h, image_width=w)
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, frames):
            return torch.tensor([3.0, 4.0]).expand(frames.shape[0], h, w, 2) + self.p

    valid = torch.ones(2, h, w, dtype=torch.bool)
    valid[1] = False  # the second pair has no valid pixel
    raw = {
        "frames": torch.randint(0, 256, (2, 2, 3, h, w), dtype=torch.uint8),
        "flow": torch.zeros(2, h, w, 2),
        "valid": valid,
        "sizes": torch.tensor([[h, w]] * 2),
    }
    model = Constant().eval()
    loss, sums = objective.step(model, objective.transform(raw, key=0))
    assert math.isclose(loss.item(), 5.0, rel_tol=1e-5)  # |(3, 4)| over the valid pixels only
    assert sums["count"].item() == h * w and sums["zero_epe_sum"].item() == 0
    m = objective.summarize({k: float(v) for k, v in sums.items()}, "val")
    assert m["val/epe"] == pytest.approx(5.0) and m["val/within_3px"] == 0
    panel = objective.images()["val/flow"]
    assert panel.shape == (1, h, 3 * w, 3) and panel.dtype == torch.uint8
    assert objective.images() == {}  # once per evaluation


def test_hold_steps_keep_the_peak_before_the_cosine():
    from pretrain.config import OptimizerConfig
    from pretrain.train.optim import lr_lambda

    f = lr_lambda(OptimizerConfig(warmup_steps=2, hold_steps=3, min_lr_ratio=0.0), max_steps=10)
    assert [round(f(s), 4) for s in range(11)] == [
        0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.9045, 0.6545, 0.3455, 0.0955, 0.0,
    ]  # fmt: skip


def _run(cfg_path: Path, data: Path, run: Path, *overrides: str):
    from pretrain.train.trainer import train

    cfg = load_config(
        cfg_path,
        [
            f"data.dir={data}", f"trainer.run_dir={run}", "trainer.max_steps=3",
            "trainer.log_every=1", "trainer.val_every=3", "trainer.val_batches=1",
            "trainer.micro_batch_size=4", "checkpoint.every=0", "logging.progress_bar=false",
            "trainer.activation_checkpointing=true", *overrides,
        ],
    )  # fmt: skip
    return train(cfg)


@pytest.mark.slow
@pytest.mark.usefixtures("one_rank")
def test_both_models_train_in_process_zero2_bf16_checkpointing(image_shards, flow_shards, tmp_path):
    """One test for both: DeepSpeed keeps its process groups for the life of the process group
    that the fixture creates once per test."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _run(TINY_IMAGE, image_shards, tmp_path / "image", "objective.randaugment_ops=2",
                  "objective.randaugment_magnitude=9", "objective.cutmix_alpha=1.0")  # fmt: skip
    assert result.status == "finished" and result.state.step == 3
    assert {"val/loss", "val/top1", "val/top5"} <= set(result.val_metrics)
    assert math.isfinite(result.last_loss)
    assert (tmp_path / "image" / "checkpoints").is_dir()

    run = tmp_path / "flow"
    result = _run(TINY_FLOW, flow_shards, run)
    assert result.status == "finished"
    val = result.val_metrics
    assert val["val/zero_flow_epe"] > 0 and math.isfinite(val["val/epe"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "val/flow" in events.Tags()["images"]
