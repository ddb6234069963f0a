"""Perceiver IO optical flow (Jaegle et al., 2021, Sec. 4.2), the same computation as HF
``PerceiverForOpticalFlow``, taking the two frames rather than their patches.

    frames [b, 2, 3, H, W] in [-1, 1]
    3x3 patches of each frame (zero "SAME" padding; channels (ky, kx, c) as TF's extract_patches
    and HF's optical-flow example), both frames per pixel      [b, H*W, 54]  (frame 0, frame 1)
    --patch_projection (Linear 54 -> 64)--> ++ Fourier(y, x) of the H x W grid   x_bmC  C = 322
    latents [n, D] --cross_attention(x)--> --self_attention_layers x blocks-->   z_bnD
    x (the inputs are the decoder queries) --decoder_cross_attention(z)-->       h_bmC
    h --flow_head (Linear C -> 2)--> / flow_scale -->                            flow [b, H, W, 2]

The output is the flow from frame 0 to frame 1 in pixels, channel 0 horizontal (x), 1 vertical
(y): frame0[y, x] ~ frame1[y + flow[..., 1], x + flow[..., 0]]. The patch projection runs as one
3x3 convolution over the 6 stacked channels (the same weights as HF's Linear, reordered), which
never materialises the 54-channel patch array; ``extract_patches`` builds HF's input for tests.
Options that are not HF's (defaults off; ``hf_vision`` refuses them): a larger ``patch_size``,
a local cost volume appended to the patch features (``correlation_radius``), a decoder query
residual (``decoder_query_residual``) and a wider decoder MLP (``decoder_widening_factor``); the
tiny CPU preset uses them to learn in minutes (docs/vision.md §8).
The model runs at its training size only (full-resolution inference tiles it). The paper preset
(``configs/model/perceiver_io_flow.yaml``, 368 x 496, 2048 x 512 latents, 24 self-attention
layers) has the parameter count of HF's ``PerceiverForOpticalFlow``; weights convert both ways
with ``pretrain.models.hf_vision``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.attention import init_standard_weights
from pretrain.models.encoder import LatentEncoder, LatentEncoderConfig
from pretrain.models.flops import linear_params
from pretrain.models.fourier import fourier_channels, fourier_features, grid_positions

PATCH = 3  # side of the patch around every pixel
NUM_FRAMES = 2


def extract_patches(frames_btchw: Tensor, patch_size: int = PATCH) -> Tensor:
    """The ``patch_size`` x ``patch_size`` patch around every pixel of every frame, zero padded
    ("SAME").

    Args:
        frames_btchw: [b, t, c, H, W].
        patch_size: Odd side of the patch (3: HF's).

    Returns:
        [b, t, patch_size^2 * c, H, W] with channels ordered (ky, kx, c), as TF's
        ``extract_patches`` and HF's ``extract_image_patches`` (the input
        ``PerceiverForOpticalFlow`` takes, with 3x3 patches).
    """
    b, t, c, h, w = frames_btchw.shape
    r = patch_size // 2
    x = F.pad(frames_btchw.flatten(0, 1), (r, r, r, r))
    patches = x.unfold(2, patch_size, 1).unfold(3, patch_size, 1)  # [b t, c, H, W, ky, kx]
    patches = patches.permute(0, 4, 5, 1, 2, 3)  # [b t, ky, kx, c, H, W]
    return patches.reshape(b, t, patch_size * patch_size * c, h, w)


def local_cost_volume(frames_b2chw: Tensor, radius: int) -> Tensor:
    """Minus the mean squared difference between frame 0 around each pixel x and frame 1 around
    x + d, for every displacement d = (dx, dy) in [-radius, radius]^2 (dy-major), averaged over
    the channels and a 3x3 box (zero padding outside the frame), then standardised over the
    displacements at each pixel (zero mean, unit standard deviation: the same scale whatever the
    texture's contrast; the best match is the largest).

    Args:
        frames_b2chw: [b, 2, c, H, W].
        radius: The largest displacement per axis, pixels.

    Returns:
        [b, H * W, (2 radius + 1)^2].
    """
    f0, f1 = frames_b2chw[:, 0], frames_b2chw[:, 1]
    h, w = f0.shape[-2:]
    f1 = F.pad(f1, (radius,) * 4)
    costs = []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            moved = f1[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            costs.append((moved - f0).square().mean(1))
    cost_bdhw = F.avg_pool2d(torch.stack(costs, 1), 3, 1, 1, count_include_pad=False)
    mean = cost_bdhw.mean(1, keepdim=True)
    std = cost_bdhw.std(1, keepdim=True)
    return ((mean - cost_bdhw) / (std + 1e-3)).flatten(2).transpose(1, 2)


@dataclass
class PerceiverOpticalFlowConfig(LatentEncoderConfig):
    """Hyperparameters of ``PerceiverOpticalFlow``; the defaults are HF's
    ``deepmind/optical-flow-perceiver`` (the paper's model).

    Attributes:
        image_height: Frame height H the model runs at (HF ``train_size[0]``).
        image_width: Frame width W (HF ``train_size[1]``).
        num_image_channels: Channels per frame (3: RGB).
        num_patch_channels: Output channels of the patch projection (HF: 64).
        num_frequency_bands: Fourier bands per axis.
        flow_scale: The decoder output is divided by it (HF ``rescale_factor``).
        patch_size: Odd side of the patch around each pixel that the projection reads (HF: 3;
            5 sees motions of 2 px).
        decoder_query_residual: Add each pixel's input features to the decoder's attention
            output, so the per-pixel MLP reads the pixel's own patches directly, not only
            through attention weights over the latents (HF: False).
        decoder_widening_factor: Widening of the decoder's per-pixel MLP (HF: 1).
        correlation_radius: r > 0 appends a local cost volume to every pixel's features
            (``local_cost_volume``: for each displacement d in [-r, r]^2, minus the 3x3-box,
            channel mean of (frame1[x + d] - frame0[x])^2, standardised over the
            displacements; (2r + 1)^2 channels, no parameters; what correlation-based flow
            networks match on). 0: none (HF).
    """

    type: ClassVar[str] = "perceiver_io_optical_flow"  # `model.type` in a config file
    num_latents: int = 2048
    num_latent_channels: int = 512
    num_self_attention_heads: int = 16
    num_self_attention_layers_per_block: int = 24
    num_self_attention_blocks: int = 1
    image_height: int = 368
    image_width: int = 496
    num_image_channels: int = 3
    num_patch_channels: int = 64
    num_frequency_bands: int = 64
    flow_scale: float = 100.0
    patch_size: int = PATCH
    decoder_query_residual: bool = False
    decoder_widening_factor: int = 1
    correlation_radius: int = 0

    def __post_init__(self) -> None:
        self.check_latent_fields(
            skip=("flow_scale", "decoder_query_residual", "correlation_radius")
        )
        r = self.correlation_radius
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"correlation_radius must be >= 0, got {self.correlation_radius}")
        if not self.flow_scale > 0:
            raise ValueError(f"flow_scale must be > 0, got {self.flow_scale}")
        if self.patch_size % 2 != 1:
            raise ValueError(
                f"patch_size must be odd (a patch centred on its pixel), got {self.patch_size}"
            )
        if not isinstance(self.decoder_query_residual, bool):
            raise ValueError(
                f"decoder_query_residual must be true or false, got {self.decoder_query_residual!r}"
            )

    @property
    def num_inputs(self) -> int:
        """Input positions M (one per pixel), also the number of decoder queries."""
        return self.image_height * self.image_width

    @property
    def patch_features(self) -> int:
        """Values per pixel before the projection: 2 frames x patch^2 x channels (HF: 54)."""
        return NUM_FRAMES * self.patch_size**2 * self.num_image_channels

    @property
    def correlation_channels(self) -> int:
        """Cost-volume channels per pixel: (2 correlation_radius + 1)^2, or 0 without one."""
        return (2 * self.correlation_radius + 1) ** 2 if self.correlation_radius else 0

    @property
    def input_channels(self) -> int:
        """Channels C of the encoder input and of the decoder queries (HF ``d_model``: 322)."""
        return (
            self.num_patch_channels
            + self.correlation_channels
            + fourier_channels(2, self.num_frequency_bands)
        )

    def num_params(self) -> int:
        """Analytic number of parameters."""
        c = self.input_channels
        return (
            linear_params(self.patch_features, self.num_patch_channels)
            + self.encoder_decoder_params(c, widening=self.decoder_widening_factor)
            + linear_params(c, 2)
        )

    def flops_per_sample(self) -> int:
        """Forward + backward matmul FLOPs of one frame pair (3 x the forward)."""
        m, c = self.num_inputs, self.input_channels
        forward = (
            2 * m * self.patch_features * self.num_patch_channels
            + self.encoder_decoder_flops(m, m, c, widening=self.decoder_widening_factor)
            + 2 * m * c * 2
        )
        return 3 * forward


class PerceiverOpticalFlow(LatentEncoder):
    """Perceiver IO optical flow (see the module docstring for the data flow).

    Args:
        cfg: Hyperparameters. Parameters are allocated but not initialised: call
            ``init_weights()`` (allows construction on the meta device).
    """

    def __init__(self, cfg: PerceiverOpticalFlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.input_channels
        self.patch_projection = nn.Linear(cfg.patch_features, cfg.num_patch_channels)
        self.build_latent_encoder(cfg.encoder_spec())
        self.decoder_cross_attention = cfg.decoder_cross_attention_layer(
            c, cfg.decoder_query_residual, widening=cfg.decoder_widening_factor
        )
        self.flow_head = nn.Linear(c, 2)

    @torch.no_grad()
    def init_weights(self) -> None:
        """HF initialisation: N(0, init_scale) for weights and latents, zero biases."""
        init_standard_weights(self, self.cfg.init_scale)
        self.init_latents(self.cfg.init_scale)

    def project_patches(self, frames_b2chw: Tensor) -> Tensor:
        """``patch_projection`` of every pixel's two patches, as one convolution.

        Returns:
            [b, H * W, num_patch_channels].
        """
        b, t, k, h, w = frames_b2chw.shape
        out, p = self.cfg.num_patch_channels, self.cfg.patch_size
        # Linear input index (t, ky, kx, c) -> conv weight [out, (t, c), ky, kx].
        weight = self.patch_projection.weight.view(out, t, p, p, k)
        weight = weight.permute(0, 1, 4, 2, 3).reshape(out, t * k, p, p)
        x = F.conv2d(
            frames_b2chw.reshape(b, t * k, h, w),
            weight.to(frames_b2chw.dtype),
            self.patch_projection.bias.to(frames_b2chw.dtype),
            padding=p // 2,
        )
        return x.flatten(2).transpose(1, 2)

    def embed_inputs(self, frames_b2chw: Tensor) -> Tensor:
        """The encoder input (and decoder queries) x_bmC: projected patches ++ Fourier(y, x)."""
        cfg = self.cfg
        want = (NUM_FRAMES, cfg.num_image_channels, cfg.image_height, cfg.image_width)
        if frames_b2chw.ndim != 5 or tuple(frames_b2chw.shape[1:]) != want:
            raise ValueError(
                f"frames of shape {tuple(frames_b2chw.shape)}; the model takes [b, "
                f"{', '.join(map(str, want))}] (tile larger frames: pretrain.inference.flow)"
            )
        x_bmc = self.project_patches(frames_b2chw)
        if cfg.correlation_radius:
            x_bmc = torch.cat([x_bmc, local_cost_volume(frames_b2chw, cfg.correlation_radius)], -1)
        pos = grid_positions((cfg.image_height, cfg.image_width), device=x_bmc.device)
        resolution = (cfg.image_height, cfg.image_width)
        pos_mc = fourier_features(pos, cfg.num_frequency_bands, resolution).to(x_bmc.dtype)
        return torch.cat([x_bmc, pos_mc.expand(x_bmc.shape[0], -1, -1)], dim=-1)

    def forward(self, frames_b2chw: Tensor) -> Tensor:
        """Optical flow from frame 0 to frame 1.

        Args:
            frames_b2chw: float [b, 2, 3, image_height, image_width], scaled to [-1, 1]
                (``x / 255 * 2 - 1``).

        Returns:
            Flow [b, image_height, image_width, 2] in pixels (x, y).
        """
        x_bmc = self.embed_inputs(frames_b2chw)
        z_bnd = self.encode_inputs(x_bmc)
        flow_bm2 = self.flow_head(self.decoder_cross_attention(x_bmc, z_bnd)) / self.cfg.flow_scale
        return flow_bm2.view(x_bmc.shape[0], self.cfg.image_height, self.cfg.image_width, 2)
