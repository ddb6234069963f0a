"""Optical-flow augmentation on the training device, from the loader's padded batch.

The loader (kind "flow") yields ``frames`` uint8 ``[b, 2, 3, Hmax, Wmax]``, ``flow`` float
``[b, Hmax, Wmax, 2]`` (x, y: frame0[y, x] ~ frame1[y + flow_y, x + flow_x]), ``valid`` bool
``[b, Hmax, Wmax]`` and ``sizes`` ``[b, 2]``. Training, per pair:

1. a random scale ``s = 2 ** U(min_log2_scale, max_log2_scale)``, raised where needed so that
   the scaled pair still covers the model's ``(H, W)``;
2. a random ``H x W`` window of the scaled pair, inside the valid region, resampled from the
   original with one ``grid_sample`` (both frames, the flow and its validity use the same grid);
   the flow vectors are multiplied by ``s``; a pixel stays valid only where every pixel it
   interpolates from is valid;
3. with probability 1/2 (``hflip``) a horizontal mirror, negating the flow's x;
4. photometric jitter: brightness, contrast and saturation factors in ``1 +- amount``, the same
   for both frames, or per frame with probability ``jitter_per_frame_prob``;
5. frames scaled to ``[-1, 1]`` (``x / 255 * 2 - 1``), what the model reads.

Evaluation takes the centred ``H x W`` window of the valid region at scale 1. All draws come from
the caller's generator on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pretrain.objectives.augment.geometry import crop_grid, sample
from pretrain.objectives.augment.randaugment import grayscale


@dataclass
class FlowAugment:
    """The flow augmentation settings (``pretrain.config.objectives.OpticalFlowObjectiveConfig``
    holds the same fields)."""

    min_log2_scale: float = -0.2
    max_log2_scale: float = 0.6
    hflip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    jitter_per_frame_prob: float = 0.2


def _windows(
    sizes_b2: torch.Tensor, out_hw: tuple[int, int], scale_b: torch.Tensor, u_b2: torch.Tensor
) -> torch.Tensor:
    """Boxes ``(y0, x0, h, w)`` in original pixels: the window of ``out_hw`` at offset
    ``u * (scaled size - out)`` of each pair scaled by ``scale_b``."""
    sizes = sizes_b2.float()
    th, tw = out_hw
    off_y = u_b2[:, 0] * (sizes[:, 0] * scale_b - th)
    off_x = u_b2[:, 1] * (sizes[:, 1] * scale_b - tw)
    return torch.stack([off_y / scale_b, off_x / scale_b, th / scale_b, tw / scale_b], dim=-1)


def crop_flow_batch(
    raw: dict[str, torch.Tensor],
    boxes_b4: torch.Tensor,
    scale_b: torch.Tensor,
    flip_b: torch.Tensor | None,
    out_hw: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Frames (float ``[0, 255]``), flow and validity of each box resized to ``out_hw``."""
    frames = raw["frames"]
    b, _, c, hp, wp = frames.shape
    device = frames.device
    flip = None if flip_b is None else flip_b.to(device)
    grid = crop_grid(boxes_b4.to(device), flip, raw["sizes"], (hp, wp), out_hw)
    pair = sample(frames.reshape(b, 2 * c, hp, wp).float(), grid).reshape(b, 2, c, *out_hw)
    flow = sample(raw["flow"].permute(0, 3, 1, 2).float(), grid).permute(0, 2, 3, 1)
    flow = flow * scale_b.to(device)[:, None, None, None]
    if flip is not None:
        flow[..., 0] = torch.where(flip[:, None, None], -flow[..., 0], flow[..., 0])
    valid = sample(raw["valid"][:, None].float(), grid)[:, 0] > 0.999
    return {"frames": pair, "flow": flow, "valid": valid}


def _jitter(x_bchw: torch.Tensor, factors_b3: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation (torchvision's blends) on ``[0, 1]`` images."""
    f = factors_b3.to(x_bchw)[:, :, None, None, None]
    x = (x_bchw * f[:, 0]).clamp(0, 1)
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + f[:, 1] * (x - mean)).clamp(0, 1)
    grey = grayscale(x)
    return (grey + f[:, 2] * (x - grey)).clamp(0, 1)


def to_model_range(frames_0_255: torch.Tensor) -> torch.Tensor:
    """Pixels in ``[0, 255]`` -> ``[-1, 1]`` (``x / 255 * 2 - 1``)."""
    return frames_0_255 / 255.0 * 2.0 - 1.0


def augment_flow_train(
    raw: dict[str, torch.Tensor], g: torch.Generator, out_hw: tuple[int, int], aug: FlowAugment
) -> dict[str, torch.Tensor]:
    """The training pairs: ``frames`` float ``[b, 2, 3, H, W]`` in ``[-1, 1]``, ``flow``
    ``[b, H, W, 2]``, ``valid`` bool ``[b, H, W]`` (see the module docstring)."""
    sizes = raw["sizes"].cpu().float()
    b = sizes.shape[0]
    log2 = torch.empty(b).uniform_(aug.min_log2_scale, aug.max_log2_scale, generator=g)
    need = torch.maximum(out_hw[0] / sizes[:, 0], out_hw[1] / sizes[:, 1])
    scale = torch.maximum(2.0**log2, need)
    boxes = _windows(sizes, out_hw, scale, torch.rand(b, 2, generator=g))
    flip = torch.rand(b, generator=g) < 0.5
    out = crop_flow_batch(raw, boxes, scale, flip if aug.hflip else None, out_hw)
    amounts = torch.tensor([aug.brightness, aug.contrast, aug.saturation])
    factors = 1 + (torch.rand(b, 2, 3, generator=g) * 2 - 1) * amounts  # per pair, per frame
    same = torch.rand(b, generator=g) >= aug.jitter_per_frame_prob
    factors[:, 1] = torch.where(same[:, None], factors[:, 0], factors[:, 1])
    frames = out["frames"] / 255.0
    frames = torch.stack([_jitter(frames[:, i], factors[:, i]) for i in range(2)], dim=1)
    out["frames"] = frames * 2.0 - 1.0
    return out


def flow_eval_batch(raw: dict[str, torch.Tensor], out_hw: tuple[int, int]) -> dict:
    """The centred ``out_hw`` window of each pair at scale 1, frames in ``[-1, 1]``."""
    sizes = raw["sizes"].cpu().float()
    ones = torch.ones(sizes.shape[0])
    boxes = _windows(sizes, out_hw, ones, torch.full((sizes.shape[0], 2), 0.5))
    boxes[:, :2] = boxes[:, :2].floor()  # whole pixels: no resampling at scale 1
    out = crop_flow_batch(raw, boxes, ones, None, out_hw)
    out["frames"] = to_model_range(out["frames"])
    return out
