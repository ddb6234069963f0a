"""Fourier position features and the position grids of the Perceiver IO input adapters and
decoder queries (video, audio, images, optical flow)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def fourier_channels(num_dims: int, num_bands: int) -> int:
    """Channels of `fourier_features`: the positions, then a sine and a cosine per band."""
    return num_dims * (2 * num_bands + 1)


def fourier_features(pos_nd: Tensor, num_bands: int, max_resolution: Sequence[int]) -> Tensor:
    """Fourier position features ``[pos, sin(pi f pos), cos(pi f pos)]`` (HF channel order).

    Args:
        pos_nd: Positions in [-1, 1], [..., n, d].
        num_bands: Frequencies per dimension, ``linspace(1, resolution / 2, num_bands)``.
        max_resolution: Resolution (the Nyquist rate) of each of the d dimensions.

    Returns:
        Float32 [..., n, d * (2 * num_bands + 1)].
    """
    pos_nd = pos_nd.float()
    freqs_dk = torch.stack(
        [torch.linspace(1.0, r / 2, num_bands, device=pos_nd.device) for r in max_resolution]
    )
    angles_ndk = (math.pi * (pos_nd[..., None] * freqs_dk)).flatten(-2)  # HF's rounding order
    return torch.cat([pos_nd, torch.sin(angles_ndk), torch.cos(angles_ndk)], dim=-1)


def grid_positions(sizes: Sequence[int], device: torch.device | None = None) -> Tensor:
    """Encoder positions: a ``linspace(-1, 1)`` grid over ``sizes``, flattened to [prod, d]."""
    axes = [torch.linspace(-1.0, 1.0, s, device=device) for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


def index_positions(idx_bk: Tensor, sizes: Sequence[int]) -> Tensor:
    """Decoder positions of flat indices into a grid of ``sizes``: ``-1 + 2 * coordinate / size``.

    Returns:
        Float [b, k, len(sizes)].
    """
    coords = []
    for size in reversed(sizes):
        coords.append(idx_bk % size)
        idx_bk = torch.div(idx_bk, size, rounding_mode="floor")
    coord_bkd = torch.stack(coords[::-1], dim=-1).float()
    return -1.0 + 2.0 * coord_bkd / torch.tensor(sizes, device=coord_bkd.device, dtype=torch.float)
