"""Tiled optical-flow inference (pretrain.inference.flow) and ``perceiver flow``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from pretrain.inference.flow import (
    estimate_flow,
    normalised_weights,
    tile_grid,
    tile_starts,
    tile_weight,
)
from tests.conftest import REPO, SHARED_DATA

FRAMES = SHARED_DATA / "flow_frames"


class PixelwiseFlow(nn.Module):
    """A stand-in flow model whose output at a pixel depends only on that pixel (so every tile
    covering a pixel predicts the same value there)."""

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(image_height=h, image_width=w)
        self.scale = nn.Parameter(torch.tensor([3.0, -2.0]))
        self.calls: list[int] = []

    def forward(self, frames_b2chw: torch.Tensor) -> torch.Tensor:
        self.calls.append(frames_b2chw.shape[0])
        diff = frames_b2chw[:, 1, :2] - frames_b2chw[:, 0, 1:]  # [b, 2, h, w]
        return diff.permute(0, 2, 3, 1) * self.scale


class PositionalFlow(PixelwiseFlow):
    """Output depends on the position inside the tile: tiles disagree unless there is one."""

    def forward(self, frames_b2chw: torch.Tensor) -> torch.Tensor:
        out = super().forward(frames_b2chw)
        h, w = out.shape[1:3]
        ramp = torch.linspace(0, 1, h * w).reshape(1, h, w, 1)
        return out + ramp


def _frames(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2))


def test_tile_starts_cover_with_the_minimum_overlap():
    assert tile_starts(32, 32, 20) == [0]
    for length, tile, overlap in [(100, 32, 20), (436, 368, 20), (1024, 496, 20), (47, 16, 5)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        gaps = np.diff(starts)
        assert (tile - gaps >= overlap).all(), (length, starts)
    assert tile_starts(1024, 496, 20) == [0, 264, 528]  # 3 tiles, as HF's example at Sintel size
    with pytest.raises(ValueError, match="smaller than the tile"):
        tile_starts(30, 32, 20)


def test_tile_weight_favours_the_centre_and_is_positive():
    w = tile_weight(5, 7)
    assert w.min() == 1 and w[2, 3] == w.max() == 3
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))


def test_at_the_training_size_tiling_is_one_forward_pass():
    model = PositionalFlow(16, 24)
    f1, f2 = _frames(16, 24)
    got = estimate_flow(model, f1, f2)
    pair = torch.stack([torch.from_numpy(f) for f in (f1, f2)]).permute(0, 3, 1, 2)
    want = model(pair[None].float() / 255 * 2 - 1)[0].detach().numpy()
    assert model.calls == [1, 1]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_larger_frames_every_pixel_covered_and_weights_sum_to_one():
    h, w, tile = 61, 90, (16, 24)
    shares = normalised_weights(h, w, tile, min_overlap=5)
    torch.testing.assert_close(shares.sum(0), torch.ones(h, w))
    assert (shares > 0).any(0).all()  # every pixel covered
    model = PixelwiseFlow(*tile)
    f1, f2 = _frames(h, w, seed=1)
    got = estimate_flow(model, f1, f2, min_overlap=5, batch_size=4)
    full = torch.stack([torch.from_numpy(f) for f in (f1, f2)]).permute(0, 3, 1, 2)
    model.cfg = SimpleNamespace(image_height=h, image_width=w)  # the whole frame at once
    want = model(full[None].float() / 255 * 2 - 1)[0].detach().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    n = len(tile_grid(h, w, tile, 5))
    assert sum(model.calls[:-1]) == n and max(model.calls[:-1]) == 4  # batched tiles
    with pytest.raises(ValueError, match="training size"):
        estimate_flow(PixelwiseFlow(64, 64), f1, f2)


def _tiny_flow_export(tmp_path):
    from pretrain.config import load_config
    from pretrain.export import Pretrained, write_native
    from pretrain.models import build_model

    # a larger training size than the preset's: 20 tiles of the 1024 x 436 frames, not 1260
    size = ["model.image_height=128", "model.image_width=256"]
    cfg = load_config(REPO / "configs" / "tiny_flow.yaml", ["data.dir=x", *size]).model
    model = build_model(cfg.type, cfg)
    model.init_weights()
    fields = {k: v for k, v in cfg.__dict__.items() if k != "type"}
    pretrained = Pretrained(cfg.type, fields, model.state_dict(), {}, {"kind": "test"})
    return write_native(pretrained, tmp_path / "export")


@pytest.mark.slow
def test_cli_writes_png_and_flo_on_real_frames(tmp_path, capsys):
    if not (FRAMES / "frame_0016.png").is_file():
        pytest.skip(f"{FRAMES}: the Sintel demo frames are absent (see shared/data/SOURCES.md)")
    from PIL import Image

    from data_pipeline.flow.formats import read_flo

    export = _tiny_flow_export(tmp_path)
    out, flo = tmp_path / "flow.png", tmp_path / "flow.flo"
    import perceiver_cli

    rc = perceiver_cli.main(
        [
            "flow", str(FRAMES / "frame_0016.png"), str(FRAMES / "frame_0017.png"),
            "--checkpoint", str(export), "--output", str(out), "--flo", str(flo),
            "--batch-size", "4",
        ]
    )  # fmt: skip
    assert rc == 0
    png = Image.open(out)
    assert png.size == (1024, 436) and png.mode == "RGB"
    flow = read_flo(flo)
    assert flow.shape == (436, 1024, 2) and np.isfinite(flow).all()
    assert "flow 436 x 1024" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # --checkpoint is required
        perceiver_cli.main(["flow", "a.png", "b.png", "--output", "x.png"])


def test_load_flow_model_refuses_another_model_type(tmp_path):
    from pretrain.config import load_config
    from pretrain.export import Pretrained, write_native
    from pretrain.inference.flow import load_flow_model
    from pretrain.models import build_model

    cfg = load_config(REPO / "configs" / "tiny_image.yaml", ["data.dir=x"]).model
    model = build_model(cfg.type, cfg)
    fields = {k: v for k, v in cfg.__dict__.items() if k != "type"}
    write_native(Pretrained(cfg.type, fields, model.state_dict(), {}, {}), tmp_path / "img")
    with pytest.raises(ValueError, match="perceiver_io_image_classifier, not a perceiver_io_op"):
        load_flow_model(tmp_path / "img")
