"""Batched crops by one ``affine_grid`` + ``grid_sample``: each image's box (and flip) becomes one
row of an affine matrix, and sampling never leaves the image's valid (unpadded) region.

Coordinates are pixel indices of the padded batch (pixel ``k`` has its centre at ``k``). Output
pixel ``k`` of an ``S``-pixel side reads input position ``x0 + (k + 0.5) * w / S - 0.5``: the
usual resize of the box ``[x0, x0 + w)`` to ``S`` pixels (``align_corners=False``), so the box
``(0, 0, H, W)`` at output size ``(H, W)`` reproduces the image exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_grid(
    boxes_b4: torch.Tensor,
    flip_b: torch.Tensor | None,
    sizes_b2: torch.Tensor,
    padded_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """The sampling grid ``[b, Ho, Wo, 2]`` (normalised, x first) of each image's box.

    Args:
        boxes_b4: float ``(y0, x0, h, w)`` per image, in pixels of the padded batch.
        flip_b: bool per image: mirror the crop horizontally (None: no flips).
        sizes_b2: each image's valid ``(h, w)``; samples are clamped to it (border pixels are
            repeated rather than the zero padding read).
        padded_hw: ``(Hp, Wp)`` of the padded batch.
        out_hw: ``(Ho, Wo)`` of the crops.
    """
    b = boxes_b4.shape[0]
    hp, wp = padded_hw
    boxes = boxes_b4.float()
    y0, x0, h, w = boxes.unbind(-1)
    sx = w / wp
    if flip_b is not None:
        sx = torch.where(flip_b, -sx, sx)
    theta = torch.zeros(b, 2, 3, device=boxes.device)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * x0 + w) / wp - 1
    theta[:, 1, 1] = h / hp
    theta[:, 1, 2] = (2 * y0 + h) / hp - 1
    grid = F.affine_grid(theta, [b, 1, *out_hw], align_corners=False)
    # valid pixel centres span [0, size - 1]: normalised [1 / P - 1, (2 size - 1) / P - 1]
    sizes = sizes_b2.to(boxes.device).float()
    lo_x, lo_y = 1.0 / wp - 1, 1.0 / hp - 1
    hi_x = ((2 * sizes[:, 1] - 1) / wp - 1)[:, None, None]
    hi_y = ((2 * sizes[:, 0] - 1) / hp - 1)[:, None, None]
    gx = torch.clamp(grid[..., 0], min=torch.full_like(hi_x, lo_x), max=hi_x)
    gy = torch.clamp(grid[..., 1], min=torch.full_like(hi_y, lo_y), max=hi_y)
    return torch.stack([gx, gy], dim=-1)


def sample(x_bchw: torch.Tensor, grid_bhw2: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``grid_sample`` of a float batch (the convention of :func:`crop_grid`)."""
    return F.grid_sample(
        x_bchw, grid_bhw2.to(x_bchw.dtype), mode=mode, padding_mode="border", align_corners=False
    )


def random_resized_boxes(
    sizes_b2: torch.Tensor,
    g: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop boxes ``(y0, x0, h, w)`` [b, 4], batched.

    Per image, the first of ``attempts`` draws (area fraction in ``scale``, log-uniform aspect
    ratio in ``ratio``) that fits inside the image; else the central crop with the aspect ratio
    clamped to ``ratio``. Drawn on the CPU from ``g``.
    """
    sizes = sizes_b2.cpu().float()
    b = sizes.shape[0]
    hh, ww = sizes[:, 0:1], sizes[:, 1:2]
    area = hh * ww * torch.empty(b, attempts).uniform_(scale[0], scale[1], generator=g)
    log_r = torch.empty(b, attempts).uniform_(
        torch.log(torch.tensor(ratio[0])).item(), torch.log(torch.tensor(ratio[1])).item(),
        generator=g,
    )  # fmt: skip
    aspect = log_r.exp()
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    ok = (w > 0) & (h > 0) & (w <= ww) & (h <= hh)
    u = torch.rand(b, attempts, 2, generator=g)
    y0 = torch.floor(u[..., 0] * (hh - h + 1))
    x0 = torch.floor(u[..., 1] * (ww - w + 1))
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
    idx = first.clamp(min=0)[:, None]
    box = torch.stack([t.gather(1, idx)[:, 0] for t in (y0, x0, h, w)], dim=-1)
    # fallback: the central crop with the aspect ratio clamped to `ratio`
    in_ratio = sizes[:, 1] / sizes[:, 0]
    fw = torch.where(in_ratio < ratio[0], sizes[:, 1], torch.where(
        in_ratio > ratio[1], (sizes[:, 0] * ratio[1]).round(), sizes[:, 1]))  # fmt: skip
    fh = torch.where(in_ratio < ratio[0], (sizes[:, 1] / ratio[0]).round(), sizes[:, 0])
    fallback = torch.stack(
        [((sizes[:, 0] - fh) / 2).floor(), ((sizes[:, 1] - fw) / 2).floor(), fh, fw], dim=-1
    )
    return torch.where((first < 0)[:, None], fallback, box)


def centre_boxes(sizes_b2: torch.Tensor, crop_ratio: float) -> torch.Tensor:
    """The centred square of side ``crop_ratio * min(h, w)`` of each image, ``(y0, x0, h, w)``:
    resizing the shorter side to ``S / crop_ratio`` and cutting the central ``S x S``."""
    sizes = sizes_b2.float()
    side = crop_ratio * sizes.min(dim=1).values
    return torch.stack([(sizes[:, 0] - side) / 2, (sizes[:, 1] - side) / 2, side, side], dim=-1)
