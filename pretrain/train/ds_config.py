"""The DeepSpeed config, generated from the typed config in one place.

There is no hand-written DeepSpeed JSON in this project: this function is the only source, so the
engine can never disagree with what ``perceiver train --dry-run`` prints.
"""

from __future__ import annotations

from typing import Any

from pretrain.config import Config


def build_ds_config(
    cfg: Config, world_size: int, on_gpu: bool, load_universal: bool = False
) -> dict[str, Any]:
    """DeepSpeed config dict for ``cfg`` on ``world_size`` data-parallel ranks.

    ``load_universal`` is set when resuming from a checkpoint written by another number of ranks
    (see ``pretrain.train.checkpoint.ensure_universal``).
    """
    t = cfg.trainer
    zero: dict[str, Any] = {"stage": t.zero_stage}
    # Buckets sized to the model (the rule of HF's DeepSpeed integration: width^2 elements), so
    # that they do not cost more memory than ZeRO saves on a small model, capped at 5e7.
    width = _model_width(cfg)
    bucket = int(min(5e7, max(width * width, 1e6)))
    if t.zero_stage >= 1:
        zero.update(
            contiguous_gradients=True,
            overlap_comm=on_gpu,
            reduce_scatter=True,
            reduce_bucket_size=bucket,
            allgather_bucket_size=bucket,
        )
    if t.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=int(0.9 * bucket),
            stage3_param_persistence_threshold=10 * width,
            stage3_max_live_parameters=bucket,
            stage3_max_reuse_distance=bucket,
            stage3_gather_16bit_weights_on_model_save=False,
        )
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.micro_batch_size * t.grad_accum_steps * world_size,
        "gradient_clipping": cfg.optimizer.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # our own logger reports; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        "bf16": {"enabled": t.precision == "bf16" and not cfg.autocast_bf16},
        "fp16": {
            "enabled": t.precision == "fp16",
            "loss_scale": 0,  # dynamic loss scaling
            "initial_scale_power": t.fp16_initial_scale_power,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    if ds["bf16"]["enabled"] and t.zero_stage > 0:
        # accumulate gradients in fp32 (bf16 accumulation loses small gradients); DeepSpeed
        # supports this mix with ZeRO only
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds


def _model_width(cfg: Config) -> int:
    """The model's widest channel count (its hidden size), for sizing ZeRO's buckets."""
    widths = [v for k, v in vars(cfg.model).items() if "channels" in k and isinstance(v, int)]
    return max(widths, default=1024)
