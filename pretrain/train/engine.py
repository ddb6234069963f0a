"""The DeepSpeed engine: how the model is built into one, and how a step is skipped on it.

Order of construction (:func:`build_training_engine`): the model is built with identical weights on
every rank (partitioned while it is built under ZeRO-3), activation checkpointing is applied,
pretrained weights are loaded (``checkpoint.init_from``, only when not resuming), then DeepSpeed
wraps it with the optimizer and LR schedule, and ``trainer.compile`` compiles the wrapped module.

A step whose loss or gradients are not finite is skipped on every rank alike, leaving weights and
optimizer state as they were (:func:`skip_step`); how depends on the optimizer under the engine.
"""

from __future__ import annotations

from typing import Any

import torch

from pretrain.config import Config
from pretrain.train.distributed import any_rank


def build_engine(
    cfg: Config, model: torch.nn.Module, device: torch.device, world_size: int, universal: bool
) -> Any:
    """``model`` wrapped in a DeepSpeed engine with ``cfg``'s optimizer and LR schedule.

    Args:
        universal: the engine will load a universal checkpoint (written by another world size).
    """
    import deepspeed

    from pretrain.train.ds_config import build_ds_config
    from pretrain.train.optim import build_optimizer, build_scheduler
    from pretrain.train.zero_memory import share_fp32_master

    optimizer = build_optimizer(model, cfg.optimizer, device)
    scheduler = build_scheduler(optimizer, cfg.optimizer, cfg.trainer.max_steps)
    ds_config = build_ds_config(cfg, world_size, device.type == "cuda", load_universal=universal)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    share_fp32_master(engine.optimizer)  # ZeRO-3, fp32: one copy of the partition, not two
    return engine


def build_training_engine(
    cfg: Config, world_size: int, device: torch.device, *, init_from: bool, universal: bool
) -> tuple[Any, int]:
    """The engine the loop trains, and the model's parameter count (see the module docstring).

    Args:
        init_from: load ``checkpoint.init_from``'s weights (a fresh run, not a resume).
        universal: see :func:`build_engine`.
    """
    from pretrain.models.attention import writable
    from pretrain.train.ds_config import build_ds_config
    from pretrain.train.parallelize import (
        apply_activation_checkpointing,
        build_for_training,
        num_parameters,
    )

    t = cfg.trainer
    ds_config = build_ds_config(cfg, world_size, device.type == "cuda")
    model = build_for_training(cfg.model_type, cfg.model, t.seed, ds_config).to(device)
    num_params = num_parameters(model)
    if t.activation_checkpointing:
        apply_activation_checkpointing(model)
    if init_from:
        from pretrain.export import load_initial_weights

        with writable(*model.parameters()):  # ZeRO-3: whole while they are loaded
            load_initial_weights(model, cfg)
    engine = build_engine(cfg, model, device, world_size, universal)
    if t.compile:
        from torch._inductor import config as inductor_config

        # compiled random draws (dropout, prefix dropout) from torch's generator, as in eager:
        # the same (seed, micro-step, rank) stream, so compiled runs also resume exactly
        inductor_config.fallback_random = True
        engine.compile()  # DeepSpeed's: torch.compile of the module, its ZeRO hooks kept
    return engine, num_params


def has_own_skip(engine: Any) -> bool:
    """Whether the engine's optimizer is DeepSpeed's own (ZeRO, bf16, fp16), which skips a step
    whose gradients are not finite by itself; a plain torch optimizer has no skip."""
    return hasattr(engine.optimizer, "overflow")


def grad_norm(model: torch.nn.Module) -> float:
    """Global L2 norm of the (already all-reduced) gradients, for engines that do not report it."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def skip_step(engine: Any, loss: torch.Tensor) -> None:
    """The last micro-step of a step, leaving weights and optimizer state unchanged.

    DeepSpeed's own optimizers skip a step whose gradients are not finite, consistently on every
    rank, so the loss is made NaN for them; see :func:`drop_gradients` for a plain torch optimizer.
    """
    if has_own_skip(engine):
        engine.backward(loss * float("nan"))
        engine.step()
        if engine.was_step_applied():
            raise RuntimeError("DeepSpeed applied an optimizer step with non-finite gradients")
    else:
        engine.backward(loss)
        drop_gradients(engine)


def drop_gradients(engine: Any) -> None:
    """Instead of ``engine.step()`` under a plain torch optimizer (ZeRO stage 0 without
    DeepSpeed's bf16/fp16), which has no skip: no optimizer step, the gradients are dropped and
    the engine's micro-step counter advances as ``engine.step()`` would advance it."""
    engine.zero_grad()
    engine.micro_steps += 1


def weights_finite(engine: Any, device: torch.device) -> bool:
    """Whether every rank's weights (its ZeRO-3 partition, if any) are finite (collective)."""
    bad = torch.zeros((), device=device)
    for p in engine.module.parameters():
        for t in (p.data, getattr(p, "ds_tensor", None)):
            if t is not None and t.numel() and not bool(torch.isfinite(t).all()):
                bad.fill_(1.0)
    return not any_rank(bad)
