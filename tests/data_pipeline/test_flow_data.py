"""Optical-flow data: file formats, the procedural generator, dataset readers, flow shards.

Every file is written here (tiny arrays); the four real Sintel frames in
/work/shared/data/flow_frames (no ground truth) are read when present.
"""

from __future__ import annotations

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
