"""Video pipeline and multimodal model throughput: clips decoded per second per worker, and
training steps per second of the tiny and paper multimodal autoencoders.

Decoding: `prepare_videos` (PyAV decode, resize + centre crop, 48 kHz resample, JPEG or raw
encoding, MDS writing) over the real clips in ../shared/data/video (each linked `--copies` times
under its class folder), or over synthetic 320x240 H.264/AAC clips when those are absent; wall
time of the whole build with 1 and with N workers.

Training: one process, the objective's real path (`transform`: query subsampling and label masks;
`step`: forward, losses) + backward + AdamW, on random clips, median over timed steps after
warm-up. FLOP/s from the model's analytic `flops_per_sample`.

    python tools/bench_video.py                          # CPU, threads = cores
    python tools/bench_video.py --device cuda --paper-batch 8 --tiny-batch 64
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Heavy imports (torch, streaming) stay inside the functions: decoding workers are spawned and
# re-import this script as their main module, which should cost them nothing.
SHARED_CLIPS = REPO.parent / "shared" / "data" / "video"
CONFIGS = {"tiny": "multimodal_tiny.yaml", "paper": "kinetics_multimodal.yaml"}


def synthetic_clips(root: Path, count: int) -> None:
    """``count`` 10 s 320x240 30 fps H.264 + 44.1 kHz AAC clips of moving noise, in 2 classes."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(count):
        path = root / f"class{i % 2}" / f"clip{i}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as c:
            video = c.add_stream("libx264", rate=30)
            video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
            audio = c.add_stream("aac", rate=44_100, layout="stereo")
            base = rng.integers(0, 256, (240, 640, 3), dtype=np.uint8)
            for f in range(300):
                img = np.ascontiguousarray(base[:, f : f + 320])
                for p in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in video.encode():
                c.mux(p)
            t = np.arange(441_000) / 44_100
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for pos in range(0, len(tone), 1024):
                chunk = np.ascontiguousarray(np.tile(tone[pos : pos + 1024], (2, 1)))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 44_100, pos
                for p in audio.encode(frame):
                    c.mux(p)
            for p in audio.encode():
                c.mux(p)


def bench_decode(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Builds the same shards with 1 and N workers; clips/s overall and per worker."""
    import streaming  # noqa: F401  (slow to import: not part of the timed builds)

    from data_pipeline.video.decode import ClipSpec
    from data_pipeline.video.shards import prepare_videos

    src = tmp / "videos"
    if SHARED_CLIPS.is_dir() and any(SHARED_CLIPS.iterdir()) and not args.synthetic:
        source = f"{SHARED_CLIPS} (x{args.copies} links)"
        for clip in sorted(SHARED_CLIPS.iterdir()):
            label = clip.name.split("__")[0]
            (src / label).mkdir(parents=True, exist_ok=True)
            for k in range(args.copies):
                os.symlink(clip, src / label / f"{k}_{clip.name}")
    else:
        source = f"{args.synthetic_count} synthetic 320x240 H.264/AAC clips"
        synthetic_clips(src, args.synthetic_count)
    spec = ClipSpec(clips_per_video=args.clips_per_video)
    rows = []
    for fmt in args.formats.split(","):
        for workers in sorted({1, args.workers}):
            out = tmp / f"shards_{fmt}_{workers}"
            t0 = time.perf_counter()
            manifest = prepare_videos(
                src, out, spec, workers=workers, frames_format=fmt, val_fraction=0.0, progress=False
            )
            dt = time.perf_counter() - t0
            kept = manifest["clips"]["kept"]
            rows.append(
                {
                    "source": source,
                    "frames_format": fmt,
                    "workers": workers,
                    "clips": kept,
                    "seconds": round(dt, 2),
                    "clips_per_s": round(kept / dt, 2),
                    "clips_per_s_per_worker": round(kept / dt / workers, 2),
                    "raw_mb_per_clip": round(_raw_bytes(out / "train") / kept / 2**20, 3),
                }
            )
            if workers == 1:
                rows[-1]["collate_clips_per_s"] = round(_collate_rate(out), 1)
            shutil.rmtree(out)
    return rows


def _collate_rate(data_dir: Path, batch: int = 8) -> float:
    """Clips/s of `stack_video` (JPEG decoding for JPEG shards) in one process."""
    from data_pipeline.video.shards import iter_video_samples, stack_video

    samples = list(iter_video_samples(data_dir, "train"))
    t0 = time.perf_counter()
    for i in range(0, len(samples) - batch + 1, batch):
        stack_video(samples[i : i + batch])
    return (len(samples) // batch * batch) / (time.perf_counter() - t0)


def _raw_bytes(split_dir: Path) -> int:
    """Bytes of a split's samples before zstd (from its MDS index)."""
    index = json.loads((split_dir / "index.json").read_text())
    return sum(shard["raw_data"]["bytes"] for shard in index["shards"])


def bench_train(name: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Steps/s of one config: transform + step + backward + AdamW on random clips."""
    import torch

    from pretrain.config import load_config
    from pretrain.models import build_model
    from pretrain.objectives.registry import build_objective

    device = torch.device(args.device)
    cfg = load_config(REPO / "configs" / CONFIGS[name], ["data.dir=unused"])
    mc = cfg.model
    objective = build_objective(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model_type, mc).to(device)
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    raw = {
        "frames": torch.randint(
            0, 256, (batch, mc.num_frames, mc.frame_height, mc.frame_width, 3), generator=g
        ).to(torch.uint8),
        "audio": torch.rand(batch, mc.num_audio_samples, generator=g) * 2 - 1,
        "has_audio": torch.ones(batch, dtype=torch.bool),
        "label": torch.randint(0, mc.num_classes, (batch,), generator=g),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        b = {k: v.to(device) for k, v in objective.transform(raw, i).items()}
        with autocast:
            loss, _ = objective.step(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    flops = objective.flops_per_sample(mc) * batch / median
    return {
        "config": name,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "device": args.device,
        "bf16": args.bf16,
        "s_per_step": round(median, 4),
        "steps_per_s": round(1 / median, 3),
        "clips_per_s": round(batch / median, 2),
        "tflops": round(flops / 1e12, 4),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, default=2, help="decoding workers to compare with 1")
    parser.add_argument("--copies", type=int, default=8, help="links per real clip")
    parser.add_argument("--clips-per-video", type=int, default=3)
    parser.add_argument("--formats", default="jpeg,raw")
    parser.add_argument("--synthetic", action="store_true", help="ignore the shared clips")
    parser.add_argument("--synthetic-count", type=int, default=8)
    parser.add_argument("--tiny-batch", type=int, default=8)
    parser.add_argument("--paper-batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--skip", default="", help="comma-separated: decode, tiny, paper")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("data_pipeline.video.shards").setLevel(logging.ERROR)  # "no val clip"
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {args.threads} threads"
    }
    if "decode" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            results["decode"] = bench_decode(args, Path(tmp))
        print("## Decoding (16 frames, 224 x 224, 48 kHz per clip)\n" + _table(results["decode"]))
    train_rows = []
    for name, batch in (("tiny", args.tiny_batch), ("paper", args.paper_batch)):
        if name not in skip:
            train_rows.append(bench_train(name, batch, args))
            print(train_rows[-1], flush=True)
    if train_rows:
        results["train"] = train_rows
        print("## Training steps\n" + _table(train_rows))
    print(results["machine"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
