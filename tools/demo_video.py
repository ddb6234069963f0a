"""`make demo-video`: the video half end to end on the real sample clips in ../shared/data/video.

1. Links the clips (never copies them) under ``OUT/video_in/<label>/`` with Kinetics-style names
   and writes a Kinetics-style CSV: the UCF-101 clip (last by name, with audio) is the
   validation video, the others train.
2. `perceiver data prepare-video` equivalent: 40 clips of 4 frames at 32 x 32 (+ 48 kHz audio)
   per video, 0.24 s apart, with 2 decoding workers; clips past a video's end are counted as
   ``too_short``.
3. Trains the tiny multimodal autoencoder (`configs/multimodal_tiny.yaml`) with 2 CPU processes
   under DeepSpeed ZeRO-2 and prints the losses, validation PSNR and the TensorBoard command
   (reconstructed frames are under IMAGES).

    python tools/demo_video.py [--clips DIR] [--out demo_out] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLIPS = REPO.parent / "shared" / "data" / "video"
CONFIG = REPO / "configs" / "multimodal_tiny.yaml"


def link_clips(clips: Path, root: Path) -> Path:
    """Kinetics-style layout and CSV for the clips in ``clips``; returns the CSV path."""
    files = sorted(p for p in clips.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SystemExit(f"demo-video: no clips in {clips}")
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i, clip in enumerate(files):
        label = clip.name.split("__")[0]
        link = root / label / f"{label}_000000_000010{clip.suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(clip.resolve(), link)
        rows.append(f"{label},{label},0,10,{'validate' if i == len(files) - 1 else 'train'}")
    csv = root / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=CLIPS, help="folder of video clips")
    parser.add_argument("--out", type=Path, default=REPO / "demo_out")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.clips.is_dir():
        raise SystemExit(f"demo-video: {args.clips} not found (pass --clips DIR of video files)")

    from data_pipeline.video.decode import ClipSpec
    from data_pipeline.video.shards import prepare_videos

    csv = link_clips(args.clips, args.out / "video_in")
    data_dir = args.out / "data" / "video_tiny"
    spec = ClipSpec(num_frames=4, height=32, width=32, clips_per_video=40, clip_stride_s=0.24)
    print(f"[demo-video] decoding {args.clips} into {data_dir}", flush=True)
    manifest = prepare_videos(
        args.out / "video_in", data_dir, spec, labels=csv, workers=2, overwrite=True
    )
    clips = manifest["clips"]
    print(
        f"[demo-video] clips kept {clips['kept']} ({clips['without_audio']} without audio), "
        f"rejected {clips['rejected_by_reason']}; train {manifest['splits']['train']['samples']}"
        f" / val {manifest['splits']['val']['samples']}",
        flush=True,
    )
    run_dir = args.out / "runs" / "video"
    argv = [
        sys.executable,
        "-m",
        "pretrain.cli",
        "train",
        str(CONFIG),
        f"data.dir={data_dir}",
        f"trainer.run_dir={run_dir}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_every={args.steps // 2}",
        "trainer.log_every=10",
        "trainer.micro_batch_size=4",
        "checkpoint.every=0",
        "checkpoint.resume=none",
        "--nproc-per-node",
        str(args.nproc),
    ]
    print(f"[demo-video] training the tiny multimodal autoencoder ({args.nproc} ranks, ZeRO-2)")
    subprocess.run(argv, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    val = summary["val_metrics"]
    print(
        f"[demo-video] {summary['num_params']:,} parameters, {summary['state']['step']} steps; "
        f"train loss {train[0]['train/loss']:.4f} (step {train[0]['step']}) -> "
        f"{train[-1]['train/loss']:.4f}, video PSNR {train[0]['train/video_psnr']:.1f} -> "
        f"{train[-1]['train/video_psnr']:.1f} dB; val video PSNR "
        f"{val.get('val/video_psnr', float('nan')):.2f} dB, audio PSNR "
        f"{val.get('val/audio_psnr', float('nan')):.2f} dB\n"
        f"[demo-video] tensorboard --logdir {run_dir / 'tensorboard'}  (IMAGES: reconstructions)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
