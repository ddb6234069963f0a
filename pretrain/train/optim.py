"""Optimizers and learning-rate schedules.

LAMB (You et al., 2019) is what the Perceiver IO paper uses for MLM pretraining. On GPU we use
DeepSpeed's fused kernels (``FusedLamb``) or torch's fused AdamW; on CPU the :class:`Lamb` below,
a plain torch implementation with the same trust-ratio clamping as ``FusedLamb``
(``min_coeff`` / ``max_coeff``), so the two paths train alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from pretrain.config import OptimizerConfig


class Lamb(torch.optim.Optimizer):
    """Layer-wise Adaptive Moments for Batch training.

    Per parameter tensor: Adam moments with bias correction, ``u = m / (sqrt(v) + eps) + wd * p``,
    trust ratio ``r = clamp(||p|| / ||u||, min_coeff, max_coeff)`` (1 where either norm is 0),
    ``p -= lr * r * u``.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        min_coeff: float = 0.01,
        max_coeff: float = 10.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr: must be > 0, got {lr}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            min_coeff=min_coeff,
            max_coeff=max_coeff,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** state["step"])
                v_hat = v / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"])
                p32 = p.float()
                if group["weight_decay"]:
                    update.add_(p32, alpha=group["weight_decay"])
                w_norm = p32.norm()
                u_norm = update.norm()
                if w_norm > 0 and u_norm > 0:
                    ratio = (w_norm / u_norm).clamp(group["min_coeff"], group["max_coeff"])
                else:
                    ratio = torch.ones((), dtype=torch.float32, device=p.device)
                p.copy_((p32 - group["lr"] * ratio * update).to(p.dtype))
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; do not decay biases, norms, latents/positions given as vectors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 holds a flat slice: its own shape
        (no_decay if ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: OptimizerConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer for ``model``: fused kernels on GPU, plain torch on CPU."""
    groups = param_groups(model, cfg.weight_decay)
    betas = (cfg.betas[0], cfg.betas[1])
    if cfg.name == "adamw":
        kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, **kwargs)
    if device.type == "cuda":
        try:
            from deepspeed.ops.lamb import FusedLamb

            return FusedLamb(
                groups, lr=cfg.lr, betas=betas, eps=cfg.eps, max_coeff=10.0, min_coeff=0.01
            )
        except Exception as e:  # the op needs a CUDA toolchain to build; fall back loudly
            import warnings

            warnings.warn(
                f"DeepSpeed FusedLamb unavailable ({e}); using the torch LAMB", stacklevel=2
            )
    return Lamb(groups, lr=cfg.lr, betas=betas, eps=cfg.eps)


def lr_lambda(cfg: OptimizerConfig, max_steps: int):
    """Multiplier of the base lr at each optimizer step: linear warmup, ``hold_steps`` at the
    peak, then decay."""
    warmup = cfg.warmup_steps + cfg.hold_steps  # the decay starts after both
    floor = cfg.min_lr_ratio

    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant" or step < warmup:
            return 1.0
        span = max(1, max_steps - warmup)
        t = min(1.0, (step - warmup) / span)
        if cfg.schedule == "linear":
            return floor + (1.0 - floor) * (1.0 - t)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return fn


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, max_steps))
