"""Optical-flow file formats: Middlebury ``.flo``, KITTI 16-bit flow PNGs, frames, colour coding.

The flow convention of the whole project: ``flow[..., 0]`` is the horizontal (x) displacement and
``flow[..., 1]`` the vertical (y) one, in pixels, from frame 1 to frame 2:
``frame1[y, x] ~ frame2[y + flow[y, x, 1], x + flow[y, x, 0]]``.

- ``.flo`` (Middlebury, Baker et al. 2011; Sintel and FlyingChairs use it): the float32 tag
  202021.25 (bytes ``PIEH``), int32 width, int32 height, then ``height * width * 2`` float32
  values (u, v interleaved, row-major), all little-endian.
- KITTI 2015 flow PNGs: 16-bit RGB; R = u * 64 + 2**15, G = v * 64 + 2**15, B = 1 where the flow
  is known (the devkit's ``io_flow.h``: values clamped to [0, 65535] and truncated; unknown
  pixels stored as (0, 0, 0) and read back as zero flow).
- ``flow_to_color``: the Middlebury colour wheel (``colorcode.cpp`` / ``flowToColor.m``): hue is
  the direction, saturation the magnitude; zero flow is white, unknown flow black.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from data_pipeline.files import atomic_write_bytes

__all__ = [
    "FLO_TAG",
    "flow_to_color",
    "make_colorwheel",
    "read_flo",
    "read_image",
    "read_kitti_flow",
    "write_flo",
    "write_kitti_flow",
]

FLO_TAG = 202021.25
"""The float32 magic number opening a ``.flo`` file (bytes ``PIEH``)."""
_FLO_HEADER = struct.Struct("<fii")
_UNKNOWN_FLOW = 1e9
"""Middlebury: a flow component above this is unknown."""
_KITTI_SCALE = 64.0
_KITTI_OFFSET = 2.0**15


def read_flo(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads a Middlebury ``.flo`` file.

    Returns:
        flow_hw2: float32 [H, W, 2] (x, y).

    Raises:
        ValueError: If the file has the wrong magic number, an impossible size or is truncated,
            naming the file.
    """
    data = Path(path).read_bytes()
    if len(data) < _FLO_HEADER.size:
        raise ValueError(f"{path}: truncated .flo file ({len(data)} bytes, no header)")
    tag, width, height = _FLO_HEADER.unpack_from(data)
    if tag != FLO_TAG:
        raise ValueError(
            f"{path}: not a .flo file (magic number {tag!r}, expected {FLO_TAG} 'PIEH')"
        )
    if width <= 0 or height <= 0 or width > 100_000 or height > 100_000:
        raise ValueError(f"{path}: impossible .flo size {width} x {height}")
    expected = _FLO_HEADER.size + 8 * width * height
    if len(data) != expected:
        raise ValueError(
            f"{path}: {len(data)} bytes but a {width} x {height} .flo file has {expected} "
            f"({'truncated' if len(data) < expected else 'trailing data'})"
        )
    flow = np.frombuffer(data, "<f4", count=2 * width * height, offset=_FLO_HEADER.size)
    return flow.reshape(height, width, 2).astype(np.float32)


def write_flo(path: str | os.PathLike[str], flow_hw2: np.ndarray) -> Path:
    """Writes ``flow_hw2`` (float [H, W, 2], x then y) as a Middlebury ``.flo`` file, atomically.

    Raises:
        ValueError: If the array is not [H, W, 2].
    """
    flow = np.asarray(flow_hw2)
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[0] == 0 or flow.shape[1] == 0:
        raise ValueError(f"{path}: flow must be [H, W, 2], got shape {flow.shape}")
    height, width = flow.shape[:2]
    header = _FLO_HEADER.pack(FLO_TAG, width, height)
    return atomic_write_bytes(path, header + np.ascontiguousarray(flow, "<f4").tobytes())


def read_kitti_flow(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reads a KITTI flow PNG (16-bit RGB, see the module docstring).

    Returns:
        ``(flow_hw2, valid_hw)``: float32 [H, W, 2] (zero where unknown) and bool [H, W].

    Raises:
        ValueError: If the file is not a 16-bit 3-channel PNG or cannot be decoded, naming it.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_png

    data = Path(path).read_bytes()
    try:
        image = decode_png(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED
        )
    except RuntimeError as err:
        raise ValueError(f"{path}: not a decodable PNG ({err})") from err
    if image.dtype != torch.uint16 or image.shape[0] != 3:
        raise ValueError(
            f"{path}: a KITTI flow PNG is 16-bit RGB, got {image.shape[0]} channel(s) of "
            f"{image.dtype}"
        )
    raw = image.permute(1, 2, 0).numpy().astype(np.float32)  # [H, W, 3]
    valid = raw[..., 2] > 0
    flow = (raw[..., :2] - _KITTI_OFFSET) / _KITTI_SCALE
    flow[~valid] = 0.0
    return flow.astype(np.float32), valid


def write_kitti_flow(
    path: str | os.PathLike[str], flow_hw2: np.ndarray, valid_hw: np.ndarray | None = None
) -> Path:
    """Writes a KITTI flow PNG atomically (the devkit's encoding, see the module docstring).

    Args:
        path: Destination ``.png``.
        flow_hw2: float [H, W, 2] (x, y).
        valid_hw: bool [H, W]; ``None``: every pixel is valid.

    Raises:
        ValueError: If the shapes do not match.
    """
    flow = np.asarray(flow_hw2, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"{path}: flow must be [H, W, 2], got shape {flow.shape}")
    valid = np.ones(flow.shape[:2], bool) if valid_hw is None else np.asarray(valid_hw, bool)
    if valid.shape != flow.shape[:2]:
        raise ValueError(f"{path}: valid has shape {valid.shape}, flow {flow.shape}")
    encoded = np.clip(flow * _KITTI_SCALE + _KITTI_OFFSET, 0.0, 65535.0).astype(np.uint16)
    rgb = np.zeros((*flow.shape[:2], 3), np.uint16)
    rgb[..., :2] = np.where(valid[..., None], encoded, 0)
    rgb[..., 2] = valid
    return atomic_write_bytes(path, _png16(rgb))


def _png16(rgb_hw3: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (no filtering) of uint16 [H, W, 3] (neither Pillow nor torchvision
    write 16-bit colour PNGs)."""
    height, width = rgb_hw3.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = np.ascontiguousarray(rgb_hw3, ">u2").view(np.uint8).reshape(height, width * 6)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter 0
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads a frame (PNG, JPEG, PPM, ...) fully decoded, as RGB.

    Returns:
        uint8 [H, W, 3].

    Raises:
        ValueError: If the file is not an image or is truncated or corrupt, naming it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                array = np.clip(array / 257.0, 0, 255).astype(np.uint8)  # 16-bit grey
                return np.repeat(array[..., None], 3, axis=2)
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err


def make_colorwheel() -> np.ndarray:
    """The Middlebury colour wheel: 55 RGB hues (red, yellow, green, cyan, blue, magenta).

    Returns:
        float64 [55, 3] in [0, 255].
    """
    ry, yg, gc, cb, bm, mr = 15, 6, 4, 11, 13, 6
    wheel = np.zeros((ry + yg + gc + cb + bm + mr, 3))
    col = 0
    for length, rising, channel_full, channel_change in (
        (ry, True, 0, 1),  # red -> yellow: G rises
        (yg, False, 1, 0),  # yellow -> green: R falls
        (gc, True, 1, 2),  # green -> cyan: B rises
        (cb, False, 2, 1),  # cyan -> blue: G falls
        (bm, True, 2, 0),  # blue -> magenta: R rises
        (mr, False, 0, 2),  # magenta -> red: B falls
    ):
        ramp = np.floor(255 * np.arange(length) / length)
        wheel[col : col + length, channel_full] = 255
        wheel[col : col + length, channel_change] = ramp if rising else 255 - ramp
        col += length
    return wheel


def flow_to_color(flow_hw2: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """Colour-codes a flow field with the Middlebury colour wheel (Baker et al. 2011).

    Args:
        flow_hw2: float [H, W, 2] (x, y). Non-finite components, or components above 1e9 in
            magnitude, are unknown.
        max_flow: The magnitude shown fully saturated; ``None``: the largest known magnitude
            (as ``flowToColor.m``). Larger magnitudes are darkened by 0.75.

    Returns:
        uint8 [H, W, 3]: white for zero flow, black for unknown flow.
    """
    flow = np.asarray(flow_hw2, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be [H, W, 2], got shape {flow.shape}")
    unknown = ~np.isfinite(flow).all(axis=2) | (np.abs(flow) > _UNKNOWN_FLOW).any(axis=2)
    u = np.where(unknown, 0.0, flow[..., 0])
    v = np.where(unknown, 0.0, flow[..., 1])
    rad = np.sqrt(u**2 + v**2)
    if max_flow is None:
        max_flow = float(rad.max()) if rad.size else 0.0
    if max_flow <= 0:
        max_flow = 1.0  # all zero: every pixel white
    u, v, rad = u / max_flow, v / max_flow, rad / max_flow
    wheel = make_colorwheel() / 255.0
    ncols = wheel.shape[0]
    angle = np.arctan2(-v, -u) / np.pi
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % ncols
    frac = (fk - k0)[..., None]
    col = (1 - frac) * wheel[k0] + frac * wheel[k1]  # [H, W, 3]
    inside = (rad <= 1)[..., None]
    col = np.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
    out = np.floor(255 * col).astype(np.uint8)
    out[unknown] = 0
    return out
