"""One-shot check of the CUDA path, with one table of results (``make gpu-check``).

On one GPU, with no network, in a few minutes it verifies and measures:

* SDPA kernels actually selected (profiled aten ops) for the Perceiver IO cross-attention (with a
  padding mask) and the Perceiver AR bottom-right causal cross-attention: no math fallback;
* bf16 autocast loss against fp32 on the same batch and weights;
* the fused AdamW step against the unfused one;
* activation checkpointing: activation memory kept for the backward pass, with and without;
* DeepSpeed ZeRO-2 and ZeRO-3 on one device through the trainer's own engine builder;
* training-step throughput and MFU of the paper MLM (201M, 2048 bytes, masked-only decoding)
  and the AR 8k/1024 preset, eager and ``torch.compile``d, against HF ``PerceiverForMaskedLM``
  at the same config and batch; peak memory of each.

    python tools/gpu_check.py                       # CUDA, paper-sized models
    python tools/gpu_check.py --device cpu          # tiny presets on the CPU (what CI runs)

Writes ``gpu_check.json`` and ``gpu_check.md`` (the table for docs/benchmarks.md) to ``--out``.
Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")

from pretrain.models import build_model  # noqa: E402
from pretrain.train.metrics import detect_peak_flops  # noqa: E402
from pretrain.train.parallelize import apply_activation_checkpointing  # noqa: E402

MASK_ID, VOCAB_LOW = 3, 6
PRESETS = {  # (paper-sized on a GPU, tiny on the CPU)
    "mlm": ("perceiver_io_mlm_paper", "perceiver_io_mlm_tiny"),
    "ar": ("perceiver_ar_byte_8k", "perceiver_ar_tiny"),
}


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL or INFO
    value: str
    detail: str = ""


@dataclass
class Speed:
    model: str
    implementation: str
    batch: int
    seq_len: int
    step_s: float
    tokens_per_s: float
    tflops: float
    mfu: float | None
    peak_memory_gib: float | None
    params_m: float


@dataclass
class Report:
    device: str
    torch: str
    checks: list[Check] = field(default_factory=list)
    speed: list[Speed] = field(default_factory=list)


def preset(name: str, **overrides) -> tuple[str, dict]:
    fields = yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())
    model_type = fields.pop("type")
    fields.update(overrides)
    return model_type, fields


def make_model(kind: str, tiny: bool, device: torch.device, **overrides) -> torch.nn.Module:
    model_type, fields = preset(PRESETS[kind][tiny], dropout=0.0, **overrides)
    torch.manual_seed(0)
    model = build_model(model_type, fields)
    model.init_weights()
    return model.to(device)


def mlm_batch(model, batch: int, device: torch.device, seed: int = 0):
    """Tokens with 15% of positions masked; the masked positions and their labels."""
    s = model.cfg.max_seq_len
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(VOCAB_LOW, model.cfg.vocab_size, (batch, s), generator=gen)
    k = max(1, int(0.15 * s))
    positions = torch.rand(batch, s, generator=gen).topk(k, dim=1).indices.sort(dim=1).values
    input_ids = tokens.scatter(1, positions, MASK_ID)
    mask = torch.ones(batch, s, dtype=torch.bool)
    mask[:, -s // 8 :] = False  # padded tail: the padding-mask path of the cross-attention
    labels = tokens.gather(1, positions)
    return [t.to(device) for t in (input_ids, mask, positions, labels)]


def mlm_loss(model, batch) -> torch.Tensor:
    input_ids, mask, positions, labels = batch
    logits = model(input_ids, mask, output_positions=positions)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def ar_batch(model, batch: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s, vocab = model.cfg.max_seq_len, model.cfg.vocab_size
    tokens = torch.randint(VOCAB_LOW, vocab, (batch, s + 1), generator=gen).to(device)
    return tokens[:, :-1], tokens[:, 1:]


def ar_loss(model, batch) -> torch.Tensor:
    input_ids, labels = batch
    logits = model(input_ids)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels[:, -logits.shape[1] :].flatten())


def autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# Checks


def check_sdpa_kernels(device, tiny, bf16) -> list[Check]:
    """Which SDPA aten ops the forward passes dispatch to (profiled), per model."""
    from torch.profiler import ProfilerActivity, profile

    checks = []
    for kind, make_batch, loss_fn in (("mlm", mlm_batch, mlm_loss), ("ar", ar_batch, ar_loss)):
        model = make_model(kind, tiny, device).eval()
        batch = make_batch(model, 1, device)
        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if device.type == "cuda" else []
        )
        with torch.no_grad(), autocast(device, bf16), profile(activities=activities) as prof:
            loss_fn(model, batch)
        ops = sorted({e.name for e in prof.events() if "scaled_dot_product" in e.name})
        fallback = [op for op in ops if "math" in op]
        kernels = [op for op in ops if op != "aten::scaled_dot_product_attention"]
        status = "FAIL" if fallback or not kernels else "PASS"
        if device.type != "cuda":
            status = "INFO" if status == "PASS" or not kernels else status
        where = "IO cross-attention (padding mask)" if kind == "mlm" else "AR causal (bottom right)"
        checks.append(Check(f"sdpa kernels, {kind}", status, ", ".join(kernels) or "none", where))
    return checks


def check_bf16(device, tiny) -> Check:
    model = make_model("mlm", tiny, device).eval()
    batch = mlm_batch(model, 2, device)
    with torch.no_grad():
        fp32 = float(mlm_loss(model, batch))
        with autocast(device, True):
            bf16 = float(mlm_loss(model, batch))
    rel = abs(bf16 - fp32) / abs(fp32)
    return Check(
        "bf16 vs fp32 loss",
        "PASS" if rel < 2e-2 else "FAIL",
        f"{rel:.2e}",
        f"{fp32:.4f} / {bf16:.4f}",
    )


def check_fused_adamw(device, tiny) -> Check:
    results = []
    for fused in (True, False):
        model = make_model("mlm", tiny, device)
        opt = torch.optim.AdamW(
            model.parameters(), lr=1e-3, fused=fused, foreach=False if not fused else None
        )
        mlm_loss(model, mlm_batch(model, 2, device)).backward()
        opt.step()
        results.append(torch.cat([p.detach().flatten().float() for p in model.parameters()]))
    diff = float((results[0] - results[1]).abs().max())
    return Check("fused AdamW step", "PASS" if diff < 1e-5 else "FAIL", f"max diff {diff:.1e}")


def saved_activation_bytes(model, loss_fn, batch, device, bf16) -> tuple[int, int]:
    """Bytes saved for backward (outside checkpointed regions) and the peak memory of a step."""
    saved = 0

    def pack(t):
        nonlocal saved
        if not isinstance(t, torch.nn.Parameter):
            saved += t.numel() * t.element_size()
        return t

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, bf16):
        loss = loss_fn(model, batch)
    loss.backward()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    model.zero_grad(set_to_none=True)
    return saved, peak


def check_activation_checkpointing(device, tiny, bf16, batch_size) -> Check:
    model = make_model("mlm", tiny, device)
    batch = mlm_batch(model, batch_size, device)
    plain, plain_peak = saved_activation_bytes(model, mlm_loss, batch, device, bf16)
    apply_activation_checkpointing(model)
    ckpt, ckpt_peak = saved_activation_bytes(model, mlm_loss, batch, device, bf16)
    detail = f"saved for backward {plain / 2**20:.0f} -> {ckpt / 2**20:.0f} MiB"
    if device.type == "cuda":
        detail += f"; peak {plain_peak / 2**30:.2f} -> {ckpt_peak / 2**30:.2f} GiB"
    return Check(
        "activation checkpointing",
        "PASS" if ckpt < 0.6 * plain else "FAIL",
        f"{ckpt / plain:.2f}x activations",
        detail,
    )


def init_single_process_group(device: torch.device) -> None:
    import deepspeed

    if torch.distributed.is_initialized():
        return
    from pretrain.train.distributed import free_port

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def check_zero(device, tiny, stage: int, bf16: bool) -> Check:
    """Three steps of the MLM through the trainer's own DeepSpeed engine builder."""
    from pretrain.config import config_from_dict
    from pretrain.train.engine import build_engine

    init_single_process_group(device)
    cfg = config_from_dict(
        {
            "model": {"preset": PRESETS["mlm"][tiny], "dropout": 0.0},
            "data": {"dir": "/unused"},
            "optimizer": {"name": "adamw", "lr": 1e-3, "warmup_steps": 0},
            "trainer": {
                "zero_stage": stage,
                "precision": "bf16" if bf16 else "fp32",
                "micro_batch_size": 2,
                "device": device.type,
            },
        }
    )
    model = make_model("mlm", tiny, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    engine = build_engine(cfg, model, device, 1, False)
    batch = mlm_batch(model, 2, device)
    losses = []
    for _ in range(3):
        with autocast(device, cfg.autocast_bf16):
            loss = mlm_loss(engine, batch)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    ok = all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    detail = f"peak {peak:.2f} GiB" if device.type == "cuda" else ""
    return Check(
        f"ZeRO-{stage}, 1 device",
        "PASS" if ok else "FAIL",
        " -> ".join(f"{x:.3f}" for x in losses),
        detail,
    )


# --------------------------------------------------------------------------------------------
# Throughput


def time_steps(step: Callable[[], None], device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step(model, loss_fn, batch, device, bf16) -> Callable[[], None]:
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    model.train()

    def step() -> None:
        with autocast(device, bf16):
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(
    name, impl, model, loss_fn, batch, batch_size, flops_per_sample, args, device, compile_
) -> Speed:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    runnable = torch.compile(model) if compile_ else model
    step = train_step(runnable, loss_fn, batch, device, args.bf16)
    seconds = time_steps(step, device, args.warmup + (2 if compile_ else 0), args.steps)
    seq = batch[0].shape[1]
    flops = flops_per_sample * batch_size / seconds
    peak = detect_peak_flops(device, args.peak_flops)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Speed(
        name,
        impl,
        batch_size,
        seq,
        seconds,
        batch_size * seq / seconds,
        flops / 1e12,
        flops / peak if peak else None,
        memory,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )


def speed_rows(args, device, tiny) -> list[Speed]:
    from transformers import PerceiverForMaskedLM

    from pretrain.models.hf_interop import hf_config, to_hf_state_dict

    rows = []
    model = make_model("mlm", tiny, device)
    b = args.mlm_batch
    batch = mlm_batch(model, b, device)
    k = batch[2].shape[1]
    decoded = model.cfg.flops_per_sample(num_output_positions=k)
    name = f"MLM {PRESETS['mlm'][tiny]}"
    for compile_ in (False, True):
        impl = "ours, masked decoding" + (", compiled" if compile_ else "")
        rows.append(measure(name, impl, model, mlm_loss, batch, b, decoded, args, device, compile_))

    hf = PerceiverForMaskedLM(hf_config(model.cfg)).to(device)
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg))
    input_ids, mask, positions, labels_k = batch
    labels = torch.full_like(input_ids, -100).scatter(1, positions, labels_k)

    def hf_loss(m, _):
        return m(inputs=input_ids, attention_mask=mask, labels=labels).loss

    full = model.cfg.flops_per_sample()  # HF decodes every position
    rows.append(
        measure(name, "HF PerceiverForMaskedLM", hf, hf_loss, batch, b, full, args, device, False)
    )
    del hf, model

    model = make_model("ar", tiny, device, cross_attention_dropout=0.5)
    batch = ar_batch(model, args.ar_batch, device)
    flops = model.cfg.flops_per_sample()  # expected prefix dropout 0.5 included
    name = f"AR {PRESETS['ar'][tiny]}"
    for compile_ in (False, True):
        impl = "ours" + (", compiled" if compile_ else "")
        rows.append(
            measure(name, impl, model, ar_loss, batch, args.ar_batch, flops, args, device, compile_)
        )
    return rows


# --------------------------------------------------------------------------------------------


def markdown(report: Report, command: str) -> str:
    lines = [
        f"`{command}` on {report.device}, torch {report.torch}",
        "",
        "| check | result | value | detail |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {c.name} | {c.status} | {c.value} | {c.detail} |" for c in report.checks]
    lines += [
        "",
        "| model | implementation | batch x seq | step (s) | tokens/s | TFLOP/s | MFU | peak GiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in report.speed:
        mfu = f"{100 * s.mfu:.1f}%" if s.mfu is not None else "n/a"
        peak = f"{s.peak_memory_gib:.2f}" if s.peak_memory_gib is not None else "n/a"
        lines.append(
            f"| {s.model} ({s.params_m:.1f}M) | {s.implementation} | {s.batch} x {s.seq_len} "
            f"| {s.step_s:.3f} | {s.tokens_per_s:,.0f} | {s.tflops:.2f} | {mfu} "
            f"| {peak} |"
        )
    return "\n".join(lines) + "\n"


def run_check(report: Report, name: str, fn: Callable[[], Check | list[Check]]) -> None:
    try:
        result = fn()
        report.checks.extend(result if isinstance(result, list) else [result])
    except Exception as e:  # one broken check must not hide the others
        traceback.print_exc()
        report.checks.append(Check(name, "FAIL", type(e).__name__, str(e).splitlines()[0][:200]))
    print(f"  {report.checks[-1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="gpu_check_out")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mlm-batch", type=int, default=None)
    parser.add_argument("--ar-batch", type=int, default=None)
    parser.add_argument("--peak-flops", type=float, default=None, help="per device, for MFU")
    parser.add_argument("--no-speed", action="store_true", help="checks only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU (use --device cpu for the tiny run)")
    tiny = device.type != "cuda"
    args.bf16 = device.type == "cuda"  # CPU bf16 kernels are slow and not what is checked here
    args.steps = args.steps or (10 if not tiny else 3)
    args.mlm_batch = args.mlm_batch or (16 if not tiny else 2)
    args.ar_batch = args.ar_batch or (4 if not tiny else 2)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    report = Report(f"{device.type}: {name or platform.machine()}", torch.__version__)
    command = "python tools/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {command}\n{report.device}, torch {report.torch}", flush=True)
    start = time.perf_counter()

    run_check(report, "sdpa kernels", lambda: check_sdpa_kernels(device, tiny, args.bf16))
    run_check(report, "bf16 vs fp32 loss", lambda: check_bf16(device, tiny))
    run_check(report, "fused AdamW step", lambda: check_fused_adamw(device, tiny))
    run_check(
        report,
        "activation checkpointing",
        lambda: check_activation_checkpointing(device, tiny, args.bf16, args.mlm_batch),
    )
    for stage in (2, 3):
        run_check(
            report,
            f"ZeRO-{stage}, 1 device",
            lambda s=stage: check_zero(device, tiny, s, args.bf16),
        )
    if not args.no_speed:
        try:
            report.speed = speed_rows(args, device, tiny)
        except Exception as e:
            traceback.print_exc()
            report.checks.append(Check("throughput", "FAIL", type(e).__name__, str(e)[:200]))
    report.checks.append(Check("wall time", "INFO", f"{time.perf_counter() - start:.0f} s"))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    table = markdown(report, command)
    (out / "gpu_check.md").write_text(table)
    print("\n" + table)
    return 1 if any(c.status == "FAIL" for c in report.checks) else 0


if __name__ == "__main__":
    sys.exit(main())
