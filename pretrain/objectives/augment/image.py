"""Image classification augmentation on the training device, from the loader's padded uint8 batch.

The loader (kind "image") yields ``images`` uint8 ``[b, 3, Hmax, Wmax]`` (each image top-left,
zero padded) and ``sizes`` ``[b, 2]``; these functions go straight to the model's float
``[b, 3, S, S]`` normalised with the ImageNet mean and std (as HF's PerceiverImageProcessor):

* training: random resized crop (torchvision's, scale (0.08, 1), ratio (3/4, 4/3)) and horizontal
  flip in one batched ``grid_sample``; optionally RandAugment; then MixUp / CutMix (timm's batch
  mode: one mixing coefficient per batch, each image mixed with the batch reversed).
* evaluation: the centre crop of ratio 0.875 (shorter side resized to ``S / 0.875``).

Every draw comes from the caller's ``torch.Generator`` on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pretrain.objectives.augment.geometry import (
    centre_boxes,
    crop_grid,
    random_resized_boxes,
    sample,
)
from pretrain.objectives.augment.randaugment import rand_augment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x01_bchw: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` pixels -> ``(x - mean) / std`` with the ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN, device=x01_bchw.device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=x01_bchw.device)[None, :, None, None]
    return (x01_bchw - mean) / std


def crop_resize(
    images_u8: torch.Tensor,
    sizes_b2: torch.Tensor,
    boxes_b4: torch.Tensor,
    out_size: int,
    flip_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """The boxes of the padded batch resized to ``out_size`` (bilinear), float in ``[0, 1]``."""
    device = images_u8.device
    grid = crop_grid(
        boxes_b4.to(device),
        None if flip_b is None else flip_b.to(device),
        sizes_b2,
        tuple(images_u8.shape[-2:]),
        (out_size, out_size),
    )
    return sample(images_u8.float() / 255.0, grid).clamp(0, 1)


def train_crops(
    images_u8: torch.Tensor,
    sizes_b2: torch.Tensor,
    g: torch.Generator,
    out_size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
) -> torch.Tensor:
    """Random resized crops (and flips with probability 1/2), ``[b, 3, S, S]`` in ``[0, 1]``."""
    boxes = random_resized_boxes(sizes_b2, g, scale, ratio)
    flip = torch.rand(boxes.shape[0], generator=g) < 0.5 if hflip else None
    return crop_resize(images_u8, sizes_b2, boxes, out_size, flip)


def eval_crops(
    images_u8: torch.Tensor, sizes_b2: torch.Tensor, out_size: int, crop_ratio: float = 0.875
) -> torch.Tensor:
    """Centre crops, ``[b, 3, S, S]`` in ``[0, 1]``."""
    return crop_resize(images_u8, sizes_b2, centre_boxes(sizes_b2.cpu(), crop_ratio), out_size)


@dataclass
class Mixed:
    """A mixed batch: each image is ``lam`` of itself and ``1 - lam`` of ``images[perm]``; its
    soft target is ``lam * onehot(labels) + (1 - lam) * onehot(labels[perm])``."""

    images: torch.Tensor
    labels_b: torch.Tensor  # the partner's labels, labels[perm]
    lam_b: torch.Tensor  # float [b]


def mix_batch(
    x_bchw: torch.Tensor,
    labels_b: torch.Tensor,
    g: torch.Generator,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    prob: float = 1.0,
) -> Mixed:
    """MixUp or CutMix of the whole batch with its reverse (timm's ``Mixup``, mode "batch").

    With probability ``prob`` the batch is mixed; with both alphas > 0, CutMix is chosen with
    probability ``switch_prob``. MixUp: ``lam ~ Beta(a, a)``, pixels blended. CutMix: a box of
    area ``1 - lam`` (centre uniform, clipped to the image) pasted from the partner, and ``lam``
    corrected to the pasted area.
    """
    b = x_bchw.shape[0]
    perm = torch.arange(b - 1, -1, -1, device=labels_b.device)
    ones = torch.ones(b, device=x_bchw.device)
    # one draw each, in a fixed order, whatever is used: the stream does not depend on settings
    u_apply, u_switch = torch.rand(2, generator=g).tolist()
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))
    use_cut = cutmix_alpha > 0 and (mixup_alpha <= 0 or u_switch < switch_prob)
    alpha = cutmix_alpha if use_cut else mixup_alpha
    if alpha <= 0 or u_apply >= prob or b < 2:
        return Mixed(x_bchw, labels_b, ones)
    lam = float(rng.beta(alpha, alpha))
    if not use_cut:
        return Mixed(lam * x_bchw + (1 - lam) * x_bchw[perm], labels_b[perm], ones * lam)
    h, w = x_bchw.shape[-2:]
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
    out = x_bchw.clone()
    out[:, :, y0:y1, x0:x1] = x_bchw[perm][:, :, y0:y1, x0:x1]
    lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (h * w)
    return Mixed(out, labels_b[perm], ones * lam)


def augment_train(
    images_u8: torch.Tensor,
    sizes_b2: torch.Tensor,
    g: torch.Generator,
    out_size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    randaugment_ops: int = 0,
    randaugment_magnitude: float = 0.0,
) -> torch.Tensor:
    """Crop, flip and (``randaugment_ops`` > 0) RandAugment, normalised: ``[b, 3, S, S]``."""
    x = train_crops(images_u8, sizes_b2, g, out_size, scale, ratio, hflip)
    if randaugment_ops > 0:
        x = rand_augment(x, g, randaugment_ops, randaugment_magnitude)
    return normalize(x)
