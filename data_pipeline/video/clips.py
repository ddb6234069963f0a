"""Clip records: `ClipSpec` (what a clip is), `Clip`, `Rejection`, `VideoItem`; no decoding.

What one clip is (`ClipSpec`, the Perceiver IO paper's Kinetics-700 set-up by default):

* ``num_frames`` frames (16) sampled at ``fps`` (25) from ``start_s`` seconds into the video: frame
  ``i`` of a clip is the source frame on screen at time ``start + i / fps`` (the last frame whose
  timestamp is at or before it), so any source frame rate maps onto the target rate.
* Each frame is resized (swscale, area filter) so that its short side matches the target, then
  centre-cropped to ``height x width`` (224 x 224): RGB ``uint8 [T, H, W, 3]``.
* Audio is decoded, resampled to ``sample_rate`` (48 kHz), downmixed to mono by averaging the
  channels and cut to the frames' time span: ``T * sample_rate / fps`` samples (1920 per frame),
  float32 in ``[-1, 1]``. Up to one frame's worth of missing audio at either end (encoder delay,
  a slightly short track) is zero-filled; more rejects the clip.
* ``clips_per_video`` clips start ``clip_stride_s`` apart (default: back to back).

Bad input never stops a build: every problem becomes a `Rejection` (file, reason, detail), counted
by reason in the manifest. Reasons: ``empty`` (zero-length file), ``corrupt`` (PyAV cannot open or
decode it), ``truncated`` (the file ends inside a top-level element of its container, a RIFF
chunk, MP4 box or Matroska segment, as after an interrupted download: clips before the cut are
kept, and a file or clip that needs the missing part gets this reason rather than ``corrupt``,
``too_short`` or ``audio_too_short``), ``no_video``, ``too_short`` (the video ends
before a clip's last frame), ``no_audio`` (no audio stream, with ``missing_audio="reject"``),
``audio_too_short``, ``unknown_label`` (not in the class list), ``no_label`` (a video no CSV row
names, or one outside any class folder), ``missing_file`` (a CSV row without its file), and
``other_split`` (CSV rows of splits other than train and val, e.g. test).

Only numpy is imported, so the labelling code (`labels.py`) uses these records without loading
PyAV; the decoding itself is `decode.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "REJECT_REASONS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "ClipSpec",
    "Rejection",
    "VideoItem",
    "describe_spec",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv")
REJECT_REASONS = (
    "empty",
    "corrupt",
    "truncated",
    "no_video",
    "too_short",
    "no_audio",
    "audio_too_short",
    "unknown_label",
    "no_label",
    "missing_file",
    "other_split",
)


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a video (defaults: the paper's Kinetics-700 set-up).

    Attributes:
        num_frames: Frames per clip (T).
        fps: Frame rate the frames are sampled at.
        height: Output frame height (H).
        width: Output frame width (W).
        sample_rate: Audio sample rate; ``sample_rate / fps`` must be an integer.
        start_s: Where the first clip starts, in seconds from the start of the video.
        clips_per_video: Clips cut from each video.
        clip_stride_s: Seconds between clip starts (default: the clip duration, back to back).
        missing_audio: Videos without an audio stream: ``"zero"`` keeps them with silent audio
            and ``has_audio = 0``; ``"reject"`` rejects them (reason ``no_audio``).
    """

    num_frames: int = 16
    fps: float = 25.0
    height: int = 224
    width: int = 224
    sample_rate: int = 48_000
    start_s: float = 0.0
    clips_per_video: int = 1
    clip_stride_s: float | None = None
    missing_audio: Literal["zero", "reject"] = "zero"

    def __post_init__(self) -> None:
        for name in ("num_frames", "height", "width", "sample_rate", "clips_per_video"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.start_s < 0:
            raise ValueError(f"start_s must be >= 0, got {self.start_s}")
        if self.clip_stride_s is not None and not self.clip_stride_s > 0:
            raise ValueError(f"clip_stride_s must be > 0, got {self.clip_stride_s}")
        spf = self.sample_rate / self.fps
        if abs(spf - round(spf)) > 1e-9:
            raise ValueError(
                f"sample_rate / fps must be a whole number of samples per frame, got "
                f"{self.sample_rate} / {self.fps} = {spf}"
            )
        if self.missing_audio not in ("zero", "reject"):
            raise ValueError(
                f"missing_audio must be 'zero' or 'reject', got {self.missing_audio!r}"
            )

    @property
    def duration_s(self) -> float:
        """Seconds a clip spans (``num_frames / fps``)."""
        return self.num_frames / self.fps

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per video frame (1920 at 48 kHz and 25 fps)."""
        return round(self.sample_rate / self.fps)

    @property
    def num_samples(self) -> int:
        """Audio samples per clip."""
        return self.num_frames * self.samples_per_frame

    def clip_starts(self) -> list[float]:
        """Start time of every clip, in seconds from the start of the video."""
        stride = self.duration_s if self.clip_stride_s is None else self.clip_stride_s
        return [self.start_s + k * stride for k in range(self.clips_per_video)]

    def frame_times(self, start: float) -> list[float]:
        """The times of the frames of the clip starting at ``start``."""
        return [start + i / self.fps for i in range(self.num_frames)]


@dataclass(frozen=True)
class Rejection:
    """A file or clip left out of the shards, and why (``reason`` is one of REJECT_REASONS)."""

    path: str
    reason: str
    detail: str
    clip: int | None = None  # None: the whole file

    def __str__(self) -> str:
        where = self.path if self.clip is None else f"{self.path} (clip {self.clip})"
        return f"{where}: {self.reason}: {self.detail}"


@dataclass
class Clip:
    """One decoded clip."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [T * samples_per_frame], mono, in [-1, 1]
    has_audio: bool  # False: the video has no audio and `audio` is silence
    start_s: float  # requested start, seconds from the start of the video
    timestamps: np.ndarray  # float64 [T]: times of the source frames used
    index: int  # clip number within the video


@dataclass(frozen=True)
class VideoItem:
    """A labelled video file to decode."""

    path: str  # as opened
    rel: str  # relative to the input directory (stored with every clip)
    label: int
    split: str  # "train" or "val"


def describe_spec(spec: ClipSpec) -> dict[str, Any]:
    """The manifest's record of a spec (JSON-able)."""
    return {
        "num_frames": spec.num_frames,
        "fps": spec.fps,
        "height": spec.height,
        "width": spec.width,
        "start_s": spec.start_s,
        "clips_per_video": spec.clips_per_video,
        "clip_stride_s": spec.clip_stride_s,
        "duration_s": spec.duration_s,
        "sample_rate": spec.sample_rate,
        "samples_per_frame": spec.samples_per_frame,
        "num_samples": spec.num_samples,
        "missing_audio": spec.missing_audio,
        "frame_rule": "source frame shown at start + i / fps; short side resized, centre crop",
        "timing": "container timestamps (AVI: frame index / average rate)",
    }
