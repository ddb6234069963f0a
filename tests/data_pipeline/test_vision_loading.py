"""Streaming image and flow shards: the collate functions, padding, sizes and loader resume."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.flow.shards import FLOW_COLUMNS, describe_flow, flow_sample
from data_pipeline.images.build import TaskResult, build_shards
from data_pipeline.loading.collators import stack_flow, stack_images
from data_pipeline.loading.dataset import build_dataloader, collate_for

SIZES = [(8, 12), (10, 6), (8, 12), (5, 9), (12, 7), (6, 6), (9, 11), (7, 10)]
"""(h, w) of the samples, in storage order: two parts of four, so two shards a split."""


def _pair(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    h, w = SIZES[i]
    rng = np.random.default_rng(i)
    frame1 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    frame2 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    flow = np.full((h, w, 2), i + 0.5, np.float32)
    flow[..., 1] = -i
    valid = np.ones((h, w), bool)
    valid[0, 0] = False
    return frame1, frame2, flow, valid


def _flow_task(i: int) -> TaskResult:
    sample, size = flow_sample(*_pair(i), f"pair{i}")
    return TaskResult(sample=sample, counts=[size])


def _image(i: int) -> np.ndarray:
    h, w = SIZES[i]
    return np.random.default_rng(100 + i).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _image_task(i: int) -> TaskResult:
    buffer = io.BytesIO()
    Image.fromarray(_image(i)).save(buffer, format="PNG")
    sample = {"image": buffer.getvalue(), "label": i % 3, "path": f"img{i}.png"}
    return TaskResult(sample=sample, counts=[f"class:{i % 3}"])


def _describe_images(counts, rejections):
    return {"classes": ["a", "b", "c"], "num_classes": 3}


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vision") / "flow"
    build_shards(
        out, kind="flow", command="test", columns=FLOW_COLUMNS,
        tasks={"train": list(range(8)), "val": [0, 1]}, fn=_flow_task, settings={},
        describe=describe_flow("test"), part_size=4, progress=False,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vision") / "images"
    columns = {"image": "bytes", "label": "int", "path": "str"}
    build_shards(
        out, kind="image", command="test", columns=columns,
        tasks={"train": list(range(8)), "val": [0, 1]}, fn=_image_task, settings={},
        describe=_describe_images, part_size=4, progress=False,
    )  # fmt: skip
    return out


def test_collate_for_picks_the_kinds_collator():
    assert collate_for({"kind": "flow"}) is stack_flow
    assert collate_for({"kind": "image"}) is stack_images


def test_flow_batches_padding_and_sizes(flow_dir):
    from data_pipeline.shards.manifest import read_manifest

    assert read_manifest(flow_dir)["splits"]["train"]["shards"] == 2
    loader = build_dataloader(flow_dir, "train", 3, shuffle=False, drop_last=False)
    batches = list(loader)
    assert [len(b["sizes"]) for b in batches] == [3, 3, 2]
    row = 0
    for batch in batches:
        b = len(batch["sizes"])
        hmax = max(SIZES[row + k][0] for k in range(b))
        wmax = max(SIZES[row + k][1] for k in range(b))
        assert batch["frames"].shape == (b, 2, 3, hmax, wmax)
        assert batch["frames"].dtype == torch.uint8
        assert batch["flow"].shape == (b, hmax, wmax, 2) and batch["flow"].dtype == torch.float32
        assert batch["valid"].shape == (b, hmax, wmax) and batch["valid"].dtype == torch.bool
        assert batch["sizes"].dtype == torch.int64
        for k in range(b):
            h, w = SIZES[row + k]
            frame1, frame2, flow, valid = _pair(row + k)
            assert batch["sizes"][k].tolist() == [h, w]
            assert (batch["frames"][k, 0, :, :h, :w].permute(1, 2, 0).numpy() == frame1).all()
            assert (batch["frames"][k, 1, :, :h, :w].permute(1, 2, 0).numpy() == frame2).all()
            assert (batch["flow"][k, :h, :w].numpy() == flow).all()
            assert (batch["valid"][k, :h, :w].numpy() == valid).all()
            # padding: zero frames and flow, valid False
            assert (
                batch["frames"][k, :, :, h:].eq(0).all() and batch["frames"][k, ..., w:].eq(0).all()
            )
            assert batch["flow"][k, h:].eq(0).all() and batch["flow"][k, :, w:].eq(0).all()
            assert not batch["valid"][k, h:].any() and not batch["valid"][k, :, w:].any()
        row += b


def test_image_batches_padding_sizes_and_labels(image_dir):
    loader = build_dataloader(image_dir, "train", 4, shuffle=False)
    batches = list(loader)
    assert len(batches) == 2
    for n, batch in enumerate(batches):
        rows = range(4 * n, 4 * n + 4)
        hmax = max(SIZES[i][0] for i in rows)
        wmax = max(SIZES[i][1] for i in rows)
        assert batch["images"].shape == (4, 3, hmax, wmax) and batch["images"].dtype == torch.uint8
        assert batch["labels"].tolist() == [i % 3 for i in rows]
        assert batch["sizes"].tolist() == [list(SIZES[i]) for i in rows]
        for k, i in enumerate(rows):
            h, w = SIZES[i]
            assert (batch["images"][k, :, :h, :w].permute(1, 2, 0).numpy() == _image(i)).all()
            assert (
                batch["images"][k, :, h:].eq(0).all() and batch["images"][k, :, :, w:].eq(0).all()
            )


@pytest.mark.parametrize("kind", ["flow", "image"])
def test_loader_resume_for_vision_kinds(kind, flow_dir, image_dir):
    root = flow_dir if kind == "flow" else image_dir
    key = "flow" if kind == "flow" else "images"

    def make():
        return build_dataloader(root, "train", 2, shuffle=True, seed=5)

    loader = make()
    iterator = iter(loader)
    seen = [next(iterator) for _ in range(2)]
    state = loader.state_dict()
    assert (state["epoch"], state["sample_in_epoch"]) == (0, 4)
    rest = list(iterator)
    assert len(seen) + len(rest) == 4
    resumed = make()
    resumed.load_state_dict(state)
    again = list(resumed)
    assert len(again) == len(rest) == 2
    for a, b in zip(again, rest):
        assert torch.equal(a[key], b[key]) and torch.equal(a["sizes"], b["sizes"])


def test_collate_errors():
    with pytest.raises(ValueError, match="empty"):
        stack_flow([])
    with pytest.raises(ValueError, match="empty"):
        stack_images([])
    with pytest.raises(ValueError, match="broken.jpg"):
        stack_images([{"image": b"not an image", "label": 0, "path": "broken.jpg"}])
    sample, _ = flow_sample(*_pair(0), "pair0")
    sample["flow"] = np.zeros((3, 3, 2), np.float32)
    with pytest.raises(ValueError, match="pair0"):
        stack_flow([sample])
