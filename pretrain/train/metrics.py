"""Metrics: one small logger interface (``log(metrics, step)``, ``close()``) with TensorBoard and
a JSON-lines file behind it, written on rank 0 only; plus MFU and memory helpers."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from data_pipeline.files import atomic_write_text

# Dense bf16 tensor-core peak per device (FLOP/s), by substring of the CUDA device name.
_GPU_PEAK_BF16 = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
    ("L4", 121e12),
    ("V100", 125e12),  # fp16
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def detect_peak_flops(device: torch.device, configured: float | None) -> float | None:
    """Peak FLOP/s of one device: the configured value, else a table lookup for known GPUs."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in _GPU_PEAK_BF16:
            if key in name:
                return peak
    return None


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory allocated, or peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of ``path`` up to ``last_step`` (and no torn last line); atomic."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    atomic_write_text(path, "".join(kept))


class MetricLogger:
    """Writes scalars (and text) to TensorBoard and ``metrics.jsonl`` on rank 0; no-op elsewhere."""

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool,
        tensorboard: bool = True,
        jsonl: bool = True,
        resume_step: int | None = None,
    ):
        """``resume_step``: the step training (re)starts from; what an earlier attempt logged
        after it is dropped (``metrics.jsonl`` truncated, TensorBoard's ``purge_step``)."""
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_dir = run_dir / "tensorboard"
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=purge)
        if jsonl:
            path = run_dir / "metrics.jsonl"
            if resume_step is not None:
                truncate_jsonl(path, resume_step)
            self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")

    def log_text(self, tag: str, text: str, step: int) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, global_step=step)

    def log_images(self, images: dict[str, Any], step: int) -> None:
        """TensorBoard images: tag -> uint8 array or tensor [N, H, W, 3] (N images per step)."""
        if self.enabled and self._tb is not None:
            for tag, batch in images.items():
                self._tb.add_images(tag, batch, global_step=step, dataformats="NHWC")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


class Throughput:
    """Accumulates samples, tokens, time and data-wait time between two log points."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.samples = 0
        self.tokens = 0
        self.data_wait = 0.0

    def summary(
        self, world_size: int, flops_per_sample: float, peak_flops: float | None
    ) -> dict[str, Any]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        samples_s = self.samples * world_size / dt
        out = {
            "perf/samples_per_s": samples_s,
            "perf/tokens_per_s": self.tokens * world_size / dt,
            "perf/data_wait_frac": self.data_wait / dt,
            "perf/interval_s": dt,
        }
        achieved = flops_per_sample * samples_s / world_size  # per device
        out["perf/tflops_per_device"] = achieved / 1e12
        if peak_flops:
            out["perf/mfu"] = achieved / peak_flops
        return out
