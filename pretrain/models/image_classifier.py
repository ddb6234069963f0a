"""Perceiver IO image classifier (Jaegle et al., 2021, Sec. 4.5: ImageNet), the same computation
as HF ``PerceiverForImageClassificationFourier`` / ``Learned`` / ``ConvProcessing``.

    images [b, 3, S, S] (normalised with the ImageNet mean/std, as HF's PerceiverImageProcessor)
    preprocessing "fourier": pixels ++ Fourier(y, x) of the S x S grid          x_bmC  C = 3 + 258
                  "learned": conv1x1 (3 -> 256) ++ Linear(position_embeddings)  x_bmC  C = 512
                  "conv":    conv 7x7/2 + batchnorm + relu + maxpool 3x3/2
                             (HF Conv2DDownsample: 224 -> 55) ++ Fourier(y, x)   x_bmC  C = 64 + 258
    latents [n, D] --cross_attention(x)--> --self_attention_layers x blocks-->   z_bnD
    class_query [1, D] --decoder_cross_attention(z) (query residual)-->         h_b1D
    h --classifier-->                                                           logits_bk

The paper presets (``configs/model/perceiver_io_image_*.yaml``) have HF's parameter counts:
48,440,627 (fourier), 62,255,848 (learned), 48,646,522 (conv). Weights convert both ways with
``pretrain.models.hf_vision``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.attention import init_standard_weights, writable
from pretrain.models.encoder import LatentEncoder, LatentEncoderConfig
from pretrain.models.flops import linear_params
from pretrain.models.fourier import fourier_channels, fourier_features, grid_positions

PREPROCESSINGS = ("fourier", "learned", "conv")
_DEFAULT_PREP_CHANNELS = {"learned": 256, "conv": 64}  # HF's out_channels


def conv_downsample_size(size: int) -> int:
    """Side of HF ``Conv2DDownsample``'s output: 7x7 stride-2 conv with 3 + 3 zero padding, then a
    3x3 stride-2 max pool without padding (224 -> 112 -> 55)."""
    conv = (size + 6 - 7) // 2 + 1
    return (conv - 3) // 2 + 1


@dataclass
class PerceiverImageClassifierConfig(LatentEncoderConfig):
    """Hyperparameters of ``PerceiverImageClassifier``; the latent fields (``LatentEncoderConfig``)
    default to the paper's ImageNet models (512 x 1024 latents, 8 blocks x 6 self-attention
    layers, 1 cross-attention head, 8 self-attention heads).

    Attributes:
        image_size: Side S of the square input images.
        num_image_channels: Input channels (3: RGB).
        preprocessing: ``"fourier"``, ``"learned"`` or ``"conv"`` (see the module docstring).
        num_frequency_bands: Fourier bands per axis (``fourier`` and ``conv``).
        fourier_max_resolution: Resolution of the Fourier frequencies (None: the side of the
            feature grid: S for ``fourier``, S // 4 for ``conv``; HF hard-codes 224 and 56).
        preprocessing_channels: Channels of the conv1x1 and of the position embeddings
            (``learned``, None: 256) or of the 7x7 conv (``conv``, None: 64).
        num_classes: Classes.
    """

    type: ClassVar[str] = "perceiver_io_image_classifier"  # `model.type` in a config file
    image_size: int = 224
    num_image_channels: int = 3
    preprocessing: str = "fourier"
    num_frequency_bands: int = 64
    fourier_max_resolution: int | None = None
    preprocessing_channels: int | None = None
    num_classes: int = 1000

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSINGS:
            raise ValueError(
                f"preprocessing must be one of {PREPROCESSINGS}, got {self.preprocessing!r}"
            )
        self.check_latent_fields(
            skip=("preprocessing",), optional=("fourier_max_resolution", "preprocessing_channels")
        )
        if self.preprocessing == "conv" and self.image_size < 8:
            raise ValueError(
                f"image_size must be >= 8 for conv preprocessing, got {self.image_size}"
            )

    # Derived sizes ----------------------------------------------------------------------------
    @property
    def prep_channels(self) -> int:
        """Channels of the conv1x1 / conv output (0 for ``fourier``, which keeps the pixels)."""
        if self.preprocessing == "fourier":
            return 0
        return self.preprocessing_channels or _DEFAULT_PREP_CHANNELS[self.preprocessing]

    @property
    def grid_size(self) -> int:
        """Side of the grid of input positions (S, or the conv's downsampled side)."""
        if self.preprocessing == "conv":
            return conv_downsample_size(self.image_size)
        return self.image_size

    @property
    def num_inputs(self) -> int:
        """Input positions M the latents attend to."""
        return self.grid_size**2

    @property
    def fourier_resolution(self) -> int:
        """Resolution of the Fourier frequencies (``fourier_max_resolution`` resolved)."""
        default = self.image_size // 4 if self.preprocessing == "conv" else self.image_size
        return self.fourier_max_resolution or default

    @property
    def input_channels(self) -> int:
        """Channels C of the encoder input (HF ``d_model``: 261 / 512 / 322 in the paper)."""
        if self.preprocessing == "learned":
            return 2 * self.prep_channels
        features = (
            self.num_image_channels if self.preprocessing == "fourier" else self.prep_channels
        )
        return features + fourier_channels(2, self.num_frequency_bands)

    def num_params(self) -> int:
        """Analytic number of parameters (batchnorm running statistics are buffers)."""
        c, k, s = self.prep_channels, self.num_image_channels, self.image_size
        prep = {
            "fourier": 0,
            "learned": linear_params(k, c) + s * s * c + linear_params(c, c),
            "conv": k * c * 7 * 7 + 2 * c,
        }[self.preprocessing]
        d = self.num_latent_channels
        return prep + self.encoder_decoder_params(d) + d + linear_params(d, self.num_classes)

    def flops_per_sample(self) -> int:
        """Forward + backward matmul (and convolution) FLOPs of one image (3 x the forward).

        The ``learned`` position projection is counted once per image, as HF computes it; this
        model computes it once per batch, so the figure is an upper bound there.
        """
        c, k, s, d = (
            self.prep_channels,
            self.num_image_channels,
            self.image_size,
            self.num_latent_channels,
        )
        prep = {
            "fourier": 0,
            "learned": 2 * s * s * k * c + 2 * s * s * c * c,
            "conv": 2 * ((s - 1) // 2 + 1) ** 2 * c * k * 7 * 7,
        }[self.preprocessing]
        forward = (
            prep
            + self.encoder_decoder_flops(self.num_inputs, num_queries=1, query_channels=d)
            + 2 * d * self.num_classes
        )
        return 3 * forward


class PerceiverImageClassifier(LatentEncoder):
    """Perceiver IO image classifier (see the module docstring for the data flow).

    Args:
        cfg: Hyperparameters. Parameters are allocated but not initialised: call
            ``init_weights()`` (allows construction on the meta device).
    """

    def __init__(self, cfg: PerceiverImageClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, k, d = cfg.prep_channels, cfg.num_image_channels, cfg.num_latent_channels
        if cfg.preprocessing == "learned":
            self.conv1x1 = nn.Conv2d(k, c, kernel_size=1)
            self.position_embeddings = nn.Parameter(torch.empty(cfg.image_size**2, c))
            self.position_projection = nn.Linear(c, c)
        elif cfg.preprocessing == "conv":
            self.conv = nn.Conv2d(k, c, kernel_size=7, stride=2, padding=3, bias=False)
            self.batchnorm = nn.BatchNorm2d(c)
        self.build_latent_encoder(cfg.encoder_spec())
        self.class_query = nn.Parameter(torch.empty(1, d))
        self.decoder_cross_attention = cfg.decoder_cross_attention_layer(d, query_residual=True)
        self.classifier = nn.Linear(d, cfg.num_classes)

    @torch.no_grad()
    def init_weights(self) -> None:
        """HF initialisation: N(0, init_scale) for weights (convolutions included), latents,
        position embeddings and the class query; zero biases; unit LayerNorm / batchnorm scales."""
        std = self.cfg.init_scale
        init_standard_weights(self, std)
        self.init_latents(std)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                with writable(*module.parameters(recurse=False)):
                    nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                with writable(*module.parameters(recurse=False)):
                    module.reset_parameters()
        learned = [self.class_query]
        if self.cfg.preprocessing == "learned":
            learned.append(self.position_embeddings)
        for p in learned:
            with writable(p):
                nn.init.normal_(p, std=std)

    def _fourier(self, size: int, like: Tensor) -> Tensor:
        """Fourier features of the size x size grid, [size * size, 2 * (2 * bands + 1)]."""
        cfg = self.cfg
        pos = grid_positions((size, size), device=like.device)
        res = cfg.fourier_resolution
        return fourier_features(pos, cfg.num_frequency_bands, (res, res)).to(like.dtype)

    def embed_inputs(self, images_bchw: Tensor) -> Tensor:
        """The encoder input x_bmC of the configured preprocessing (module docstring)."""
        cfg = self.cfg
        b, k, h, w = images_bchw.shape
        if (k, h, w) != (cfg.num_image_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"images of shape {tuple(images_bchw.shape)}; the model takes "
                f"[b, {cfg.num_image_channels}, {cfg.image_size}, {cfg.image_size}]"
            )
        if cfg.preprocessing == "learned":
            x_bmc = self.conv1x1(images_bchw).flatten(2).transpose(1, 2)
            pos_mc = self.position_projection(self.position_embeddings).to(x_bmc.dtype)
        else:
            if cfg.preprocessing == "conv":
                x = F.relu(self.batchnorm(self.conv(images_bchw)))
                x_bmc = F.max_pool2d(x, kernel_size=3, stride=2).flatten(2).transpose(1, 2)
            else:
                x_bmc = images_bchw.flatten(2).transpose(1, 2)
            pos_mc = self._fourier(cfg.grid_size, x_bmc)
        return torch.cat([x_bmc, pos_mc.expand(b, -1, -1)], dim=-1)

    def forward(self, images_bchw: Tensor) -> Tensor:
        """Class logits.

        Args:
            images_bchw: float [b, num_image_channels, image_size, image_size], normalised with
                the ImageNet mean and standard deviation.

        Returns:
            Logits [b, num_classes].
        """
        z_bnd = self.encode_inputs(self.embed_inputs(images_bchw))
        query_b1d = self.class_query.expand(z_bnd.shape[0], -1, -1)
        return self.classifier(self.decoder_cross_attention(query_b1d, z_bnd)[:, 0])
