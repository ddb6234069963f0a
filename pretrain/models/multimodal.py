"""Perceiver IO multimodal autoencoder (Jaegle et al., 2021, Sec. 4.3: Kinetics-700 video + audio
+ label), the same computation as HF `transformers.PerceiverForMultimodalAutoencoding`.

    frames [b, T, H, W, 3] -> 1x4x4 space-time patches ++ Fourier(t, y, x)    [b, T*H/4*W/4, c_v]
    audio  [b, N]          -> patches of 16 samples    ++ Fourier(n)          [b, N/16, c_a]
    label  [b]             -> one-hot, or the learned mask token if masked    [b, 1, c_l]
    each padded with a learned per-modality vector to C = max(c_*) + input_padding,
    concatenated (audio, video, label)                                      -> x_bmC
    latents [n, D] --cross_attention(x)--> --self_attention_layers-->         z_bnD
    queries: Fourier(pixel t, y, x) | Fourier(audio patch) | a learned label query, padded with
    learned per-modality vectors to Q = max(q_*) + query_padding             -> q_bkQ
    q --decoder_cross_attention(z)--> decoder_output (Q -> out) --> video_head (RGB),
    audio_head (16 samples per query), label_head (class logits)

Decoder queries are independent of each other, so training decodes a random subset of pixels and
audio patches (`video_query_idx`, `audio_query_idx`) and evaluation reconstructs everything in
chunks of `decode_chunk_size` queries (bounded memory). Decoder query positions follow the
paper's subsampled decoding, ``-1 + 2 * index / size`` per axis; encoder positions are
``linspace(-1, 1)`` grids (as HF and the original code do both). The defaults are the paper's
20.0M-parameter model (784 x 512 latents, 8 self-attention layers); HF additionally holds two
unused mask tokens (audio, image) that this model leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.attention import init_standard_weights, writable
from pretrain.models.encoder import LatentEncoder, LatentEncoderConfig
from pretrain.models.flops import linear_params
from pretrain.models.fourier import (  # noqa: F401  (fourier_channels: part of this API)
    fourier_channels,
    fourier_features,
    grid_positions,
    index_positions,
)

MODALITIES = ("audio", "video", "label")  # input and query order (HF sorts its names likewise)


@dataclass
class PerceiverMultimodalConfig(LatentEncoderConfig):
    """Hyperparameters of `PerceiverMultimodal`; defaults are the paper's Kinetics-700 model.

    The latent-encoder and decoder-attention fields (``num_latents`` ... ``decoder_v_channels``,
    ``dropout``, ``init_scale``) are ``LatentEncoderConfig``'s; this class redeclares the ones
    whose paper defaults differ (784 x 512 latents, 8 self-attention layers in 1 block, no
    dropout).

    Attributes:
        num_frames: Frames per clip (T).
        frame_height: Frame height (H).
        frame_width: Frame width (W).
        temporal_patch_size: Frames per video patch.
        spatial_patch_size: Pixels per side of a video patch.
        audio_samples_per_frame: Audio samples per video frame (48 kHz / 25 fps = 1920).
        audio_samples_per_patch: Audio samples per audio patch and per audio query.
        num_classes: Label classes (one-hot input, logits output).
        video_fourier_bands: Fourier bands per axis of the video positions.
        audio_fourier_bands: Fourier bands of the audio positions.
        input_padding: Learned channels added at least to every input modality.
        query_padding: Learned channels added at least to every modality's decoder queries.
        label_query_channels: Channels of the learned label query.
        decoder_output_channels: Channels after the decoder's output projection (HF
            `output_num_channels`), shared by the three heads.
        decode_chunk_size: Queries per decoder call when reconstructing whole clips.
    """

    type: ClassVar[str] = "perceiver_io_multimodal"  # `model.type` in a config file
    num_latents: int = 784
    num_latent_channels: int = 512
    num_self_attention_layers_per_block: int = 8
    num_self_attention_blocks: int = 1
    dropout: float = 0.0
    num_frames: int = 16
    frame_height: int = 224
    frame_width: int = 224
    temporal_patch_size: int = 1
    spatial_patch_size: int = 4
    audio_samples_per_frame: int = 1920
    audio_samples_per_patch: int = 16
    num_classes: int = 700
    video_fourier_bands: int = 32
    audio_fourier_bands: int = 192
    input_padding: int = 4
    query_padding: int = 2
    label_query_channels: int = 1024
    decoder_output_channels: int = 512
    decode_chunk_size: int = 16384

    def __post_init__(self) -> None:
        self.check_latent_fields()
        for name, size, patch in (
            ("num_frames", self.num_frames, self.temporal_patch_size),
            ("frame_height", self.frame_height, self.spatial_patch_size),
            ("frame_width", self.frame_width, self.spatial_patch_size),
            ("audio_samples_per_frame", self.num_audio_samples, self.audio_samples_per_patch),
        ):
            if size % patch:
                raise ValueError(f"{name} ({size}) must be divisible by its patch size {patch}")

    # Derived sizes ----------------------------------------------------------------------------
    @property
    def num_audio_samples(self) -> int:
        return self.num_frames * self.audio_samples_per_frame

    @property
    def num_pixels(self) -> int:
        return self.num_frames * self.frame_height * self.frame_width

    @property
    def video_patch_grid(self) -> tuple[int, int, int]:
        t, s = self.temporal_patch_size, self.spatial_patch_size
        return (self.num_frames // t, self.frame_height // s, self.frame_width // s)

    @property
    def num_video_patches(self) -> int:
        return math.prod(self.video_patch_grid)

    @property
    def num_audio_patches(self) -> int:
        return self.num_audio_samples // self.audio_samples_per_patch

    @property
    def num_inputs(self) -> int:
        """Input positions the latents attend to (M)."""
        return self.num_video_patches + self.num_audio_patches + 1

    @property
    def modality_input_channels(self) -> dict[str, int]:
        patch = 3 * self.temporal_patch_size * self.spatial_patch_size**2
        return {
            "audio": self.audio_samples_per_patch + fourier_channels(1, self.audio_fourier_bands),
            "video": patch + fourier_channels(3, self.video_fourier_bands),
            "label": self.num_classes,
        }

    @property
    def input_channels(self) -> int:
        return max(self.modality_input_channels.values()) + self.input_padding

    @property
    def modality_query_channels(self) -> dict[str, int]:
        return {
            "audio": fourier_channels(1, self.audio_fourier_bands),
            "video": fourier_channels(3, self.video_fourier_bands),
            "label": self.label_query_channels,
        }

    @property
    def query_channels(self) -> int:
        return max(self.modality_query_channels.values()) + self.query_padding

    def num_params(self) -> int:
        """Analytic number of parameters."""
        out, c, q = self.decoder_output_channels, self.input_channels, self.query_channels
        learned = (
            sum(c - n for n in self.modality_input_channels.values())
            + c  # label mask token
            + sum(q - n for n in self.modality_query_channels.values())
            + self.label_query_channels
        )
        heads = (
            linear_params(q, out)
            + linear_params(out, 3)
            + linear_params(out, self.audio_samples_per_patch)
            + linear_params(out, self.num_classes)
        )
        return learned + self.encoder_decoder_params(q) + heads

    def flops_per_sample(
        self, num_video_queries: int | None = None, num_audio_queries: int | None = None
    ) -> int:
        """Forward + backward matmul FLOPs of one clip (3 x the forward).

        Args:
            num_video_queries: Decoded pixels (default: all; training decodes the objective's
                `train_video_queries`).
            num_audio_queries: Decoded audio patches (default: all).
        """
        kv = self.num_pixels if num_video_queries is None else num_video_queries
        ka = self.num_audio_patches if num_audio_queries is None else num_audio_queries
        k, out = kv + ka + 1, self.decoder_output_channels
        forward = (
            self.encoder_decoder_flops(self.num_inputs, k, self.query_channels)
            + 2 * k * self.query_channels * out
            + 2 * out * (3 * kv + self.audio_samples_per_patch * ka + self.num_classes)
        )
        return 3 * forward


class PerceiverMultimodal(LatentEncoder):
    """The Perceiver IO multimodal autoencoder (see the module docstring for the data flow).

    Args:
        cfg: Hyperparameters. Parameters are allocated but not initialised: call
            `init_weights()` (allows construction on the meta device).
    """

    def __init__(self, cfg: PerceiverMultimodalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, q = cfg.input_channels, cfg.query_channels
        # The input adapter, then the encoder (the parameter order of earlier checkpoints:
        # latents, label_mask_token, ..., input_padding.*, cross_attention.*, ...).
        self.input_padding = nn.ParameterDict(
            {m: torch.empty(1, c - n) for m, n in cfg.modality_input_channels.items()}
        )
        self.build_latent_encoder(cfg.encoder_spec())
        self.label_mask_token = nn.Parameter(torch.empty(1, c))
        self.query_padding = nn.ParameterDict(
            {m: torch.empty(1, q - n) for m, n in cfg.modality_query_channels.items()}
        )
        self.label_query = nn.Parameter(torch.empty(1, cfg.label_query_channels))
        self.decoder_cross_attention = cfg.decoder_cross_attention_layer(q, query_residual=False)
        out = cfg.decoder_output_channels
        self.decoder_output = nn.Linear(q, out)
        self.video_head = nn.Linear(out, 3)
        self.audio_head = nn.Linear(out, cfg.audio_samples_per_patch)
        self.label_head = nn.Linear(out, cfg.num_classes)

    @torch.no_grad()
    def init_weights(self) -> None:
        """HF initialisation: N(0, init_scale) weights and learned vectors, zero biases."""
        std = self.cfg.init_scale
        init_standard_weights(self, std)
        vectors = [self.latents, self.label_mask_token, self.label_query]  # this draw order
        for p in [*vectors, *self.input_padding.values(), *self.query_padding.values()]:
            with writable(p):
                nn.init.normal_(p, std=std)

    def _pad(self, x_bnc: Tensor, padding: Tensor) -> Tensor:
        b, n, _ = x_bnc.shape
        return torch.cat([x_bnc, padding.to(x_bnc.dtype).expand(b, n, -1)], dim=-1)

    def embed_inputs(self, frames: Tensor, audio: Tensor, label: Tensor, label_mask: Tensor | None):
        """Encoder inputs x_bmC (audio, video, label), each padded to the common channels."""
        cfg, b = self.cfg, frames.shape[0]
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        t, h, w = cfg.video_patch_grid
        pt, ps = cfg.temporal_patch_size, cfg.spatial_patch_size
        expected = (b, cfg.num_frames, cfg.frame_height, cfg.frame_width, 3)
        if tuple(frames.shape) != expected or tuple(audio.shape) != (b, cfg.num_audio_samples):
            raise ValueError(
                f"expected frames {expected} and audio {(b, cfg.num_audio_samples)}, got "
                f"{tuple(frames.shape)} and {tuple(audio.shape)}"
            )
        patches = frames.float().reshape(b, t, pt, h, ps, w, ps, 3)
        patches = patches.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, t * h * w, -1)
        video_pos = fourier_features(
            grid_positions((t, h, w), frames.device),
            cfg.video_fourier_bands,
            (cfg.num_frames, cfg.frame_height, cfg.frame_width),
        )
        audio_patches = audio.float().reshape(b, cfg.num_audio_patches, -1)
        audio_pos = fourier_features(
            grid_positions((cfg.num_audio_patches,), audio.device),
            cfg.audio_fourier_bands,
            (cfg.num_audio_samples,),
        )
        label_x = F.one_hot(label, cfg.num_classes).float()[:, None, :]
        inputs = {
            "audio": torch.cat([audio_patches, audio_pos.expand(b, -1, -1)], dim=-1),
            "video": torch.cat([patches, video_pos.expand(b, -1, -1)], dim=-1),
            "label": label_x,
        }
        padded = {m: self._pad(x, self.input_padding[m]) for m, x in inputs.items()}
        if label_mask is not None:
            token = self.label_mask_token.expand(b, 1, -1)
            padded["label"] = torch.where(label_mask[:, None, None], token, padded["label"])
        # Position features are float32; DeepSpeed's bf16 mode holds bf16 parameters.
        return torch.cat([padded[m] for m in MODALITIES], dim=1).to(self.latents.dtype)

    def encode(
        self, frames: Tensor, audio: Tensor, label: Tensor, label_mask: Tensor | None = None
    ) -> Tensor:
        """The latents z_bnD after the encoder cross-attention and the self-attention stack."""
        return self.encode_inputs(self.embed_inputs(frames, audio, label, label_mask))

    def decode(
        self,
        z_bnd: Tensor,
        video_idx: Tensor | None = None,
        audio_idx: Tensor | None = None,
        label: bool = True,
    ) -> dict[str, Tensor]:
        """Decodes the given queries (independently of each other).

        Args:
            z_bnd: Latents.
            video_idx: Long [b, kv], flat pixel indices into [T, H, W].
            audio_idx: Long [b, ka], audio patch indices.
            label: Decode the label.

        Returns:
            The requested of ``{"video": [b, kv, 3], "audio": [b, ka, samples_per_patch],
            "label": [b, num_classes]}``.
        """
        cfg, b = self.cfg, z_bnd.shape[0]
        queries: dict[str, Tensor] = {}
        if audio_idx is not None:
            pos = index_positions(audio_idx, (cfg.num_audio_patches,))
            feats = fourier_features(pos, cfg.audio_fourier_bands, (cfg.num_audio_samples,))
            queries["audio"] = self._pad(feats, self.query_padding["audio"])
        if video_idx is not None:
            grid = (cfg.num_frames, cfg.frame_height, cfg.frame_width)
            feats = fourier_features(
                index_positions(video_idx, grid), cfg.video_fourier_bands, grid
            )
            queries["video"] = self._pad(feats, self.query_padding["video"])
        if label:
            queries["label"] = self._pad(
                self.label_query.expand(b, 1, -1), self.query_padding["label"]
            )
        names = list(queries)
        q_bkc = torch.cat(list(queries.values()), dim=1).to(self.latents.dtype)
        h_bkc = self.decoder_cross_attention(q_bkc, z_bnd)
        h_bko = self.decoder_output(h_bkc)
        parts = dict(zip(names, h_bko.split([queries[m].shape[1] for m in names], dim=1)))
        heads = {"video": self.video_head, "audio": self.audio_head, "label": self.label_head}
        out = {m: heads[m](h) for m, h in parts.items()}
        if "label" in out:
            out["label"] = out["label"][:, 0]
        return out

    def reconstruct(self, z_bnd: Tensor) -> dict[str, Tensor]:
        """Decodes every pixel, audio sample and the label, `decode_chunk_size` queries at a time.

        Returns:
            ``{"video": [b, T, H, W, 3], "audio": [b, N], "label": [b, num_classes]}``.
        """
        cfg, b, chunk = self.cfg, z_bnd.shape[0], self.cfg.decode_chunk_size
        out: dict[str, list[Tensor]] = {"video": [], "audio": []}
        for name, total in (("video", cfg.num_pixels), ("audio", cfg.num_audio_patches)):
            for start in range(0, total, chunk):
                idx = torch.arange(start, min(start + chunk, total), device=z_bnd.device)
                kwargs = {f"{name}_idx": idx.expand(b, -1)}
                out[name].append(self.decode(z_bnd, **kwargs, label=False)[name])
        video = torch.cat(out["video"], dim=1)
        return {
            "video": video.reshape(b, cfg.num_frames, cfg.frame_height, cfg.frame_width, 3),
            "audio": torch.cat(out["audio"], dim=1).reshape(b, cfg.num_audio_samples),
            "label": self.decode(z_bnd, label=True)["label"],
        }

    def forward(
        self,
        frames: Tensor,
        audio: Tensor,
        label: Tensor,
        label_mask: Tensor | None = None,
        video_query_idx: Tensor | None = None,
        audio_query_idx: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Autoencodes a batch of clips.

        Args:
            frames: RGB [b, T, H, W, 3], uint8 or float in [0, 1].
            audio: Float [b, N] in [-1, 1].
            label: Long [b] class ids.
            label_mask: Optional bool [b]; True replaces that clip's label by the mask token.
            video_query_idx: Long [b, kv] pixels to decode; with `audio_query_idx`, or neither
                (then everything is reconstructed, see `reconstruct`).
            audio_query_idx: Long [b, ka] audio patches to decode.

        Returns:
            See `decode` (subsampled) or `reconstruct` (everything).
        """
        if (video_query_idx is None) != (audio_query_idx is None):
            raise ValueError("pass both video_query_idx and audio_query_idx, or neither")
        z_bnd = self.encode(frames, audio, label, label_mask)
        if video_query_idx is None:
            return self.reconstruct(z_bnd)
        return self.decode(z_bnd, video_query_idx, audio_query_idx, label=True)
