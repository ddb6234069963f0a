"""Training throughput of the Perceiver IO image classifiers and optical-flow model against HF's.

    python tools/bench_vision.py             # CPU: paper image shapes, 1 self-attention layer
    python tools/bench_vision.py --device cuda --layers-per-block 6 --blocks 8 --batch 32 \
        --flow-size 368x496 --flow-latents 2048 --flow-layers 24          # the paper models
    python tools/bench_vision.py --smoke     # seconds: tiny shapes, one step each

For each model (``--models fourier learned conv flow``) both implementations are built at the same
configuration with the same weights (ours converted with ``pretrain.models.hf_vision``), and a
training step (forward, loss, backward, AdamW step) runs on the same batch. Steps alternate
between the two in rounds so that load from other processes hits both alike; samples/s is the
batch size over the median step time (wall clock), and also over the median process CPU time
of a step, a measure of work that other processes on a shared machine disturb less. The output
states the measured configuration, both rates of both implementations and the speed-ups.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.models import build_model  # noqa: E402
from pretrain.models.hf_vision import hf_config, hf_model_class, to_hf_state_dict  # noqa: E402
from pretrain.models.image_classifier import PerceiverImageClassifierConfig  # noqa: E402
from pretrain.models.optical_flow import (  # noqa: E402
    PerceiverOpticalFlowConfig,
    extract_patches,
)

MODELS = ("fourier", "learned", "conv", "flow")
HF_RESOLUTION = {"fourier": 224, "conv": 56, "learned": None}  # HF's hard-coded Fourier resolution


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--image-size", type=int, default=224, help="side of the classifier's images")
    p.add_argument("--flow-size", default="96x128", help="HxW of the flow frames (368x496)")
    p.add_argument("--latents", type=int, default=512, help="latents (paper: 512; flow 2048)")
    p.add_argument("--latent-channels", type=int, default=1024, help="paper: 1024 (flow 512)")
    p.add_argument("--flow-latents", type=int, default=512, help="flow latents (paper 2048)")
    p.add_argument("--flow-latent-channels", type=int, default=512, help="flow latent channels")
    p.add_argument("--layers-per-block", type=int, default=1, help="classifier; paper: 6")
    p.add_argument("--blocks", type=int, default=1, help="classifier; paper: 8")
    p.add_argument("--flow-layers", type=int, default=1, help="flow self-attention; paper: 24")
    p.add_argument("--dropout", type=float, default=0.0, help="attention dropout (HF's 0.1)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps per round and model")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one step: seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.image_size, args.flow_size, args.batch = 16, "8x12", 2
        args.latents, args.latent_channels, args.flow_latents, args.flow_latent_channels = (
            8,
            32,
            8,
            32,
        )
        args.steps, args.rounds, args.warmup, args.threads = 1, 1, 0, 1
    return args


def build_config(kind: str, args: argparse.Namespace):
    """Our config of ``kind`` at the benchmark's sizes (HF-representable)."""
    if kind == "flow":
        h, w = (int(v) for v in args.flow_size.lower().split("x"))
        return PerceiverOpticalFlowConfig(
            image_height=h,
            image_width=w,
            num_latents=args.flow_latents,
            num_latent_channels=args.flow_latent_channels,
            num_self_attention_heads=16 if args.flow_latent_channels % 16 == 0 else 1,
            num_self_attention_layers_per_block=args.flow_layers,
            num_self_attention_blocks=1,
            dropout=args.dropout,
        )
    return PerceiverImageClassifierConfig(
        image_size=args.image_size,
        preprocessing=kind,
        fourier_max_resolution=HF_RESOLUTION[kind],
        num_latents=args.latents,
        num_latent_channels=args.latent_channels,
        num_self_attention_heads=8 if args.latent_channels % 8 == 0 else 1,
        num_self_attention_layers_per_block=args.layers_per_block,
        num_self_attention_blocks=args.blocks,
        dropout=args.dropout,
    )


def batch_for(cfg, batch: int, device: torch.device):
    """(our input, HF's input, target) of one training batch."""
    gen = torch.Generator().manual_seed(0)
    if isinstance(cfg, PerceiverOpticalFlowConfig):
        shape = (batch, 2, 3, cfg.image_height, cfg.image_width)
        frames = (torch.rand(shape, generator=gen) * 2 - 1).to(device)
        target = torch.randn(batch, cfg.image_height, cfg.image_width, 2, generator=gen)
        return frames, extract_patches(frames), target.to(device)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen).to(device)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=gen).to(device)
    return images, images, labels


def loss_of(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if output.ndim == 2:
        return F.cross_entropy(output, target)
    return (output - target).square().sum(-1).sqrt().mean()  # end-point error


def step_fn(model, optimizer, x, target, hf: bool):
    def step() -> None:
        out = model(inputs=x).logits if hf else model(x)
        loss_of(out, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(kind: str, args: argparse.Namespace, device: torch.device) -> dict:
    cfg = build_config(kind, args)
    torch.manual_seed(0)
    ours = build_model(cfg.type, cfg)
    ours.init_weights()
    hf = hf_model_class(cfg)(hf_config(cfg))
    hf.load_state_dict(to_hf_state_dict(ours.state_dict(), cfg))
    ours.to(device).train()
    hf.to(device).train()
    x, hf_x, target = batch_for(cfg, args.batch, device)
    steps = {
        "ours": step_fn(ours, torch.optim.AdamW(ours.parameters(), lr=1e-4), x, target, False),
        "hf": step_fn(hf, torch.optim.AdamW(hf.parameters(), lr=1e-4), hf_x, target, True),
    }
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "hf": []}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name] += [timed(step, device) for _ in range(args.steps)]
    result = {"kind": kind, "cfg": cfg}
    for name, samples in times.items():
        result[name] = args.batch / statistics.median(t for t, _ in samples)
        result[f"{name}_cpu"] = args.batch / max(statistics.median(c for _, c in samples), 1e-9)
    return result


def describe(cfg) -> str:
    common = (
        f"{cfg.num_latents}x{cfg.num_latent_channels} latents, "
        f"{cfg.num_self_attention_blocks}x{cfg.num_self_attention_layers_per_block} self-attn, "
        f"{cfg.num_inputs} inputs x {cfg.input_channels} ch, dropout {cfg.dropout}"
    )
    if isinstance(cfg, PerceiverOpticalFlowConfig):
        return f"{cfg.image_height}x{cfg.image_width} frame pairs, {common}"
    return f"{cfg.image_size}x{cfg.image_size} images, {common}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"# bench_vision: training steps (forward + loss + backward + AdamW), batch {args.batch}, "
        f"{args.rounds} rounds x {args.steps} steps per implementation after {args.warmup} "
        f"warm-up, median; {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'model':<8} {'ours/s':>7} {'HF/s':>7} {'speed-up':>8} | {'ours/cpu-s':>10} "
        f"{'HF/cpu-s':>9} {'speed-up':>8}  configuration"
    )
    for kind in args.models:
        r = bench(kind, args, device)
        print(
            f"{kind:<8} {r['ours']:>7.3f} {r['hf']:>7.3f} {r['ours'] / r['hf']:>7.2f}x | "
            f"{r['ours_cpu']:>10.3f} {r['hf_cpu']:>9.3f} {r['ours_cpu'] / r['hf_cpu']:>7.2f}x  "
            f"{describe(r['cfg'])}",
            flush=True,
        )
    print("(/s: samples per second of wall clock; /cpu-s: samples per second of process CPU time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
