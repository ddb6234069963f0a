"""Optical-flow datasets in their own layouts -> flow shards (`perceiver data prepare-flow`).

    sintel   ROOT/training/{clean,final}/SCENE/frame_%04d.png, ROOT/training/flow/SCENE/
             frame_%04d.flo: the pairs (frame i, frame i+1) with the flow of frame i; the split
             is by scene (a hash of its name < --val-fraction), as the frames of a scene are
             alike.
    kitti    (2015) ROOT/training/image_2/%06d_10.png and %06d_11.png, ROOT/training/flow_occ/
             %06d_10.png (16-bit flow + valid mask, `formats.read_kitti_flow`); split by a hash
             of the pair's number.
    chairs   (FlyingChairs) ROOT/data/%05d_img1.ppm, %05d_img2.ppm, %05d_flow.flo; the split of
             ROOT/FlyingChairs_train_val.txt (line k: 1 = train, 2 = val for pair k) when it is
             there and --val-fraction is not given, else by hash.

A pair whose frame or flow file is missing, unreadable, truncated or of the wrong format, or
whose frames and flow differ in size, is rejected (counted by reason, named) and skipped. The
build is parallel, the same bytes for any worker count, and resumable (`images.build`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_pipeline.flow.formats import read_flo, read_image, read_kitti_flow
from data_pipeline.flow.shards import FLOW_COLUMNS, KIND, describe_flow, flow_sample
from data_pipeline.images.build import (
    PART_SIZE,
    Rejection,
    TaskResult,
    build_shards,
    check_local_output,
)
from data_pipeline.shards.manifest import DEFAULT_SIZE_LIMIT
from data_pipeline.shards.packing import assign_split

__all__ = ["DEFAULT_VAL_FRACTION", "FORMATS", "list_pairs", "prepare_flow"]

FORMATS = ("sintel", "kitti", "chairs")
DEFAULT_VAL_FRACTION = 0.05
_SINTEL_FRAME = re.compile(r"^frame_(\d{4})\.png$")
_KITTI_FLOW = re.compile(r"^(\d{6})_10\.png$")
_CHAIRS_FLOW = re.compile(r"^(\d{5})_flow\.flo$")

PairTask = tuple[str, str, str, str, str]
"""(format, root, then frame 1, frame 2 and flow relative to the root, POSIX)."""


def _task(fmt: str, root: Path, frame1: Path, frame2: Path, flow: Path) -> PairTask:
    return (fmt, str(root), *(p.relative_to(root).as_posix() for p in (frame1, frame2, flow)))


def _require(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} not found (not the expected layout)")
    return path


def _sintel(
    root: Path, render_pass: str, val_fraction: float
) -> tuple[dict[str, list[PairTask]], list[Rejection], str]:
    frames_root = _require(root / "training" / render_pass, f"Sintel {render_pass} pass")
    flow_root = _require(root / "training" / "flow", "Sintel flow folder")
    tasks: dict[str, list[PairTask]] = {"train": [], "val": []}
    rejections = []
    for scene in sorted(p for p in frames_root.iterdir() if p.is_dir()):
        split = assign_split(scene.name, val_fraction)
        numbers = sorted(
            int(m.group(1)) for p in scene.iterdir() if (m := _SINTEL_FRAME.match(p.name))
        )
        present = set(numbers)
        for n in numbers:
            if n + 1 not in present:
                continue
            frame1 = scene / f"frame_{n:04d}.png"
            flow = flow_root / scene.name / f"frame_{n:04d}.flo"
            if not flow.is_file():
                rejections.append(
                    Rejection(flow.relative_to(root).as_posix(), "missing_file", "no flow file")
                )
                continue
            frame2 = scene / f"frame_{n + 1:04d}.png"
            tasks[split].append(_task("sintel", root, frame1, frame2, flow))
    return tasks, rejections, "hash of the scene name < val_fraction"


def _kitti(root: Path, val_fraction: float) -> tuple[dict[str, list[PairTask]], list, str]:
    images = _require(root / "training" / "image_2", "KITTI training/image_2")
    flows = _require(root / "training" / "flow_occ", "KITTI training/flow_occ")
    tasks: dict[str, list[PairTask]] = {"train": [], "val": []}
    rejections = []
    for flow in sorted(flows.iterdir()):
        if not (m := _KITTI_FLOW.match(flow.name)):
            continue
        frame1, frame2 = images / f"{m.group(1)}_10.png", images / f"{m.group(1)}_11.png"
        missing = [f for f in (frame1, frame2) if not f.is_file()]
        if missing:
            rel = missing[0].relative_to(root).as_posix()
            rejections.append(Rejection(rel, "missing_file", "no such frame"))
            continue
        split = assign_split(m.group(1), val_fraction)
        tasks[split].append(_task("kitti", root, frame1, frame2, flow))
    return tasks, rejections, "hash of the pair number < val_fraction"


def _chairs(root: Path, val_fraction: float | None) -> tuple[dict[str, list[PairTask]], list, str]:
    data = _require(root / "data", "FlyingChairs data folder")
    split_file = root / "FlyingChairs_train_val.txt"
    official: list[str] | None = None
    if val_fraction is None and split_file.is_file():
        official = split_file.read_text(encoding="utf-8").split()
        for number, value in enumerate(official, 1):
            if value not in ("1", "2"):
                raise ValueError(f"{split_file}:{number}: {value!r} is neither 1 (train) nor 2")
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    tasks: dict[str, list[PairTask]] = {"train": [], "val": []}
    rejections = []
    for flow in sorted(data.iterdir()):
        if not (m := _CHAIRS_FLOW.match(flow.name)):
            continue
        index = int(m.group(1))
        frame1, frame2 = data / f"{m.group(1)}_img1.ppm", data / f"{m.group(1)}_img2.ppm"
        missing = [f for f in (frame1, frame2) if not f.is_file()]
        if missing:
            rel = missing[0].relative_to(root).as_posix()
            rejections.append(Rejection(rel, "missing_file", "no such frame"))
            continue
        if official is not None:
            if not 1 <= index <= len(official):
                raise ValueError(
                    f"{split_file}: {len(official)} lines, no split for pair {index} ({flow})"
                )
            split = "train" if official[index - 1] == "1" else "val"
        else:
            split = assign_split(m.group(1), fraction)
        tasks[split].append(_task("chairs", root, frame1, frame2, flow))
    rule = f"{split_file.name} (1 train, 2 val)" if official is not None else "hash < val_fraction"
    return tasks, rejections, rule


def list_pairs(
    fmt: str,
    root: str | os.PathLike[str],
    *,
    render_pass: str = "clean",
    val_fraction: float | None = None,
) -> tuple[dict[str, list[PairTask]], list[Rejection], str]:
    """The pairs of a dataset by split, the rejections found while listing, and the split rule.

    Raises:
        FileNotFoundError: If the root or the layout's folders are missing.
        ValueError: For an unknown format or pass, or a bad split file.
    """
    root = Path(root)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input directory not found")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if fmt == "sintel":
        if render_pass not in ("clean", "final"):
            raise ValueError(f"pass must be 'clean' or 'final', got {render_pass!r}")
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        return _sintel(root, render_pass, fraction)
    if fmt == "kitti":
        return _kitti(root, DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)
    return _chairs(root, val_fraction)


def _read_pair(task: PairTask) -> TaskResult:
    fmt, root, frame1, frame2, flow_rel = task
    frames = []
    for rel in (frame1, frame2):
        path = os.path.join(root, rel)
        try:
            frames.append(read_image(path))
        except (OSError, ValueError) as err:
            detail = str(err).removeprefix(f"{path}: ")
            return TaskResult(rejection=Rejection(rel, "bad_frame", detail))
    path = os.path.join(root, flow_rel)
    try:
        if fmt == "kitti":
            flow, valid = read_kitti_flow(path)
        else:
            flow, valid = read_flo(path), None
    except (OSError, ValueError) as err:
        detail = str(err).removeprefix(f"{path}: ")
        return TaskResult(rejection=Rejection(flow_rel, "bad_flow", detail))
    try:
        sample, size = flow_sample(frames[0], frames[1], flow, valid, frame1)
    except ValueError as err:
        detail = str(err).removeprefix(f"{frame1}: ")
        return TaskResult(rejection=Rejection(frame1, "size_mismatch", detail))
    return TaskResult(sample=sample, counts=[size])


def prepare_flow(
    fmt: str,
    input_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    render_pass: str = "clean",
    val_fraction: float | None = None,
    workers: int = 1,
    part_size: int = PART_SIZE,
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Converts Sintel, KITTI 2015 or FlyingChairs into flow shards (see the module docstring).

    Args:
        fmt: ``sintel``, ``kitti`` or ``chairs``.
        input_dir: The dataset's root.
        out_dir: The local output directory.
        render_pass: Sintel's pass, ``clean`` or ``final``.
        val_fraction: Validation fraction by hash; None: the dataset's own split where it has
            one (FlyingChairs_train_val.txt), else 0.05.
        workers: Decoding processes (spawned); the output does not depend on it.
        part_size: Pairs per part (the unit of parallel work and resume).
        size_limit: Shard size limit before compression.
        overwrite: Replace existing shards.
        progress: Progress bar on stderr.

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: If the input or its layout's folders are missing.
        ValueError: For bad arguments, or when no training pair is left.
    """
    check_local_output(out_dir, "prepare-flow")
    tasks, rejections, rule = list_pairs(
        fmt, input_dir, render_pass=render_pass, val_fraction=val_fraction
    )
    settings: dict[str, Any] = {
        "format": fmt,
        "input": os.path.abspath(input_dir),
        "pass": render_pass if fmt == "sintel" else None,
        "val_fraction": val_fraction,
    }
    extra = {"pass": settings["pass"], "split_rule": rule, "input": str(input_dir)}
    ordered: dict[str, Sequence[PairTask]] = tasks
    return build_shards(
        out_dir,
        kind=KIND,
        command="prepare-flow",
        columns=FLOW_COLUMNS,
        tasks=ordered,
        fn=_read_pair,
        settings=settings,
        describe=describe_flow(fmt, extra),
        workers=workers,
        part_size=part_size,
        size_limit=size_limit,
        overwrite=overwrite,
        progress=progress,
        pre_rejections=rejections,
    )
