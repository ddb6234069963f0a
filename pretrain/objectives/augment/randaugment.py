"""RandAugment (Cubuk et al. 2020), batched: ``num_ops`` operations per image, each drawn uniformly
from :data:`OPS`, at one ``magnitude`` (0-10, as in the paper and TF's autoaugment.py, whose
``_MAX_LEVEL`` is 10) with a random sign where the operation has one.

Images are float ``[b, 3, S, S]`` in ``[0, 1]``. Strength at magnitude ``m`` (level ``m / 10``):
brightness, contrast and colour blend by a factor ``1 +- 0.9 level``; rotate ``+-30 level``
degrees; shear ``+-0.3 level``; translate ``+-0.45 level`` of the side (x or y); posterize keeps
``8 - round(4 level)`` bits; solarize inverts values above ``1 - level``. Geometric operations fill
with grey (0.5), as TF's fill value 128 does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS = (
    "brightness",
    "contrast",
    "colour",
    "rotate",
    "shear",
    "translate",
    "posterize",
    "solarize",
)
_GREY = torch.tensor([0.299, 0.587, 0.114])


def grayscale(x_bchw: torch.Tensor) -> torch.Tensor:
    """Luma ``[b, 1, H, W]`` (ITU-R 601, as PIL and torchvision)."""
    return (x_bchw * _GREY.to(x_bchw)[None, :, None, None]).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor_b: torch.Tensor) -> torch.Tensor:
    return (other + factor_b[:, None, None, None] * (x - other)).clamp(0, 1)


def _affine(x: torch.Tensor, theta_b23: torch.Tensor) -> torch.Tensor:
    """Resample about the image centre, grey outside."""
    grid = F.affine_grid(theta_b23.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x - 0.5, grid, padding_mode="zeros", align_corners=False) + 0.5


def apply_op(
    name: str, x: torch.Tensor, level: float, sign_b: torch.Tensor, axis_b: torch.Tensor
) -> torch.Tensor:
    """One operation on every image of ``x`` (``sign_b`` +-1, ``axis_b`` 0 = x, 1 = y)."""
    b = x.shape[0]
    s = sign_b.to(x)
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), 1 + 0.9 * level * s)
    if name == "contrast":
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(x, mean.expand_as(x), 1 + 0.9 * level * s)
    if name == "colour":
        return _blend(x, grayscale(x).expand_as(x), 1 + 0.9 * level * s)
    theta = torch.eye(2, 3, device=x.device).repeat(b, 1, 1)
    if name == "rotate":
        a = math.radians(30.0 * level) * s
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
        return _affine(x, theta)
    along_x = (axis_b == 0).to(x.device)
    if name == "shear":
        amount = 0.3 * level * s
        theta[:, 0, 1] = torch.where(along_x, amount, 0.0)
        theta[:, 1, 0] = torch.where(along_x, 0.0, amount)
        return _affine(x, theta)
    if name == "translate":
        shift = 2 * 0.45 * level * s  # normalised coordinates span 2
        theta[:, 0, 2] = torch.where(along_x, shift, 0.0)
        theta[:, 1, 2] = torch.where(along_x, 0.0, shift)
        return _affine(x, theta)
    if name == "posterize":
        step = 2 ** (8 - max(1, 8 - round(4 * level)))
        return torch.floor(x * 255 / step) * step / 255
    if name == "solarize":
        return torch.where(x >= 1.0 - level, 1.0 - x, x)
    raise ValueError(f"unknown RandAugment operation {name!r}; known: {OPS}")


def rand_augment(
    x_bchw: torch.Tensor, g: torch.Generator, num_ops: int, magnitude: float
) -> torch.Tensor:
    """``num_ops`` random operations per image (choices from ``g``, on the CPU)."""
    b = x_bchw.shape[0]
    level = magnitude / 10.0
    for _ in range(num_ops):
        op_b = torch.randint(len(OPS), (b,), generator=g)
        sign_b = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
        axis_b = torch.randint(2, (b,), generator=g)
        out = x_bchw.clone()
        for i, name in enumerate(OPS):
            sel = (op_b == i).nonzero()[:, 0]
            if sel.numel():
                dev = sel.to(x_bchw.device)
                out[dev] = apply_op(name, x_bchw[dev], level, sign_b[sel], axis_b[sel])
        x_bchw = out
    return x_bchw
