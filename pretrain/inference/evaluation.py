"""``perceiver eval``: a checkpoint's metrics over a whole split of a shard directory.

Every rank calls :func:`evaluate_run`. It reads the run's saved config, points ``data`` at the
given directory, loads the consolidated weights of the newest (or the given) complete checkpoint
and runs the trainer's own validation (:func:`pretrain.train.evaluate.evaluate`): the same
objective, the same masking keys and the same shard loader
(:func:`pretrain.train.loaders.build_shard_loader`), so on the same samples it reports what the
trainer's validation reported (exactly, for fp32 runs; within bf16 rounding for runs that trained
in bf16, whose DeepSpeed engine evaluated bf16 weights). Each rank reads its part of the split;
the sums are all-reduced.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from data_pipeline.shards.remote import is_url
from pretrain.config import Config, config_from_dict
from pretrain.export import find_checkpoint


def eval_config(
    run: str | Path, data_dir: str, split: str, cache_dir: str, device: str | None = None
) -> Config:
    """The run's saved config with ``data`` pointing at one shard directory (no mixture)."""
    run = Path(run)
    checkpoint = find_checkpoint(run)
    saved = checkpoint / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{saved}: missing; the checkpoint cannot explain itself")
    raw: dict[str, Any] = yaml.safe_load(saved.read_text()) or {}
    data = dict(raw.get("data") or {})
    data_dir = data_dir if is_url(data_dir) else str(Path(data_dir).resolve())
    data.update(dir=data_dir, mixture=[], val_split=split, cache_dir=cache_dir)
    raw["data"] = data
    if device is not None:
        raw.setdefault("trainer", {})["device"] = device
    return config_from_dict(raw)


def evaluate_run(
    run: str | Path,
    data_dir: str,
    split: str = "val",
    max_batches: int | None = None,
    step: int | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """The objective's metrics of ``run``'s checkpoint on ``split`` of ``data_dir``."""
    from pretrain.inference.api import load_for_inference
    from pretrain.objectives.registry import build_objective, check_data
    from pretrain.train import distributed as dist_utils
    from pretrain.train.evaluate import evaluate
    from pretrain.train.loaders import build_shard_loader

    if not (Path(data_dir) / split).is_dir():
        raise FileNotFoundError(f"{Path(data_dir) / split}: no such split (see data inspect)")
    env = dist_utils.detect_env()
    # streaming's cache: one per evaluation, shared by the ranks of a node (same MASTER_PORT)
    key = os.environ.get("MASTER_PORT") or str(os.getpid())
    cache = Path(tempfile.gettempdir()) / f"perceiver-eval-{os.getuid()}-{key}"
    cfg = eval_config(run, data_dir, split, str(cache), device)
    check_data(cfg)  # the shards must fit the model (tokenizer, sample length)
    device_ = dist_utils.resolve_device(cfg.trainer.device)
    dist_utils.init_distributed(env, device_)
    try:
        loaded = load_for_inference(run, step, device=device_)
        objective = build_objective(cfg)
        loader = build_shard_loader(cfg, split, False)
        n = len(loader) if max_batches is None else max_batches
        autocast = (
            torch.autocast(device_.type, dtype=torch.bfloat16)
            if cfg.autocast_bf16
            else contextlib.nullcontext()
        )
        with autocast:
            metrics = evaluate(loaded.model, loader, objective, n, device_, env.world_size)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    finally:
        if env.local_rank == 0:
            shutil.rmtree(cache, ignore_errors=True)
    source = loaded.pretrained.source
    metrics["eval/step"] = float(source.get("step") or 0)
    metrics["eval/batches_per_rank"] = float(min(n, len(loader)))
    return metrics


def format_table(metrics: dict[str, float]) -> str:
    """One metric a line, names aligned."""
    width = max(len(k) for k in metrics)
    lines = []
    for name, value in metrics.items():
        shown = f"{value:.0f}" if value.is_integer() and math.isfinite(value) else f"{value:.6g}"
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)
