"""Optical-flow data: file formats, the procedural generator, dataset readers, flow shards.

Every file is written here (tiny arrays); the four real Sintel frames in
/work/shared/data/flow_frames (no ground truth) are read when present.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.flow.formats import (
    flow_to_color,
    make_colorwheel,
    read_flo,
    read_image,
    read_kitti_flow,
    write_flo,
    write_kitti_flow,
)

REAL_FRAMES = Path("/work/shared/data/flow_frames")


# --- formats ---------------------------------------------------------------------------------


def test_flo_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 5, (5, 7, 2)).astype(np.float32)
    path = write_flo(tmp_path / "a.flo", flow)
    data = path.read_bytes()
    assert data[:4] == b"PIEH"
    assert struct.unpack("<ii", data[4:12]) == (7, 5)  # width, height
    assert len(data) == 12 + 5 * 7 * 2 * 4
    # u, v interleaved, row-major: the second float is v of pixel (0, 0), the third u of (0, 1)
    assert struct.unpack("<3f", data[12:24]) == tuple(float(x) for x in flow.reshape(-1)[:3])
    back = read_flo(path)
    assert back.dtype == np.float32 and back.shape == (5, 7, 2)
    np.testing.assert_array_equal(back, flow)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary


def test_flo_bad_files_raise_naming_the_file(tmp_path):
    good = write_flo(tmp_path / "good.flo", np.zeros((4, 4, 2), np.float32)).read_bytes()
    truncated = tmp_path / "truncated.flo"
    truncated.write_bytes(good[:-5])
    with pytest.raises(ValueError, match=r"truncated\.flo.*truncated"):
        read_flo(truncated)
    magic = tmp_path / "magic.flo"
    magic.write_bytes(struct.pack("<f", 1.5) + good[4:])
    with pytest.raises(ValueError, match=r"magic\.flo.*magic number"):
        read_flo(magic)
    short = tmp_path / "short.flo"
    short.write_bytes(b"PIE")
    with pytest.raises(ValueError, match=r"short\.flo"):
        read_flo(short)
    huge = tmp_path / "huge.flo"
    huge.write_bytes(struct.pack("<fii", 202021.25, -3, 4))
    with pytest.raises(ValueError, match=r"huge\.flo.*size"):
        read_flo(huge)
    with pytest.raises(ValueError, match=r"\[H, W, 2\]"):
        write_flo(tmp_path / "x.flo", np.zeros((4, 4, 3)))


def test_kitti_flow_encoding_is_the_devkits(tmp_path):
    flow = np.array([[[1.5, -2.25], [0.0, 0.0]], [[-512.0, 511.984375], [3.0, 4.0]]], np.float32)
    valid = np.array([[True, True], [True, False]])
    path = write_kitti_flow(tmp_path / "000000_10.png", flow, valid)
    import torch
    from torchvision.io import ImageReadMode, decode_png

    raw = decode_png(
        torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), ImageReadMode.UNCHANGED
    )
    assert raw.dtype == torch.uint16
    raw = raw.permute(1, 2, 0).numpy().astype(np.int64)
    # u16 = flow * 64 + 2**15 (R = x, G = y), B = valid; unknown pixels stored as 0, 0, 0
    assert raw[0, 0].tolist() == [1.5 * 64 + 32768, -2.25 * 64 + 32768, 1]
    assert raw[0, 1].tolist() == [32768, 32768, 1]
    assert raw[1, 0].tolist() == [0, 65535, 1]
    assert raw[1, 1].tolist() == [0, 0, 0]
    back, back_valid = read_kitti_flow(path)
    assert back.dtype == np.float32 and back_valid.dtype == bool
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[valid], flow[valid])
    assert back[1, 1].tolist() == [0.0, 0.0]
    # an 8-bit PNG is not a KITTI flow file
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb8.png")
    with pytest.raises(ValueError, match=r"rgb8\.png.*16-bit"):
        read_kitti_flow(tmp_path / "rgb8.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"junk\.png"):
        read_kitti_flow(tmp_path / "junk.png")


def test_read_image_formats_and_corruption(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    for name in ("a.png", "a.ppm"):
        Image.fromarray(rgb).save(tmp_path / name)
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (6, 9, 3)
        np.testing.assert_array_equal(image, rgb)
    smooth = np.zeros((16, 16, 3), np.uint8)
    smooth[..., 0] = np.arange(16)[:, None] * 16
    smooth[..., 1] = 128
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - smooth).mean() < 4
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.repeat(rgb[..., :1], 3, 2))
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.png"):
        read_image(tmp_path / "text.png")


@pytest.mark.skipif(not REAL_FRAMES.is_dir(), reason="no real Sintel frames on this machine")
def test_read_image_real_sintel_frames():
    frames = sorted(REAL_FRAMES.glob("frame_*.png"))
    assert len(frames) == 4
    for path in frames:
        image = read_image(path)
        assert image.shape == (436, 1024, 3) and image.dtype == np.uint8
        assert image.std() > 10  # a real picture, not a constant


def test_colorwheel_is_middleburys():
    wheel = make_colorwheel()
    assert wheel.shape == (55, 3)
    assert wheel[0].tolist() == [255, 0, 0]  # red
    assert wheel[15].tolist() == [255, 255, 0]  # yellow
    assert wheel[21].tolist() == [0, 255, 0]  # green
    assert wheel[25].tolist() == [0, 255, 255]  # cyan
    assert wheel[36].tolist() == [0, 0, 255]  # blue
    assert wheel[49].tolist() == [255, 0, 255]  # magenta
    assert wheel[27].tolist() == [0, 255 - 46, 255]  # cyan -> blue: G = 255 - floor(255*2/11)


def test_flow_to_color_axis_hues_zero_and_unknown():
    flow = np.zeros((3, 3, 2), np.float32)
    flow[0, 0] = (1, 0)  # right
    flow[0, 1] = (-1, 0)  # left
    flow[0, 2] = (0, 1)  # down (y grows downwards)
    flow[1, 0] = (0, -1)  # up
    flow[1, 1] = (0.5, 0)  # half of max_flow: half saturated
    flow[1, 2] = (np.nan, 0)  # unknown
    flow[2, 0] = (1e10, 0)  # unknown (Middlebury: above 1e9)
    flow[2, 1] = (2, 0)  # beyond max_flow: darkened by 0.75
    color = flow_to_color(flow, max_flow=1.0).astype(int)
    assert color.dtype == np.int64
    # the wheel at angle atan2(-v, -u): right = wheel[0], left = wheel[27], down = between
    # wheel[13] and [14] (255, 229.5, 0), up = between wheel[40] and [41] (88, 0, 255)
    assert color[0, 0].tolist() == [255, 0, 0]
    assert color[0, 1].tolist() == [0, 209, 255]
    np.testing.assert_allclose(color[0, 2], [255, 229, 0], atol=1)
    np.testing.assert_allclose(color[1, 0], [88, 0, 255], atol=1)
    assert color[1, 1].tolist() == [255, 127, 127]  # 1 - 0.5 * (1 - red)
    assert color[1, 2].tolist() == [0, 0, 0]
    assert color[2, 0].tolist() == [0, 0, 0]
    assert color[2, 1].tolist() == [191, 0, 0]  # 0.75 * red
    assert color[2, 2].tolist() == [255, 255, 255]  # zero flow: white
    # max_flow=None normalises by the largest known magnitude (2 here): (2, 0) fully red
    auto = flow_to_color(flow)
    assert auto[2, 1].tolist() == [255, 0, 0]
    assert flow_to_color(np.zeros((2, 2, 2))).tolist() == [[[255] * 3] * 2] * 2


# --- the procedural generator ----------------------------------------------------------------


def _bilinear_warp(frame2: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """frame2 sampled at x + flow (bilinear): float [H, W, 3], and the top-left neighbours."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    f = frame2.astype(np.float64)
    top = f[y0, x0] * (1 - fx) + f[y0, x0 + 1] * fx
    bottom = f[y0 + 1, x0] * (1 - fx) + f[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy, (x0, y0)


def test_generated_flow_warps_frame2_onto_frame1():
    from data_pipeline.flow.generate import make_scene, render, top_layer, visible_in_frame2

    h, w = 48, 64
    ys, xs = np.mgrid[0:h, 0:w]
    pixels = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    for seed in range(3):
        scene = make_scene(seed, h, w, max_flow=6.0)
        frame1, frame2, flow = render(scene)
        assert frame1.shape == frame2.shape == (h, w, 3) and frame1.dtype == np.uint8
        assert flow.shape == (h, w, 2) and flow.dtype == np.float32
        assert np.sqrt((flow.astype(np.float64) ** 2).sum(-1)).max() <= 6.0 + 1e-4
        assert np.abs(flow).max() > 0.5  # things move
        assert frame1.std() > 15 and len(np.unique(frame1.reshape(-1, 3), axis=0)) > 200
        visible = visible_in_frame2(scene, flow)
        assert 0.3 < visible.mean() < 1.0  # occlusion and pixels leaving the frame happen
        # Away from layer edges (the four pixels bilinear sampling reads show the same layer
        # in frame 2 as the pixel in frame 1), the warp reproduces frame 1.
        top1 = top_layer(scene, pixels, 1)[0].reshape(h, w)
        top2 = top_layer(scene, pixels, 2)[0].reshape(h, w)
        warped, (x0, y0) = _bilinear_warp(frame2, flow)
        interior = visible.copy()
        for dy in (0, 1):
            for dx in (0, 1):
                interior &= top2[y0 + dy, x0 + dx] == top1
        assert interior.mean() > 0.3
        err = np.abs(warped - frame1).max(axis=2)
        assert err[interior].mean() < 1.5 and np.percentile(err[interior], 99) < 6
        # ... which a wrong flow does not
        for wrong in (np.zeros_like(flow), flow + np.float32(1.5), -flow):
            bad = np.abs(_bilinear_warp(frame2, wrong)[0] - frame1).max(axis=2)
            assert bad[interior].mean() > 4 * err[interior].mean() + 2


def test_generate_pair_is_deterministic_and_fast():
    import time

    from data_pipeline.flow.generate import generate_pair

    a = generate_pair(5, 64, 96)
    b = generate_pair(5, 64, 96)
    c = generate_pair(6, 64, 96)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    started = time.perf_counter()
    for seed in range(5):
        generate_pair(seed, 64, 96, max_flow=3.0)
    assert (time.perf_counter() - started) / 5 < 0.25  # ~15 ms on one core
    small = generate_pair(1, 64, 96, max_flow=3.0)[2]
    assert np.sqrt((small.astype(np.float64) ** 2).sum(-1)).max() <= 3.0 + 1e-4
    with pytest.raises(ValueError, match="max_flow"):
        generate_pair(0, 8, 8, max_flow=0)
    with pytest.raises(ValueError, match="height and width"):
        generate_pair(0, 1, 8)


def test_texture_scale_makes_finer_textures_deterministically():
    from data_pipeline.flow.generate import generate_pair

    def gradient(frame: np.ndarray) -> float:
        return float(np.abs(np.diff(frame.astype(np.float64), axis=1)).mean())

    default = generate_pair(5, 64, 96)
    for x, y in zip(generate_pair(5, 64, 96, texture_scale=1.0), default):
        np.testing.assert_array_equal(x, y)  # 1.0 is the default generator, byte for byte
    fine = generate_pair(5, 64, 96, texture_scale=0.25)
    for x, y in zip(generate_pair(5, 64, 96, texture_scale=0.25), fine):
        np.testing.assert_array_equal(x, y)
    ratios = []
    for seed in range(4):
        coarse, finer = (
            generate_pair(seed, 64, 96)[0],
            generate_pair(seed, 64, 96, texture_scale=0.25)[0],
        )
        ratios.append(gradient(finer) / gradient(coarse))
    assert min(ratios) > 1.5, ratios  # cells of 6, 2.25, 1 px instead of 24, 9, 4
    with pytest.raises(ValueError, match="texture_scale"):
        generate_pair(0, 8, 8, texture_scale=0.0)


def _shard_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_generate_flow_shards_same_bytes_for_any_worker_count(tmp_path, capsys):
    from data_pipeline.cli import main
    from data_pipeline.flow.generate import generate_pair
    from data_pipeline.flow.shards import generate_flow, pair_seed
    from data_pipeline.inspection import inspect_shards
    from data_pipeline.shards.manifest import (
        check_flow_manifest,
        check_image_manifest,
        iter_stored_samples,
    )

    one = generate_flow(tmp_path / "one", train=5, val=2, height=16, width=24, seed=3,
                        part_size=2, progress=False)  # fmt: skip
    assert main(["data", "generate-flow", "--output", str(tmp_path / "two"), "--train", "5",
                 "--val", "2", "--height", "16", "--width", "24", "--seed", "3",
                 "--texture-scale", "0.5", "--no-progress"]) == 0  # fmt: skip
    # the CLI uses the default part size (one part a split): compare 2 workers on 2-pair parts
    two = generate_flow(tmp_path / "three", train=5, val=2, height=16, width=24, seed=3,
                        part_size=2, workers=2, progress=False)  # fmt: skip
    assert _shard_files(tmp_path / "one") == _shard_files(tmp_path / "three")
    assert one["splits"]["train"]["samples"] == two["splits"]["train"]["samples"] == 5
    assert one["parts"] == {"train": 3, "val": 1}
    manifest = check_flow_manifest(tmp_path / "two", splits=("train", "val"))
    assert manifest["kind"] == "flow" and manifest["source"] == "generated"
    assert (manifest["height"], manifest["width"]) == (16, 24)
    assert manifest["splits"]["val"]["samples"] == 2 and manifest["rejected_count"] == 0
    assert not list(tmp_path.glob(".*"))  # no build directory left behind
    samples = list(iter_stored_samples(tmp_path / "two", "train"))
    assert [s["path"] for s in samples] == [f"generated/train/{i:08d}" for i in range(5)]
    assert manifest["generator"]["texture_scale"] == 0.5
    frame1, frame2, flow = generate_pair(pair_seed(3, "train", 4), 16, 24, texture_scale=0.5)
    last = samples[4]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(last["frame1"]))), frame1)
    np.testing.assert_array_equal(last["flow"], flow)
    assert last["valid"].dtype == np.uint8 and last["valid"].all()
    summary = inspect_shards(tmp_path / "two", num_samples=1)
    assert summary["kind"] == "flow" and summary["consistent_with_manifest"]
    assert (summary["height"], summary["width"]) == (16, 24)
    assert summary["samples"][0]["valid_fraction"] == 1.0
    assert 0 < summary["samples"][0]["flow_max"] <= 10.0
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "two")]) == 0
    text = capsys.readouterr().out
    assert "frame pairs + flow" in text and "frames 16x24" in text and "5 pairs" in text
    with pytest.raises(ValueError, match=r"two: not image shards \(kind 'flow'\)"):
        check_image_manifest(tmp_path / "two")
    with pytest.raises(ValueError, match="val"):
        generate_flow(tmp_path / "bad", train=1, val=-1, height=8, width=8, progress=False)


# --- dataset readers: prepare-flow -----------------------------------------------------------


def _frame(seed: int, h: int = 16, w: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _flow(seed: int, h: int = 16, w: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (h, w, 2)).astype(np.float32)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _write_sintel(root: Path) -> None:
    """alley_1: 4 frames, 3 good pairs; bamboo_1: a .flo with a wrong magic number, a flow of
    the wrong size, a missing flow file; cave_2: a truncated frame."""
    train = root / "training"
    for n in range(1, 5):
        _png(train / "clean" / "alley_1" / f"frame_{n:04d}.png", _frame(n))
    for n in range(1, 4):
        write_flo(train / "flow" / "alley_1" / f"frame_{n:04d}.flo", _flow(n))
    for n in range(1, 5):
        _png(train / "clean" / "bamboo_1" / f"frame_{n:04d}.png", _frame(10 + n))
    bad = write_flo(train / "flow" / "bamboo_1" / "frame_0001.flo", _flow(11)).read_bytes()
    (train / "flow" / "bamboo_1" / "frame_0001.flo").write_bytes(b"XXXX" + bad[4:])
    write_flo(train / "flow" / "bamboo_1" / "frame_0002.flo", _flow(12, 8, 8))
    for n in range(1, 3):
        _png(train / "clean" / "cave_2" / f"frame_{n:04d}.png", _frame(20 + n))
    write_flo(train / "flow" / "cave_2" / "frame_0001.flo", _flow(21))
    png = (train / "clean" / "cave_2" / "frame_0002.png").read_bytes()
    (train / "clean" / "cave_2" / "frame_0002.png").write_bytes(png[: len(png) // 2])


def test_prepare_flow_sintel_rejects_and_names_bad_files(tmp_path):
    from data_pipeline.cli import main
    from data_pipeline.shards.manifest import check_flow_manifest

    _write_sintel(tmp_path / "sintel")
    out = tmp_path / "shards"
    argv = ["data", "prepare-flow", "--format", "sintel", "--input", str(tmp_path / "sintel"),
            "--output", str(out), "--pass", "clean", "--val-fraction", "0",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    manifest = check_flow_manifest(out)
    assert manifest["source"] == "sintel" and manifest["pass"] == "clean"
    assert (manifest["height"], manifest["width"]) == (16, 24)
    assert manifest["splits"]["train"]["samples"] == 3  # alley_1's pairs
    assert {r["path"]: r["reason"] for r in manifest["rejected"]} == {
        "training/flow/bamboo_1/frame_0001.flo": "bad_flow",
        "training/clean/bamboo_1/frame_0002.png": "size_mismatch",
        "training/flow/bamboo_1/frame_0003.flo": "missing_file",
        "training/clean/cave_2/frame_0002.png": "bad_frame",
    }
    assert manifest["rejected_by_reason"] == {
        "bad_flow": 1, "bad_frame": 1, "missing_file": 1, "size_mismatch": 1,
    }  # fmt: skip
    magic = next(r for r in manifest["rejected"] if r["reason"] == "bad_flow")
    assert "magic number" in magic["detail"]
    samples = list(iter_stored(out))
    assert [s["path"] for s in samples] == [
        f"training/clean/alley_1/frame_{n:04d}.png" for n in range(1, 4)
    ]
    for n, sample in enumerate(samples, 1):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(sample["frame2"]))),
                                      _frame(n + 1))  # fmt: skip
        np.testing.assert_array_equal(sample["flow"], _flow(n))
    with pytest.raises(SystemExit, match="not found"):
        main(["data", "prepare-flow", "--format", "kitti", "--input", str(tmp_path / "sintel"),
              "--output", str(tmp_path / "k")])  # fmt: skip
    for argv in (
        ["prepare-flow", "--format", "sintel", "--input", str(tmp_path / "missing")],
        ["generate-flow", "--train", "2", "--val", "1", "--height", "8", "--width", "8"],
    ):
        with pytest.raises(SystemExit, match="writes a local directory, not s3://b/flow"):
            main(["data", *argv, "--output", "s3://b/flow"])


def iter_stored(root: Path, split: str = "train"):
    from data_pipeline.shards.manifest import iter_stored_samples

    return iter_stored_samples(root, split)


def test_prepare_flow_kitti_and_chairs_layouts(tmp_path):
    from data_pipeline.flow.readers import prepare_flow

    kitti = tmp_path / "kitti" / "training"
    valid = np.ones((16, 24), bool)
    valid[::3] = False
    for n in range(3):
        _png(kitti / "image_2" / f"{n:06d}_10.png", _frame(30 + n))
        if n != 1:
            _png(kitti / "image_2" / f"{n:06d}_11.png", _frame(40 + n))
        flow = np.round(_flow(30 + n) * 64) / 64  # exactly representable in KITTI's encoding
        if n == 2:
            _png(kitti / "flow_occ" / f"{n:06d}_10.png", _frame(0))  # 8-bit: not a flow PNG
        else:
            write_kitti_flow(kitti / "flow_occ" / f"{n:06d}_10.png", flow, valid)
    manifest = prepare_flow("kitti", tmp_path / "kitti", tmp_path / "k", val_fraction=0.0,
                            progress=False)  # fmt: skip
    assert manifest["splits"]["train"]["samples"] == 1
    assert {r["path"]: r["reason"] for r in manifest["rejected"]} == {
        "training/image_2/000001_11.png": "missing_file",
        "training/flow_occ/000002_10.png": "bad_flow",
    }
    (sample,) = iter_stored(tmp_path / "k")
    np.testing.assert_array_equal(sample["valid"], valid.astype(np.uint8))
    expected = np.where(valid[..., None], np.round(_flow(30) * 64) / 64, 0)
    np.testing.assert_array_equal(sample["flow"], expected.astype(np.float32))

    chairs = tmp_path / "chairs"
    for n in range(1, 5):
        for k in (1, 2):
            path = chairs / "data" / f"{n:05d}_img{k}.ppm"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_frame(50 + 2 * n + k)).save(path)
        write_flo(chairs / "data" / f"{n:05d}_flow.flo", _flow(50 + n))
    (chairs / "FlyingChairs_train_val.txt").write_text("1\n2\n1\n1\n")
    manifest = prepare_flow("chairs", chairs, tmp_path / "c", progress=False)
    assert manifest["split_rule"].startswith("FlyingChairs_train_val.txt")
    assert [s["path"] for s in iter_stored(tmp_path / "c")] == [
        "data/00001_img1.ppm", "data/00003_img1.ppm", "data/00004_img1.ppm"
    ]  # fmt: skip
    assert [s["path"] for s in iter_stored(tmp_path / "c", "val")] == ["data/00002_img1.ppm"]
    (val,) = iter_stored(tmp_path / "c", "val")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(val["frame1"]))), _frame(55))
    (chairs / "FlyingChairs_train_val.txt").write_text("1\n3\n")
    with pytest.raises(ValueError, match=r"train_val.txt:2: '3'"):
        prepare_flow("chairs", chairs, tmp_path / "c2", progress=False)


@pytest.mark.skipif(not REAL_FRAMES.is_dir(), reason="no real Sintel frames on this machine")
def test_prepare_flow_on_real_sintel_frames(tmp_path):
    from data_pipeline.flow.readers import prepare_flow
    from data_pipeline.loading.dataset import build_dataloader

    scene = tmp_path / "sintel" / "training" / "final" / "market_2"
    scene.mkdir(parents=True)
    real = sorted(REAL_FRAMES.glob("frame_*.png"))
    for path in real:
        (scene / path.name).symlink_to(path)
    numbers = [int(p.stem.split("_")[1]) for p in real]
    for n in numbers[:-1]:
        flow = np.zeros((436, 1024, 2), np.float32)
        flow[..., 0] = n  # a known value per pair
        write_flo(tmp_path / "sintel" / "training" / "flow" / "market_2" / f"frame_{n:04d}.flo",
                  flow)  # fmt: skip
    manifest = prepare_flow("sintel", tmp_path / "sintel", tmp_path / "out", render_pass="final",
                            val_fraction=0.0, progress=False)  # fmt: skip
    assert manifest["splits"]["train"]["samples"] == 3 and manifest["rejected_count"] == 0
    assert (manifest["height"], manifest["width"]) == (436, 1024)
    loader = build_dataloader(tmp_path / "out", "train", 2, shuffle=False)
    batch = next(iter(loader))
    assert batch["frames"].shape == (2, 2, 3, 436, 1024) and batch["sizes"].tolist() == [
        [436, 1024], [436, 1024]
    ]  # fmt: skip
    np.testing.assert_array_equal(batch["frames"][0, 1].permute(1, 2, 0).numpy(),
                                  read_image(real[1]))  # fmt: skip
    assert batch["flow"][1, ..., 0].eq(numbers[1]).all() and batch["valid"].all()
