"""Optical flow at any resolution from a model that runs only at its training size.

    from pretrain.inference.flow import load_flow_model, estimate_flow
    model = load_flow_model("runs/flow")                  # run dir, checkpoint or export
    flow_hw2 = estimate_flow(model, frame1_hw3, frame2_hw3)  # uint8 frames -> float32 flow

The frames are cut into overlapping tiles of the training size ``(h, w)``, as in the paper and
HF's Perceiver optical-flow example: along each axis the fewest tiles whose neighbours overlap by
at least ``min_overlap`` pixels (20), evenly spaced from edge to edge. Every tile's flow is
weighted per pixel by its distance to the tile's border (``min(y + 1, h - y, x + 1, w - x)``:
largest in the centre, never zero), and each output pixel is the weighted average of the tiles
covering it. At exactly the training size this is one forward pass. Tiles go through the model
``batch_size`` at a time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODEL_TYPE = "perceiver_io_optical_flow"


def tile_starts(length: int, tile: int, min_overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length``, neighbours overlapping by
    at least ``min_overlap`` (the first tile at 0, the last ending at ``length``)."""
    if length < tile:
        raise ValueError(f"the frames ({length} pixels) are smaller than the tile ({tile})")
    if not 0 <= min_overlap < tile:
        raise ValueError(f"min_overlap must be in [0, {tile}), got {min_overlap}")
    if length == tile:
        return [0]
    n = math.ceil((length - tile) / (tile - min_overlap)) + 1
    # floor of evenly spaced starts: steps are at most ceil((L - T) / (n - 1)) <= T - overlap
    return [math.floor(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_weight(h: int, w: int) -> torch.Tensor:
    """``[h, w]`` weights favouring the tile centre: the distance to the nearest border + 1."""
    y = torch.arange(h, dtype=torch.float32)
    x = torch.arange(w, dtype=torch.float32)
    wy = torch.minimum(y + 1, h - y)
    wx = torch.minimum(x + 1, w - x)
    return torch.minimum(wy[:, None], wx[None, :])


def tile_grid(
    height: int, width: int, tile_hw: tuple[int, int], min_overlap: int = 20
) -> list[tuple[int, int]]:
    """``(y0, x0)`` of every tile of a ``height x width`` frame."""
    th, tw = tile_hw
    ys = tile_starts(height, th, min(min_overlap, th - 1))
    xs = tile_starts(width, tw, min(min_overlap, tw - 1))
    return [(y, x) for y in ys for x in xs]


def normalised_weights(
    height: int, width: int, tile_hw: tuple[int, int], min_overlap: int = 20
) -> torch.Tensor:
    """``[n_tiles, height, width]``: each tile's share of every pixel (zero outside it); the
    shares of a pixel sum to one."""
    th, tw = tile_hw
    tiles = tile_grid(height, width, tile_hw, min_overlap)
    out = torch.zeros(len(tiles), height, width)
    w = tile_weight(th, tw)
    for i, (y, x) in enumerate(tiles):
        out[i, y : y + th, x : x + tw] = w
    return out / out.sum(0, keepdim=True)


@torch.no_grad()
def estimate_flow(
    model: nn.Module,
    frame1_hw3: np.ndarray | torch.Tensor,
    frame2_hw3: np.ndarray | torch.Tensor,
    min_overlap: int = 20,
    batch_size: int = 8,
) -> np.ndarray:
    """Flow float32 ``[H, W, 2]`` (x, y) from frame 1 to frame 2 (uint8 RGB ``[H, W, 3]``).

    Raises:
        ValueError: the frames differ in size or are smaller than the model's training size.
    """
    cfg = model.cfg
    th, tw = cfg.image_height, cfg.image_width
    f1, f2 = (torch.as_tensor(np.asarray(f)) for f in (frame1_hw3, frame2_hw3))
    if f1.shape != f2.shape or f1.dim() != 3 or f1.shape[-1] != 3:
        raise ValueError(
            f"frames must be two RGB images of one size, got {tuple(f1.shape)} and "
            f"{tuple(f2.shape)}"
        )
    height, width = f1.shape[:2]
    if height < th or width < tw:
        raise ValueError(
            f"the frames are {height} x {width}; the model needs at least its training size "
            f"{th} x {tw} (image_height x image_width)"
        )
    device = next(model.parameters()).device
    pair = torch.stack([f1, f2]).permute(0, 3, 1, 2).float().div(255).mul(2).sub(1)  # [2,3,H,W]
    pair = pair.to(device)
    weight = tile_weight(th, tw).to(device)[..., None]
    flow_sum = torch.zeros(height, width, 2, device=device)
    weight_sum = torch.zeros(height, width, 1, device=device)
    tiles = tile_grid(height, width, (th, tw), min_overlap)
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i : i + batch_size]
        batch = torch.stack([pair[:, :, y : y + th, x : x + tw] for y, x in chunk])
        out = model(batch).float()  # [n, th, tw, 2]
        for (y, x), tile_flow in zip(chunk, out):
            flow_sum[y : y + th, x : x + tw] += weight * tile_flow
            weight_sum[y : y + th, x : x + tw] += weight
    return (flow_sum / weight_sum).cpu().numpy().astype(np.float32)


def load_flow_model(
    path: str | Path, step: int | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The flow model of a run directory (newest or ``step``), checkpoint or export, in eval mode.

    Raises:
        ValueError: ``path`` holds another model type.
    """
    from pretrain.export import load_pretrained
    from pretrain.inference.api import resolve_step
    from pretrain.models import build_model

    source = resolve_step(path, step) if step is not None else path
    pretrained = load_pretrained(source)
    if pretrained.model_type != MODEL_TYPE:
        raise ValueError(f"{path}: holds a {pretrained.model_type}, not a {MODEL_TYPE} model")
    model = build_model(pretrained.model_type, pretrained.model)
    model.load_state_dict(pretrained.state_dict)
    return model.to(device).eval()


def write_flow_outputs(
    flow_hw2: np.ndarray, output: str | Path, flo: str | Path | None = None
) -> list[Path]:
    """The colour-coded flow as a PNG at ``output`` (and the ``.flo`` at ``flo``)."""
    from PIL import Image

    from data_pipeline.flow.formats import flow_to_color, write_flo

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(flow_to_color(flow_hw2)).save(output, format="PNG")
    written = [output]
    if flo is not None:
        Path(flo).parent.mkdir(parents=True, exist_ok=True)
        written.append(Path(write_flo(flo, flow_hw2)))
    return written
