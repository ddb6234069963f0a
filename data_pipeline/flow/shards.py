"""Flow shards (kind "flow"): frame pairs + flow -> MDS, written by `images.build.build_shards`.

Layout (the "flow" shard contract of docs/vision_data.md):

    DIR/manifest.json    kind "flow": source, per-split counts, height/width when every pair
                         has one size, sizes seen, rejected files by reason with names
    DIR/{train,val}/     MDS, columns `FLOW_COLUMNS`:
        frame1, frame2   bytes: PNG, RGB uint8
        flow             ndarray float32 [H, W, 2] (x, y), frame 1 -> frame 2
        valid            ndarray uint8 [H, W] (1: flow known)
        path             str: where the pair came from (a file, or "generated/SPLIT/INDEX")

`generate_flow` (`perceiver data generate-flow`) writes procedural pairs (`flow.generate`);
`flow.readers.prepare_flow` (`perceiver data prepare-flow`) converts Sintel, KITTI and
FlyingChairs.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_pipeline.images.build import PART_SIZE, TaskResult, build_shards
from data_pipeline.shards.manifest import DEFAULT_SIZE_LIMIT

__all__ = [
    "FLOW_COLUMNS",
    "KIND",
    "describe_flow",
    "encode_png",
    "flow_sample",
    "generate_flow",
    "pair_seed",
]

KIND = "flow"
FLOW_COLUMNS = {
    "frame1": "bytes",
    "frame2": "bytes",
    "flow": "ndarray:float32",
    "valid": "ndarray:uint8",
    "path": "str",
}


def encode_png(rgb_hw3: np.ndarray) -> bytes:
    """Lossless PNG bytes of uint8 [H, W, 3] (deterministic: same array, same bytes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb_hw3, np.uint8), "RGB").save(
        buffer, format="PNG", compress_level=6
    )
    return buffer.getvalue()


def flow_sample(
    frame1: np.ndarray,
    frame2: np.ndarray,
    flow: np.ndarray,
    valid: np.ndarray | None,
    path: str,
) -> tuple[dict[str, Any], str]:
    """The MDS sample of a pair and the counter key of its size.

    Args:
        frame1: uint8 [H, W, 3].
        frame2: uint8 [H, W, 3].
        flow: float [H, W, 2] (x, y).
        valid: bool/uint8 [H, W], or None (all known).
        path: Where the pair came from.

    Raises:
        ValueError: If the shapes disagree (naming `path` and the shapes).
    """
    h, w = frame1.shape[:2]
    if frame2.shape != frame1.shape or flow.shape != (h, w, 2):
        raise ValueError(
            f"{path}: size mismatch: frame1 {frame1.shape[:2]}, frame2 {frame2.shape[:2]}, "
            f"flow {flow.shape[:2]}"
        )
    valid_u8 = np.ones((h, w), np.uint8) if valid is None else np.asarray(valid).astype(np.uint8)
    if valid_u8.shape != (h, w):
        raise ValueError(f"{path}: valid mask {valid_u8.shape} but frames {(h, w)}")
    sample = {
        "frame1": encode_png(frame1),
        "frame2": encode_png(frame2),
        "flow": np.ascontiguousarray(flow, np.float32),
        "valid": valid_u8,
        "path": path,
    }
    return sample, f"size:{h}x{w}"


def describe_flow(source: str, extra: Mapping[str, Any] | None = None) -> Any:
    """The `describe` callback of `build_shards` for flow shards of `source`."""

    def describe(counts: dict[str, Counter[str]], rejections: list[dict[str, str]]) -> dict:
        sizes = {
            split: {k.removeprefix("size:"): v for k, v in c.items() if k.startswith("size:")}
            for split, c in counts.items()
        }
        every = {size for split_sizes in sizes.values() for size in split_sizes}
        height = width = None
        if len(every) == 1:
            height, width = (int(v) for v in next(iter(every)).split("x"))
        return {
            "source": source,
            "height": height,
            "width": width,
            "sizes": sizes,
            **dict(extra or {}),
        }

    return describe


def pair_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of pair `index` of `split` (independent of the worker count)."""
    state = np.random.SeedSequence([seed, ("train", "val").index(split), index])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _generated(task: tuple[str, int, int, int, int, float, float]) -> TaskResult:
    from data_pipeline.flow.generate import generate_pair

    split, index, seed, height, width, max_flow, texture_scale = task
    frame1, frame2, flow = generate_pair(
        pair_seed(seed, split, index),
        height,
        width,
        max_flow=max_flow,
        texture_scale=texture_scale,
    )
    sample, size = flow_sample(frame1, frame2, flow, None, f"generated/{split}/{index:08d}")
    return TaskResult(sample=sample, counts=[size])


def generate_flow(
    out_dir: str | os.PathLike[str],
    *,
    train: int,
    val: int,
    height: int,
    width: int,
    seed: int = 0,
    max_flow: float = 10.0,
    texture_scale: float = 1.0,
    workers: int = 1,
    part_size: int = PART_SIZE,
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes procedural flow pairs as flow shards; what `perceiver data generate-flow` runs.

    Pair i of a split is `generate_pair(pair_seed(seed, split, i), height, width)`, so the
    shards are the same bytes for any `workers`, and a crashed run resumes (see
    `images.build`).

    Args:
        out_dir: Destination shard directory (local).
        train: Training pairs.
        val: Validation pairs.
        height: Frame height.
        width: Frame width.
        seed: Dataset seed.
        max_flow: The largest flow magnitude in pixels.
        texture_scale: Multiplies the generator's texture cell sizes (below 1: finer textures).
        workers: Worker processes (spawned: scripts need the ``__main__`` guard).
        part_size: Pairs per part (the unit of parallel work and resume).
        size_limit: Shard size limit before compression.
        overwrite: Replace existing complete shards.
        progress: Progress bar on stderr.

    Returns:
        The manifest.

    Raises:
        ValueError: For bad sizes or counts.
    """
    if train < 1 or val < 0:
        raise ValueError(f"need train >= 1 and val >= 0 pairs, got train={train}, val={val}")
    if height < 2 or width < 2:
        raise ValueError(f"height and width must be at least 2, got {height} x {width}")
    if max_flow <= 0:
        raise ValueError(f"max_flow must be positive, got {max_flow}")
    if not texture_scale > 0:
        raise ValueError(f"texture_scale must be positive, got {texture_scale}")
    params = (float(max_flow), float(texture_scale))
    tasks: dict[str, Sequence[Any]] = {
        split: [(split, i, seed, height, width, *params) for i in range(count)]
        for split, count in (("train", train), ("val", val))
    }
    generator = {
        "name": "autoflow-style layers",
        "seed": seed,
        "max_flow": float(max_flow),
        "texture_scale": float(texture_scale),
    }
    return build_shards(
        out_dir,
        kind=KIND,
        command="generate-flow",
        columns=FLOW_COLUMNS,
        tasks=tasks,
        fn=_generated,
        settings={"source": "generated", **generator, "height": height, "width": width},
        describe=describe_flow("generated", {"generator": generator}),
        workers=workers,
        part_size=part_size,
        size_limit=size_limit,
        overwrite=overwrite,
        progress=progress,
    )
