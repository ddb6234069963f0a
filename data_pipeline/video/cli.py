"""`perceiver data prepare-video`: labelled video files -> clip shards (MDS) + manifest.json.

    perceiver data prepare-video --input kinetics/train --labels train.csv --output DIR --workers 8
    perceiver data prepare-video --input clips/ --output DIR            # one folder per class
    perceiver data prepare-video --input clips/ --labels classes.txt --output DIR \\
        --num-frames 16 --fps 25 --size 224 --sample-rate 48000 --frames-format raw

`data_pipeline/cli.py` registers it with `add_prepare_video_subcommand(subparsers)`;
`main(argv)` runs it in-process (arguments as after `prepare-video`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_pipeline.build_cli import add_output_arguments, build_options, building, print_rejections

__all__ = ["add_prepare_video_subcommand", "main", "run_prepare_video", "spec_from_args"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, type=Path, metavar="DIR", help="video files")
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="FILE",
        help="Kinetics-style CSV (label,youtube_id,time_start,time_end,split), or a class list "
        "(one name per line) for one-folder-per-class input; default: folder names",
    )
    g = p.add_argument_group("clips")
    g.add_argument("--num-frames", type=int, default=16, help="frames per clip (16)")
    g.add_argument("--fps", type=float, default=25.0, help="frame sampling rate (25)")
    g.add_argument("--size", type=int, default=224, help="square frame size (224)")
    g.add_argument("--height", type=int, default=None, help="frame height (overrides --size)")
    g.add_argument("--width", type=int, default=None, help="frame width (overrides --size)")
    g.add_argument("--sample-rate", type=int, default=48_000, help="audio rate (48000)")
    g.add_argument("--start", type=float, default=0.0, help="first clip start, seconds (0)")
    g.add_argument("--clips-per-video", type=int, default=1, help="clips cut per video (1)")
    g.add_argument(
        "--clip-stride", type=float, default=None, help="seconds between clip starts (duration)"
    )
    g.add_argument(
        "--missing-audio",
        choices=("zero", "reject"),
        default="zero",
        help="videos without audio: keep with silence and has_audio=0, or reject (zero)",
    )
    g = p.add_argument_group("storage")
    g.add_argument("--frames-format", choices=("jpeg", "raw"), default="jpeg")
    g.add_argument("--jpeg-quality", type=int, default=90)
    g.add_argument("--audio-dtype", choices=("int16", "float32"), default="int16")
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="validation fraction by path hash, where the labels give no split (0.1)",
    )
    add_output_arguments(p, storage=g)


def add_prepare_video_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Registers `prepare-video` on the subparsers of the `perceiver data` command."""
    p = subparsers.add_parser(
        "prepare-video",
        help="decode labelled videos into clip shards (frames + audio + label) + manifest.json",
        description="Decode videos with PyAV into fixed-size clips (T frames at a frame rate, "
        "short side resized and centre-cropped, mono audio resampled and aligned to the "
        "frames) and write DIR/train, DIR/val (MDS, zstd) and DIR/manifest.json.",
    )
    _add_arguments(p)
    p.set_defaults(func=run_prepare_video)


def spec_from_args(args: argparse.Namespace) -> Any:
    """The `ClipSpec` of parsed arguments (ValueError names a bad value)."""
    from data_pipeline.video.decode import ClipSpec

    return ClipSpec(
        num_frames=args.num_frames,
        fps=args.fps,
        height=args.height or args.size,
        width=args.width or args.size,
        sample_rate=args.sample_rate,
        start_s=args.start,
        clips_per_video=args.clips_per_video,
        clip_stride_s=args.clip_stride,
        missing_audio=args.missing_audio,
    )


def run_prepare_video(args: argparse.Namespace) -> int:
    """Runs `perceiver data prepare-video` with parsed arguments; returns the exit code."""
    from data_pipeline.video.shards import prepare_videos

    with building("prepare-video"):
        manifest = prepare_videos(
            args.input,
            args.output,
            spec_from_args(args),
            labels=args.labels,
            frames_format=args.frames_format,
            jpeg_quality=args.jpeg_quality,
            audio_dtype=args.audio_dtype,
            val_fraction=args.val_fraction,
            **build_options(args),
        )
    clips, splits = manifest["clips"], manifest["splits"]
    reasons = ", ".join(f"{k}: {v}" for k, v in clips["rejected_by_reason"].items())
    print(
        f"wrote {args.output}: {splits['train']['samples']} train / {splits['val']['samples']} "
        f"val clips of {manifest['video']['num_frames']}x{manifest['video']['height']}x"
        f"{manifest['video']['width']} + {manifest['audio']['num_samples']} audio samples, "
        f"{manifest['num_classes']} classes; clips read {clips['read']}, kept {clips['kept']} "
        f"({clips['without_audio']} without audio), rejected {clips['rejected']}"
        f"{f' ({reasons})' if reasons else ''}; {manifest['wall_time_s']:.1f} s"
    )
    print_rejections(args.output, manifest["rejected"], clips["rejected"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` (the arguments after `prepare-video`) and runs it."""
    parser = argparse.ArgumentParser(
        prog="perceiver data prepare-video", description=__doc__.splitlines()[0]
    )
    _add_arguments(parser)
    return run_prepare_video(parser.parse_args(argv))
