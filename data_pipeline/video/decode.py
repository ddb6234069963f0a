"""Video files -> clips (fixed-size RGB frames + 48 kHz mono audio), with PyAV; `process_video`
turns one labelled file into MDS samples (what the worker processes of `shards.py` run).

What a clip is (`ClipSpec`) and the rejection reasons are in `clips.py`.

Times are those of the container's timeline (the video stream's start time is t = 0), except for
AVI, which stores decode timestamps only: there frame ``k`` is at ``k / average_rate``.

Which files carry which label is `data_pipeline.video.labels`' business (`VideoItem`s).

Only numpy, PyAV and Pillow are imported: decoding runs in worker processes that stay light.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any, Literal

import av
import numpy as np

from data_pipeline.video.clips import (
    REJECT_REASONS,
    VIDEO_EXTENSIONS,
    Clip,
    ClipSpec,
    Rejection,
    VideoItem,
    describe_spec,
)

__all__ = [  # the records of clips.py too, where scripts and tests import them
    "REJECT_REASONS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "ClipSpec",
    "Rejection",
    "VideoItem",
    "decode_clips",
    "describe_spec",
    "encode_clip",
    "process_video",
]

TIME_EPS = 1e-4  # seconds: timestamps this close count as equal (time-base rounding)
SEEK_MARGIN_S = 1.0  # seek this far before a late clip start (to the keyframe before)


class _FrameSelector:
    """Assigns decoded frames to target times as frames stream by, converting each once."""

    def __init__(self, targets: Sequence[float], height: int, width: int) -> None:
        self.targets = list(targets)  # sorted
        self.height, self.width = height, width
        self.frames: list[np.ndarray | None] = [None] * len(self.targets)
        self.times = np.full(len(self.targets), np.nan)
        self.k = 0
        self.prev: tuple[float, Any] | None = None
        self._converted: tuple[int, np.ndarray] | None = None

    @property
    def done(self) -> bool:
        return self.k == len(self.targets)

    def _assign(self, t: float, frame: Any) -> None:
        if self._converted is None or self._converted[0] != id(frame):
            self._converted = (id(frame), _to_rgb(frame, self.height, self.width))
        self.frames[self.k] = self._converted[1]
        self.times[self.k] = t
        self.k += 1

    def push(self, frame: Any, t: float) -> None:
        """A decoded frame at time ``t``: earlier targets get the frame shown before it."""
        while not self.done and self.targets[self.k] < t - TIME_EPS:
            self._assign(*(self.prev or (t, frame)))  # targets before the first frame get it
        self.prev = (t, frame)

    def finish(self, frame_duration: float) -> float:
        """End of stream: the last frame covers targets until it ends; returns that end time."""
        if self.prev is None:
            return 0.0
        end = self.prev[0] + frame_duration
        while not self.done and self.targets[self.k] < end - TIME_EPS:
            self._assign(*self.prev)
        return end


class _AudioCollector:
    """Resamples audio frames to the target rate and averages channels to mono."""

    def __init__(self, sample_rate: int) -> None:
        self.resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        self.t0: float | None = None
        self.chunks: list[np.ndarray] = []

    def push(self, frame: Any) -> None:
        if self.t0 is None:
            self.t0 = float(frame.time) if frame.time is not None else 0.0
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))

    def finish(self) -> tuple[float, np.ndarray]:
        if self.t0 is not None:
            for out in self.resampler.resample(None):
                self.chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        return (self.t0 or 0.0), samples


def _to_rgb(frame: Any, height: int, width: int) -> np.ndarray:
    """Resize so the frame covers height x width (short side matched), then centre-crop."""
    scale = max(height / frame.height, width / frame.width)
    sw = max(width, round(frame.width * scale))
    sh = max(height, round(frame.height * scale))
    rgb = frame.reformat(width=sw, height=sh, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (sh - height) // 2, (sw - width) // 2
    return np.ascontiguousarray(rgb[top : top + height, left : left + width])


def _clip_audio(
    t0: float, samples: np.ndarray, start: float, spec: ClipSpec
) -> tuple[np.ndarray, int]:
    """The clip's samples from the decoded track (zero-filled where it has none) and how many
    were missing."""
    n = spec.num_samples
    i0 = round((start - t0) * spec.sample_rate)
    lo, hi = max(i0, 0), min(i0 + n, len(samples))
    out = np.zeros(n, np.float32)
    if hi > lo:
        out[lo - i0 : hi - i0] = samples[lo:hi]
    return np.clip(out, -1.0, 1.0), n - max(hi - lo, 0)


def decode_clips(
    path: str | os.PathLike[str], spec: ClipSpec, name: str | None = None
) -> tuple[list[Clip], list[Rejection]]:
    """Decodes the clips of one video file.

    Args:
        path: The video file.
        spec: What to cut from it.
        name: How rejections name the file (default: ``path``).

    Returns:
        The clips that could be cut (in start order) and the rejections: one for the whole file
        if it cannot be used at all, otherwise one per clip that cannot be cut.
    """
    name = name or str(path)
    try:
        size = os.path.getsize(path)
    except OSError as err:
        return [], [Rejection(name, "missing_file", err.strerror or str(err))]
    if size == 0:
        return [], [Rejection(name, "empty", "zero-length file")]
    cut = _cut_short(path, size)
    damaged, why = ("truncated", f" ({cut})") if cut else ("corrupt", "")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        return [], [Rejection(name, damaged, f"cannot open: {err}{why}")]
    try:
        with container:
            clips, rejections = _decode(container, spec, name)
    except (av.FFmpegError, ValueError) as err:
        return [], [Rejection(name, damaged, f"decoding failed: {err}{why}")]
    if cut:  # what the file lacks is the cut-off part, not a short or silent video
        rejections = [
            Rejection(r.path, "truncated", f"{r.detail} ({cut})", r.clip)
            if r.reason in ("corrupt", "too_short", "audio_too_short")
            else r
            for r in rejections
        ]
    return clips, rejections


def _read_vint(f: Any) -> tuple[int, bool] | None:
    """An EBML variable-length integer at the file position: (value, all value bits set)."""
    first = f.read(1)
    if not first or first[0] == 0:
        return None
    length = 9 - first[0].bit_length()
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = first[0] & (0xFF >> length)
    for byte in rest:
        value = (value << 8) | byte
    return value, value == (1 << (7 * length)) - 1


def _declared_size(path: str | os.PathLike[str], size: int) -> tuple[str, int] | None:
    """Where the container's top-level structure says the file's last top-level element ends
    (walked up to the first one that runs past ``size``), and the element's name.

    RIFF (AVI; chained RIFF chunks), ISO BMFF (MP4, MOV: the top-level boxes) and EBML (Matroska,
    WebM: the Segment). None where the layout is another one or does not say.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF":
            end = 0
            while end + 8 <= size:
                f.seek(end)
                chunk = f.read(8)
                if chunk[:4] != b"RIFF":
                    break
                n = int.from_bytes(chunk[4:], "little")
                end += 8 + n + (n & 1)
            return ("a RIFF chunk", end) if end else None
        if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"styp"):
            end = 0
            while end + 8 <= size:
                f.seek(end)
                box = f.read(16)
                n = int.from_bytes(box[:4], "big")
                if not all(32 <= c < 127 for c in box[4:8]):  # not a box type: stop here
                    break
                if n == 1 and len(box) == 16:
                    n = int.from_bytes(box[8:16], "big")
                if n == 0:  # the last box, to the end of the file
                    return None
                if n < 8:
                    break
                end += n
            return ("an MP4 box", end) if end else None
        if head[:4] == b"\x1a\x45\xdf\xa3":
            f.seek(4)
            header = _read_vint(f)
            if header is None:
                return None
            f.seek(f.tell() + header[0])
            if f.read(4) != b"\x18\x53\x80\x67":
                return None
            segment = _read_vint(f)
            if segment is None or segment[1]:  # unknown size (a live stream)
                return None
            return ("the Matroska segment", f.tell() + segment[0])
    return None


def _cut_short(path: str | os.PathLike[str], size: int) -> str | None:
    """How a file is cut short of the size its container declares (None: it is not)."""
    try:
        declared = _declared_size(path, size)
    except OSError:  # unreadable: opening it fails next, as corrupt
        return None
    if declared is None or declared[1] <= size:
        return None
    what, end = declared
    return f"the file is cut: it ends at byte {size:,}, inside {what} that runs to byte {end:,}"


def _decode(container: Any, spec: ClipSpec, name: str) -> tuple[list[Clip], list[Rejection]]:
    if not container.streams.video:
        return [], [Rejection(name, "no_video", "no video stream")]
    video = container.streams.video[0]
    audio = container.streams.audio[0] if container.streams.audio else None
    if audio is None and spec.missing_audio == "reject":
        return [], [Rejection(name, "no_audio", "no audio stream (missing_audio='reject')")]
    rate = float(video.average_rate or video.guessed_rate or spec.fps)
    index_timing = container.format.name == "avi"  # AVI has decode timestamps only
    origin = 0.0
    if not index_timing and video.start_time is not None:
        origin = float(video.start_time * video.time_base)
    starts = spec.clip_starts()
    targets = sorted(origin + t for s in starts for t in spec.frame_times(s))
    audio_end = origin + starts[-1] + spec.duration_s + SEEK_MARGIN_S / 10
    if not index_timing and starts[0] > SEEK_MARGIN_S:
        offset = (origin + starts[0] - SEEK_MARGIN_S) / float(video.time_base)
        container.seek(int(offset), stream=video, backward=True)

    selector = _FrameSelector(targets, spec.height, spec.width)
    collector = _AudioCollector(spec.sample_rate) if audio is not None else None
    audio_done = collector is None
    decoded = 0
    streams = [video] if audio is None else [video, audio]
    for packet in container.demux(*streams):
        if packet.stream.type == "video":
            if selector.done:
                continue
            for frame in packet.decode():
                use_index = index_timing or frame.time is None
                selector.push(frame, origin + decoded / rate if use_index else float(frame.time))
                decoded += 1
        elif not audio_done:
            for frame in packet.decode():
                collector.push(frame)
                if frame.time is not None and frame.time > audio_end:
                    audio_done = True
        if selector.done and audio_done:
            break
    if decoded == 0:
        return [], [Rejection(name, "corrupt", "no decodable video frame")]
    video_end = selector.finish(1.0 / rate)
    t0, samples = collector.finish() if collector is not None else (0.0, np.zeros(0, np.float32))
    has_audio = len(samples) > 0
    if not has_audio and spec.missing_audio == "reject":
        return [], [Rejection(name, "no_audio", "the audio stream holds no samples")]

    by_time = {t: i for i, t in enumerate(targets)}
    clips: list[Clip] = []
    rejections: list[Rejection] = []
    for k, start in enumerate(starts):
        idx = [by_time[origin + t] for t in spec.frame_times(start)]
        if any(selector.frames[i] is None for i in idx):
            rejections.append(
                Rejection(
                    name,
                    "too_short",
                    f"needs {start:.3f}-{start + spec.duration_s:.3f} s, video ends at "
                    f"{video_end - origin:.3f} s",
                    clip=k,
                )
            )
            continue
        clip_audio = np.zeros(spec.num_samples, np.float32)
        if has_audio:
            clip_audio, missing = _clip_audio(t0, samples, origin + start, spec)
            if missing > spec.samples_per_frame:
                rejections.append(
                    Rejection(
                        name,
                        "audio_too_short",
                        f"{missing} of {spec.num_samples} audio samples missing (audio spans "
                        f"{t0 - origin:.3f}-{t0 - origin + len(samples) / spec.sample_rate:.3f} s)",
                        clip=k,
                    )
                )
                continue
        clips.append(
            Clip(
                frames=np.stack([selector.frames[i] for i in idx]),
                audio=clip_audio,
                has_audio=has_audio,
                start_s=start,
                timestamps=selector.times[idx] - origin,
                index=k,
            )
        )
    return clips, rejections


def encode_clip(
    clip: Clip,
    item: VideoItem,
    frames_format: Literal["jpeg", "raw"] = "jpeg",
    jpeg_quality: int = 90,
    audio_dtype: Literal["int16", "float32"] = "int16",
) -> dict[str, Any]:
    """A clip as an MDS sample (the columns of `data_pipeline.video.shards.video_columns`)."""
    if frames_format == "jpeg":
        from PIL import Image

        frames: Any = []
        for frame in clip.frames:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="JPEG", quality=jpeg_quality)
            frames.append(buf.getvalue())
    else:
        frames = clip.frames
    audio = clip.audio
    if audio_dtype == "int16":
        audio = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    return {
        "frames": frames,
        "audio": audio.astype(audio_dtype, copy=False),
        "label": item.label,
        "has_audio": int(clip.has_audio),
        "path": item.rel,
        "clip": clip.index,
        "start_s": float(clip.start_s),
        "timestamps": clip.timestamps.astype(np.float64),
    }


def process_video(
    args: tuple[VideoItem, ClipSpec, str, int, str],
) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Decodes and encodes the clips of one video (the worker-process entry point).

    Args:
        args: ``(item, spec, frames_format, jpeg_quality, audio_dtype)``.

    Returns:
        The encoded samples and the rejections.
    """
    item, spec, frames_format, jpeg_quality, audio_dtype = args
    clips, rejections = decode_clips(item.path, spec, item.rel)
    samples = [encode_clip(c, item, frames_format, jpeg_quality, audio_dtype) for c in clips]  # type: ignore[arg-type]
    return samples, rejections
