"""Video clips -> shards: exact decoding of synthetic clips, bad inputs, labels, workers, real data.

The clips are written here with PyAV: frame i of a video is a known colour (with 6-pixel side
bands that a centred crop removes) and the audio is a known tone, so frame selection, resizing,
cropping, resampling and alignment can be checked exactly (lossless FFV1) or closely (lossy).
"""

from __future__ import annotations

import fractions
import json
import os
import shutil
import subprocess
from pathlib import Path

import av  # the `video` extra, which `make test` installs
import numpy as np
import pytest

from data_pipeline.video.cli import main as prepare_video_main
from data_pipeline.video.decode import ClipSpec, decode_clips
from data_pipeline.video.labels import list_videos
from data_pipeline.video.shards import iter_video_samples, prepare_videos

BAND = 6  # pixels at the left and right of every frame that a centred crop to a square removes
SIDE = (255, 0, 0)


def colour(i: int, seed: int = 0) -> tuple[int, int, int]:
    """The colour of frame ``i`` (distinct for consecutive frames)."""
    return ((37 * i + seed) % 256, (91 * i + 50 + seed) % 256, (13 * i + 100) % 256)


def write_clip(
    path: Path,
    *,
    num_frames: int = 20,
    fps: int = 25,
    size: tuple[int, int] = (48, 64),
    codec: str = "mpeg4",
    pix_fmt: str = "yuv420p",
    audio: tuple[str, int, str] | None = ("aac", 44_100, "stereo"),
    tone_hz: float = 1000.0,
    amplitude: float = 0.5,
    offset: float = 0.0,
    seed: int = 0,
) -> Path:
    """Writes a clip: frame i is ``colour(i, seed)`` between red side bands; audio a sine tone.

    Args:
        audio: (codec, sample rate, layout), or None for a video without an audio stream.
        amplitude: Of the tone.
        offset: A constant added to the tone.
    """
    h, w = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = w, h, pix_fmt
        stream = None
        if audio is not None:
            acodec, rate, layout = audio
            stream = container.add_stream(acodec, rate=rate, layout=layout)
        for i in range(num_frames):
            img = np.empty((h, w, 3), np.uint8)
            img[:] = colour(i, seed)
            img[:, :BAND] = img[:, w - BAND :] = SIDE
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if stream is not None:
            n = round(num_frames / fps * rate)
            tone = amplitude * np.sin(2 * np.pi * tone_hz * np.arange(n) / rate) + offset
            tone = tone.astype(np.float32)
            channels = 2 if layout == "stereo" else 1
            for pos in range(0, n, 1024):
                chunk = np.ascontiguousarray(np.tile(tone[pos : pos + 1024], (channels, 1)))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate, frame.pts = rate, pos
                frame.time_base = fractions.Fraction(1, rate)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def lossless_clip(path: Path, **kwargs) -> Path:
    """FFV1 (RGB) video + PCM audio in Matroska: decoded colours are exact."""
    audio = kwargs.pop("audio", ("pcm_s16le", 16_000, "stereo"))
    return write_clip(path, codec="ffv1", pix_fmt="bgr0", audio=audio, **kwargs)


def peak_hz(audio: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(audio))) * rate / len(audio))


def test_lossless_clip_decodes_exactly(tmp_path):
    # 50 fps source sampled at 25 fps: clip k, frame i shows source frame 2 * (8k + i).
    path = lossless_clip(tmp_path / "a.mkv", num_frames=40, fps=50, tone_hz=440.0)
    spec = ClipSpec(num_frames=8, fps=25, height=32, width=32, clips_per_video=2)
    clips, rejections = decode_clips(path, spec)
    assert rejections == [] and [c.index for c in clips] == [0, 1]
    for clip in clips:
        first = 8 * clip.index
        assert clip.frames.shape == (8, 32, 32, 3) and clip.frames.dtype == np.uint8
        for i, frame in enumerate(clip.frames):
            # Short side 48 -> 32, width 64 -> 43, centre crop: the side bands are cut away.
            assert (frame == colour(2 * (first + i))).all(), (clip.index, i)
        np.testing.assert_allclose(clip.timestamps, 0.04 * np.arange(first, first + 8), atol=1e-9)
        assert clip.start_s == pytest.approx(0.32 * clip.index)
        assert clip.has_audio and clip.audio.shape == (8 * 1920,)
        assert clip.audio.dtype == np.float32
        assert peak_hz(clip.audio, 48_000) == pytest.approx(440.0, abs=48_000 / 15_360)
        # 16 kHz stereo -> 48 kHz mono: amplitude 0.5 kept (RMS 0.5 / sqrt 2).
        assert np.sqrt(np.mean(clip.audio**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


@pytest.mark.parametrize(
    "name, codec, pix_fmt, audio",
    [
        ("h264_aac.mp4", "libx264", "yuv420p", ("aac", 44_100, "stereo")),
        ("vp8_opus.webm", "libvpx", "yuv420p", ("libopus", 48_000, "stereo")),
        ("mpeg4_mp3.avi", "mpeg4", "yuv420p", ("mp3", 44_100, "stereo")),
        ("mpeg4_pcm.mkv", "mpeg4", "yuv420p", ("pcm_s16le", 22_050, "mono")),
    ],
)
def test_lossy_formats_decode(tmp_path, name, codec, pix_fmt, audio):
    path = write_clip(tmp_path / name, codec=codec, pix_fmt=pix_fmt, audio=audio, tone_hz=1000)
    spec = ClipSpec(num_frames=16, height=24, width=24)
    (clip,), rejections = decode_clips(path, spec)
    assert rejections == []
    assert clip.frames.shape == (16, 24, 24, 3)
    centre = clip.frames[:, 12, 12].astype(int)
    expected = np.array([colour(i) for i in range(16)])
    assert np.abs(centre - expected).max() <= 16  # lossy 4:2:0: close, not exact
    assert clip.audio.shape == (16 * 1920,) and clip.has_audio
    assert peak_hz(clip.audio, 48_000) == pytest.approx(1000.0, abs=48_000 / 30_720)


@pytest.fixture(scope="module")
def messy_dir(tmp_path_factory) -> Path:
    """A folder-per-class tree with good clips and one of every bad input."""
    root = tmp_path_factory.mktemp("messy") / "videos"
    for cls, seed in (("blue", 0), ("red", 100)):
        for i in range(3):
            lossless_clip(root / cls / f"good{i}.mkv", num_frames=12, seed=seed + i)
    good = write_clip(root / "red" / "whole.mp4", num_frames=12)
    data = good.read_bytes()
    (root / "red" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "red" / "corrupt.mp4").write_bytes(os.urandom(3000))
    (root / "red" / "empty.webm").write_bytes(b"")
    lossless_clip(root / "blue" / "short.mkv", num_frames=3)
    write_clip(root / "blue" / "mute.mp4", num_frames=12, audio=None)
    lossless_clip(root / "green" / "unknown.mkv", num_frames=12)
    lossless_clip(root / "toplevel.mkv", num_frames=12)
    (root / "blue" / "notes.txt").write_text("not a video")
    (root.parent / "classes.txt").write_text("blue\nred\n")
    return root


def test_bad_inputs_are_counted_and_named(messy_dir, tmp_path, capsys):
    def prepare(out: Path, *extra: str) -> dict:
        args = ["--input", str(messy_dir), "--labels", str(messy_dir.parent / "classes.txt")]
        args += ["--output", str(out), "--num-frames", "8", "--size", "16", "--no-progress"]
        assert prepare_video_main([*args, "--val-fraction", "0", *extra]) == 0
        return json.loads((out / "manifest.json").read_text())

    manifest = prepare(tmp_path / "shards")
    clips = manifest["clips"]
    assert clips["rejected_by_reason"] == {
        "empty": 1,
        "corrupt": 1,
        "truncated": 1,
        "too_short": 1,
        "unknown_label": 1,
        "no_label": 1,
    }
    assert clips["kept"] == 8 and clips["without_audio"] == 1  # 6 good, whole.mp4, mute.mp4
    assert clips["read"] == clips["kept"] + clips["rejected"]
    assert manifest["classes"] == ["blue", "red"]
    assert manifest["class_counts"]["train"] == {"blue": 4, "red": 4}
    assert manifest["files"] == {"videos": 14, "labelled": 12, "ignored_non_video": 1}
    by_path = {r["path"]: r["reason"] for r in manifest["rejected"]}
    assert by_path == {
        "red/empty.webm": "empty",
        "red/corrupt.mp4": "corrupt",
        "red/truncated.mp4": "truncated",
        "blue/short.mkv": "too_short",
        "green/unknown.mkv": "unknown_label",
        "toplevel.mkv": "no_label",
    }
    printed = capsys.readouterr().out
    for path in by_path:
        assert path in printed
    mute = [s for s in iter_video_samples(tmp_path / "shards", "train") if "mute" in s["path"]]
    assert len(mute) == 1 and mute[0]["has_audio"] == 0 and not mute[0]["audio"].any()

    rejected = prepare(tmp_path / "reject_mute", "--missing-audio", "reject")["clips"]
    assert rejected["rejected_by_reason"]["no_audio"] == 1 and rejected["kept"] == 7


def test_kinetics_csv_labels_and_splits(tmp_path):
    videos = tmp_path / "kinetics"
    rows = [("archery", "aaa", 10, 20, "train"), ("archery", "bbb", 0, 10, "train")]
    rows += [("zumba", "ccc", 5, 15, "validate"), ("zumba", "ddd", 0, 10, "test")]
    rows += [("zumba", "eee", 1, 11, "train")]  # no file
    for label, yid, start, end, _ in rows[:4]:
        lossless_clip(videos / label / f"{yid}_{start:06d}_{end:06d}.mkv", num_frames=10)
    lossless_clip(videos / "archery" / "zzz_000000_000010.mkv", num_frames=10)  # not in the CSV
    csv = tmp_path / "train.csv"
    lines = ["label,youtube_id,time_start,time_end,split"]
    csv.write_text("\n".join(lines + [",".join(map(str, r)) for r in rows]) + "\n")
    listing = list_videos(videos, csv)
    assert listing.classes == ["archery", "zumba"]
    assert [(i.rel, i.label, i.split) for i in listing.items] == [
        ("archery/aaa_000010_000020.mkv", 0, "train"),
        ("archery/bbb_000000_000010.mkv", 0, "train"),
        ("zumba/ccc_000005_000015.mkv", 1, "val"),
    ]
    reasons = sorted((r.path, r.reason) for r in listing.rejections)
    assert reasons == [
        ("archery/zzz_000000_000010.mkv", "no_label"),
        ("ddd_000000_000010", "other_split"),
        ("eee_000001_000011", "missing_file"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("label,youtube_id\nx,y\n")
    with pytest.raises(ValueError, match="bad.csv: missing columns"):
        list_videos(videos, bad)


def test_every_video_in_val_is_named_before_decoding(tmp_path):
    root = tmp_path / "in"
    write_clip(root / "archery" / "clip6.mp4", num_frames=12)
    assert list_videos(root, val_fraction=0.1).items[0].split == "val"  # by its path hash
    args = ["--input", str(root), "--output", str(tmp_path / "out"), "--num-frames", "4"]
    args += ["--size", "16", "--no-progress"]
    with pytest.raises(
        SystemExit,
        match=r"no training video: all 1 labelled videos \(archery/clip6.mp4\) go to the val "
        r"split by --val-fraction 0.1 .*; lower --val-fraction \(0 keeps every video in train\)",
    ):
        prepare_video_main(args)  # the default --val-fraction
    assert not (tmp_path / "out").exists()
    assert prepare_video_main([*args, "--val-fraction", "0"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 1

    kinetics = tmp_path / "kinetics"
    write_clip(kinetics / "aaa_000000_000010.mp4", num_frames=12)
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\narchery,aaa,0,10,validate\n")
    args = ["--input", str(kinetics), "--labels", str(csv), "--output", str(tmp_path / "csv")]
    with pytest.raises(SystemExit, match=r"by the CSV's split column .*; mark rows 'train' in"):
        prepare_video_main([*args, "--val-fraction", "0", "--no-progress"])


@pytest.mark.shared_data
def test_real_clips_cut_short_are_truncated(shared_data, tmp_path):
    """Real clips cut in half with `head -c` (as an interrupted download leaves them)."""
    avi = shared_data / "video" / "ucf101_ApplyEyeMakeup__mmaction2_tests_test.avi"
    mp4 = shared_data / "video" / "k400_archery__pytorchvideo_archery.mp4"
    root = tmp_path / "in"
    for clip, label in ((avi, "apply_eye_makeup"), (mp4, "archery")):
        (root / label).mkdir(parents=True)
        os.symlink(clip, root / label / clip.name)  # the whole file, for contrast
        with (root / label / f"half_{clip.name}").open("wb") as out:
            half = str(clip.stat().st_size // 2)
            subprocess.run(["head", "-c", half, str(clip)], stdout=out, check=True)
    # 3.0-3.32 s: inside the whole AVI (6.56 s), past the cut of its first half (3.08 s)
    spec = ClipSpec(num_frames=8, height=32, width=32, start_s=3.0)
    manifest = prepare_videos(root, tmp_path / "out", spec, val_fraction=0.0, progress=False)
    assert manifest["clips"]["kept"] == 2 and manifest["clips"]["rejected_by_reason"] == {
        "truncated": 2
    }
    detail = {r["path"]: r["detail"] for r in manifest["rejected"] if r["reason"] == "truncated"}
    size = avi.stat().st_size
    assert detail[f"apply_eye_makeup/half_{avi.name}"].startswith("needs 3.000-3.320 s")
    assert detail[f"apply_eye_makeup/half_{avi.name}"].endswith(
        f"(the file is cut: it ends at byte {size // 2:,}, inside a RIFF chunk that runs to "
        f"byte {size:,})"
    )
    assert detail[f"archery/half_{mp4.name}"].startswith("cannot open")
    assert "inside an MP4 box" in detail[f"archery/half_{mp4.name}"]
    # A clip past the end of a whole video stays too_short.
    _, rejections = decode_clips(avi, ClipSpec(num_frames=8, height=32, width=32, start_s=7.0))
    assert [r.reason for r in rejections] == ["too_short"]


def test_same_shards_for_one_and_two_workers(messy_dir, tmp_path):
    spec = ClipSpec(num_frames=4, height=16, width=16, clips_per_video=2)
    dirs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare_videos(messy_dir, out, spec, workers=workers, val_fraction=0.3, progress=False)
        dirs.append(out)
    files = sorted(p.relative_to(dirs[0]) for p in dirs[0].rglob("*") if p.is_file())
    assert [f for f in files if f.suffix != ".json"], "no shard written"
    for f in files:
        if f.name != "manifest.json":
            assert (dirs[0] / f).read_bytes() == (dirs[1] / f).read_bytes(), f
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in dirs)
    for key in ("clips", "splits", "class_counts", "rejected"):
        assert m1[key] == m2[key]


def test_loader_batches_raw_and_jpeg(messy_dir, tmp_path):
    from data_pipeline.loading.dataset import build_dataloader

    spec = ClipSpec(num_frames=4, height=16, width=16)
    batches = {}
    for fmt in ("raw", "jpeg"):
        out = tmp_path / fmt
        prepare_videos(
            messy_dir,
            out,
            spec,
            frames_format=fmt,
            jpeg_quality=95,
            audio_dtype="float32" if fmt == "raw" else "int16",
            val_fraction=0.0,
            progress=False,
        )
        loader = build_dataloader(out, "train", 3, shuffle=False, cache_root=tmp_path / "cache")
        batches[fmt] = next(iter(loader))
    raw, jpeg = batches["raw"], batches["jpeg"]
    assert raw["frames"].shape == (3, 4, 16, 16, 3) and str(raw["frames"].dtype) == "torch.uint8"
    assert raw["audio"].shape == (3, 4 * 1920) and str(raw["audio"].dtype) == "torch.float32"
    assert raw["label"].tolist() == jpeg["label"].tolist() == [0, 0, 0]
    first = decode_clips(messy_dir / "blue" / "good0.mkv", spec)[0][0]
    assert (raw["frames"][0].numpy() == first.frames).all()
    assert np.abs(jpeg["frames"].int() - raw["frames"].int()).float().mean() < 2.0
    assert np.abs((jpeg["audio"] - raw["audio"]).numpy()).max() <= 1 / 32768 + 1e-7


@pytest.mark.shared_data
def test_real_clips(shared_data, tmp_path):
    src = shared_data / "video"
    assert src.is_dir() and any(src.iterdir()), f"no real video clips in {src}"
    root = tmp_path / "real"
    for clip in sorted(src.iterdir()):
        label = clip.name.split("__")[0].split("_", 1)[1]  # k400_archery__... -> archery
        (root / label).mkdir(parents=True, exist_ok=True)
        os.symlink(clip, root / label / clip.name)  # links, never copies
    out = tmp_path / "shards"
    manifest = prepare_videos(root, out, ClipSpec(), val_fraction=0.0, progress=False)
    n = len(list(src.iterdir()))
    assert manifest["clips"]["kept"] == n and manifest["clips"]["rejected"] == 0
    samples = {s["path"].split("/")[1]: s for s in iter_video_samples(out, "train")}
    for name, sample in samples.items():
        frames = np.stack([np.asarray(im) for im in sample["frames"]])
        assert frames.shape == (16, 224, 224, 3) and frames.std() > 5, name
        assert sample["audio"].shape == (16 * 1920,)
        assert sample["has_audio"] == bool(np.abs(sample["audio"]).max() > 0), name
    with_audio = {k for k, s in samples.items() if s["has_audio"]}
    assert {k.split("__")[0] for k in with_audio} >= {"k400_archery", "ucf101_ApplyEyeMakeup"}
    assert manifest["clips"]["without_audio"] == n - len(with_audio)
    shutil.rmtree(root)
