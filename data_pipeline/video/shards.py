"""Video shards: labelled video files -> MDS clips `DIR/{train,val}/` + `DIR/manifest.json`.

Layout (the video counterpart of the "Shards" contract in docs/design.md):

    DIR/manifest.json     kind "video": clip spec, classes and counts, clips read/kept/rejected
    DIR/train/index.json  MDS (zstd), one sample per clip, columns (`video_columns`):
        frames      jpegarray (T JPEGs) or ndarray:uint8:T,H,W,3    RGB
        audio       ndarray:int16:N or ndarray:float32:N            mono, N = T * sample_rate / fps
        label       int                                            index into manifest["classes"]
        has_audio   int                                            0: no audio stream, silence
        path        str                                            source file (relative)
        clip        int                                            clip number within the file
        start_s     float64                                        clip start in the file (s)
        timestamps  ndarray:float64:T                              times of the frames used (s)
    DIR/val/...

Videos are decoded in worker processes (`data_pipeline.video.decode.process_video`) and written by
this process in input order, so the shards are byte-identical for any number of workers. Like text
shards, everything is written to a hidden temporary sibling and renamed onto `DIR` once complete.
The manifest is read and checked by `data_pipeline.shards.manifest` (`read_video_manifest`,
`check_video_manifest`, `check_shards`: one reader and validator for every kind of shards).
`stack_video` is the DataLoader's `collate_fn` for these shards
(`data_pipeline.loading.dataset` picks it from the manifest's `kind`).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data_pipeline.shards.manifest import (
    COMPRESSION,
    DEFAULT_SIZE_LIMIT,
    FORMAT_VERSION,
    check_target,
    check_video_manifest,
    dir_bytes,
    fsync_tree,
    iter_stored_samples,
    publish_dir,
    read_video_manifest,
    tool_version,
    write_manifest,
)
from data_pipeline.shards.remote import check_local_output, check_location
from data_pipeline.video.decode import (
    REJECT_REASONS,
    ClipSpec,
    Rejection,
    describe_spec,
    process_video,
)
from data_pipeline.video.labels import VideoListing, list_videos

__all__ = [
    "MAX_LISTED_REJECTIONS",
    "check_video_manifest",  # from shards.manifest (where pretrain imports it)
    "iter_video_samples",
    "prepare_videos",
    "read_video_manifest",  # from shards.manifest
    "stack_video",
    "video_columns",
]

logger = logging.getLogger(__name__)

KIND = "video"
SPLITS = ("train", "val")
MAX_LISTED_REJECTIONS = 1000
"""Rejections listed one by one in the manifest (all are counted by reason)."""


def video_columns(
    spec: ClipSpec, frames_format: Literal["jpeg", "raw"], audio_dtype: Literal["int16", "float32"]
) -> dict[str, str]:
    """The MDS columns of video shards."""
    t, h, w = spec.num_frames, spec.height, spec.width
    frames = "jpegarray" if frames_format == "jpeg" else f"ndarray:uint8:{t},{h},{w},3"
    return {
        "frames": frames,
        "audio": f"ndarray:{audio_dtype}:{spec.num_samples}",
        "label": "int",
        "has_audio": "int",
        "path": "str",
        "clip": "int",
        "start_s": "float64",
        "timestamps": f"ndarray:float64:{t}",
    }


def _results(tasks: list[tuple], workers: int) -> Iterator[tuple[list[dict], list[Rejection]]]:
    """`process_video` over the tasks, in task order, inline or in `workers` processes."""
    if workers <= 1:
        yield from map(process_video, tasks)
        return
    # spawn: workers start clean (no inherited decoder or thread state); only numpy/av load.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(process_video, tasks, chunksize=1)


def _check_train_videos(
    input_dir: str | os.PathLike[str], listing: VideoListing, val_fraction: float
) -> None:
    """Refuses, before decoding, a listing that sends every labelled video to val."""
    if not listing.items or any(item.split == "train" for item in listing.items):
        return
    if listing.source == "kinetics_csv":
        how = f"the CSV's split column (--val-fraction {val_fraction} where it has none)"
        fix = "mark rows 'train' in the CSV"
    else:
        how = f"--val-fraction {val_fraction} (a hash of each relative path)"
        fix = "lower --val-fraction (0 keeps every video in train)"
    raise ValueError(
        f"{input_dir}: no training video: all {len(listing.items)} labelled videos "
        f"({', '.join(item.rel for item in listing.items[:3])}"
        f"{', ...' if len(listing.items) > 3 else ''}) go to the val split by {how}; {fix} or "
        "add videos"
    )


def prepare_videos(
    input_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    spec: ClipSpec | None = None,
    *,
    labels: str | os.PathLike[str] | None = None,
    workers: int = 1,
    frames_format: Literal["jpeg", "raw"] = "jpeg",
    jpeg_quality: int = 90,
    audio_dtype: Literal["int16", "float32"] = "int16",
    val_fraction: float = 0.1,
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Decodes labelled videos into clip shards; what `perceiver data prepare-video` runs.

    Args:
        input_dir: Directory of video files (see `data_pipeline.video.labels.list_videos`).
        out_dir: Destination shard directory (created atomically).
        spec: Clip geometry and timing (default: 16 frames, 25 fps, 224 x 224, 48 kHz).
        labels: Kinetics CSV, class list file, or None (folder-per-class).
        workers: Decoding processes (1: decode in this process). The shards do not depend on
            it. Workers are spawned, so scripts calling this with ``workers > 1`` need the
            ``if __name__ == "__main__":`` guard.
        frames_format: ``"jpeg"`` (T JPEGs per clip) or ``"raw"`` (uint8 array).
        jpeg_quality: JPEG quality (1-95).
        audio_dtype: ``"int16"`` (scaled by 32768) or ``"float32"``.
        val_fraction: Validation fraction where the labels do not give a split.
        size_limit: Shard size limit before compression.
        overwrite: Replace an existing complete ``out_dir``.
        progress: Show a progress bar (clips/s) on stderr.

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: If the input directory or labels file does not exist.
        FileExistsError: If ``out_dir`` holds shards and not ``overwrite`` (or something else).
        ValueError: For bad arguments, when every video goes to the val split (before any
            decoding), or when no training clip could be decoded.
    """
    from streaming import MDSWriter
    from tqdm import tqdm

    spec = spec or ClipSpec()
    if frames_format not in ("jpeg", "raw"):
        raise ValueError(f"frames_format must be 'jpeg' or 'raw', got {frames_format!r}")
    if audio_dtype not in ("int16", "float32"):
        raise ValueError(f"audio_dtype must be 'int16' or 'float32', got {audio_dtype!r}")
    if not 1 <= jpeg_quality <= 95:
        raise ValueError(f"jpeg_quality must be in [1, 95], got {jpeg_quality}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started = time.monotonic()
    check_local_output(out_dir, "prepare-video")
    out = Path(check_location(out_dir, key="output")).absolute()
    listing = list_videos(input_dir, labels, val_fraction)
    _check_train_videos(input_dir, listing, val_fraction)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = video_columns(spec, frames_format, audio_dtype)
    rejections: list[Rejection] = list(listing.rejections)
    samples = {split: 0 for split in SPLITS}
    class_counts: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    without_audio = 0
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    writers: dict[str, Any] = {}
    tasks = [(item, spec, frames_format, jpeg_quality, audio_dtype) for item in listing.items]
    bar = tqdm(
        total=len(tasks) * spec.clips_per_video,
        unit="clip",
        desc=f"prepare-video {out.name}",
        disable=not progress,
    )
    try:
        for split in SPLITS:
            writers[split] = MDSWriter(
                out=str(tmp / split),
                columns=columns,
                compression=COMPRESSION,
                size_limit=size_limit,
            )
        for (item, *_), (clip_samples, clip_rejections) in zip(tasks, _results(tasks, workers)):
            for sample in clip_samples:
                writers[item.split].write(sample)
                samples[item.split] += 1
                class_counts[item.split][listing.classes[item.label]] += 1
                without_audio += 1 - sample["has_audio"]
            rejections.extend(clip_rejections)
            bar.update(spec.clips_per_video)
        for split in SPLITS:
            writers.pop(split).finish()
        bar.close()
        if samples["train"] == 0:
            raise ValueError(
                f"{input_dir}: no training clip could be decoded "
                f"({sum(item.split == 'train' for item in listing.items)} training videos, "
                f"{len(rejections)} rejections, e.g. {[str(r) for r in rejections[:3]]})"
            )
        if samples["val"] == 0:
            logger.warning("%s: the val split got no clip", out)
        by_reason = Counter(r.reason for r in rejections)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "tool": "perceiver-pretrain data_pipeline.video.shards",
            "tool_version": tool_version(),
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.monotonic() - started, 3),
            "columns": columns,
            "compression": COMPRESSION,
            "size_limit": size_limit,
            "video": {
                **describe_spec(spec),
                "frames_format": frames_format,
                "jpeg_quality": jpeg_quality if frames_format == "jpeg" else None,
            },
            "audio": {
                "sample_rate": spec.sample_rate,
                "samples_per_frame": spec.samples_per_frame,
                "num_samples": spec.num_samples,
                "channels": 1,
                "dtype": audio_dtype,
                "scale": 32768 if audio_dtype == "int16" else 1,
                "missing_audio": spec.missing_audio,
            },
            "labels": {"source": listing.source, "file": str(labels) if labels else None},
            "classes": listing.classes,
            "num_classes": len(listing.classes),
            "class_counts": {s: dict(sorted(c.items())) for s, c in class_counts.items()},
            "files": {
                "videos": listing.found,
                "labelled": len(listing.items),
                "ignored_non_video": listing.ignored_files,
            },
            "clips": {
                "read": sum(samples.values()) + len(rejections),
                "kept": sum(samples.values()),
                "rejected": len(rejections),
                "rejected_by_reason": {r: by_reason[r] for r in REJECT_REASONS if by_reason[r]},
                "without_audio": without_audio,
            },
            "rejected": [
                {"path": r.path, "clip": r.clip, "reason": r.reason, "detail": r.detail}
                for r in rejections[:MAX_LISTED_REJECTIONS]
            ],
            "splits": {},
            "split_rule": "CSV split column, else blake2b-64(relative path) / 2**64 < val_fraction",
            "val_fraction": val_fraction,
            "metadata": {"input": str(input_dir), "workers": workers},
        }
        for split in SPLITS:
            index = json.loads((tmp / split / "index.json").read_text(encoding="utf-8"))
            manifest["splits"][split] = {
                "samples": samples[split],
                "shards": len(index["shards"]),
                "bytes_on_disk": dir_bytes(tmp / split),
            }
        write_manifest(tmp, manifest)
        fsync_tree(tmp)
        check_target(out, overwrite)
        publish_dir(tmp, out)
    except BaseException:
        bar.close()
        for writer in writers.values():
            writer.cancel_future_jobs()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "wrote %s: %d train / %d val clips, %d rejected",
        out,
        samples["train"],
        samples["val"],
        len(rejections),
    )
    return manifest


def iter_video_samples(
    data_dir: str | os.PathLike[str], split: str, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Reads the clips of one split in storage order, in memory, without touching the files.

    Yields:
        Samples as stored (``frames`` a list of PIL images for JPEG shards).
    """
    yield from iter_stored_samples(data_dir, split, limit)


def _frames_array(frames: Any) -> np.ndarray:
    if isinstance(frames, np.ndarray):
        return frames
    return np.stack([np.asarray(image.convert("RGB")) for image in frames])


def stack_video(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The DataLoader's ``collate_fn`` for video shards (decodes JPEG frames).

    Args:
        samples: Dataset samples with the columns of `video_columns`.

    Returns:
        ``{"frames": uint8 [B, T, H, W, 3], "audio": float32 [B, N] in [-1, 1],
        "has_audio": bool [B], "label": long [B]}``.

    Raises:
        ValueError: If there are no samples or their shapes differ.
    """
    import torch

    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    frames = [_frames_array(s["frames"]) for s in samples]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"clips have different frame shapes: {sorted(shapes)}")
    audio = np.stack([np.asarray(s["audio"]) for s in samples])
    audio = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio
    return {
        "frames": torch.from_numpy(np.stack(frames)),
        "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
        "has_audio": torch.tensor([bool(s["has_audio"]) for s in samples]),
        "label": torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),
    }
