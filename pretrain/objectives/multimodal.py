"""The multimodal autoencoding objective (Perceiver IO on Kinetics-style video + audio + label).

Loader batches come from video shards (`data_pipeline.video.shards.stack_video`):
``{"frames": uint8 [B, T, H, W, 3], "audio": float [B, N], "has_audio": bool [B], "label": long
[B]}``. The objective, as in the paper:

* Training decodes a random subset of the outputs of every clip (``train_video_queries`` pixels,
  ``train_audio_queries`` audio patches of 16 samples, and the label) and masks the label input
  of a clip with probability ``label_mask_prob`` (0.5). Indices and masks come from a generator
  seeded by (seed, key), so a resumed run sees exactly the same ones.
* Evaluation reconstructs every pixel and audio sample (in chunks, see
  `PerceiverMultimodal.reconstruct`) with every label masked: top-1 is then classification.
* Loss: ``video_loss_weight * L1(video) + audio_loss_weight * L1(audio) + label_loss_weight *
  CE(label)`` (paper: 0.03, 1, 1e-4), L1 as a mean over the decoded values. Clips without audio
  (``has_audio`` False: zero-filled) are left out of the audio loss and metrics.
* Metrics: loss, video and audio L1, PSNR (peak 1: pixels in [0, 1], audio in [-1, 1]; from the
  summed squared error of the logging window), label cross-entropy and top-1 over label-masked
  clips. After an evaluation, `images()` holds frames of the first validation clip beside their
  reconstruction, which the trainer logs to TensorBoard.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.objectives.text import Objective, register_objective

NUM_IMAGE_FRAMES = 4  # frames shown per reconstruction image


def psnr(se_sum: float, count: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a summed squared error over ``count`` values."""
    mse = se_sum / max(count, 1.0)
    return 10.0 * math.log10(peak**2 / mse) if mse > 0 else float("inf")


@register_objective
class MultimodalAutoencodingObjective(Objective):
    """Reconstructs video, audio and label of a clip (see the module docstring)."""

    name = "multimodal_ae"
    model_types = ("perceiver_io_multimodal",)
    shard_kind = "video"
    stat_keys = (
        "loss_sum",
        "samples",
        "video_l1_sum",
        "video_se_sum",
        "video_count",
        "audio_l1_sum",
        "audio_se_sum",
        "audio_count",
        "label_ce_sum",
        "correct",
        "count",
    )

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.model_cfg = cfg.model_config()
        self.seed = cfg.trainer.seed
        self._images: dict[str, torch.Tensor] = {}

    def transform(self, raw: dict[str, Any], key: int) -> dict[str, torch.Tensor]:
        """Adds the training queries and label masks of this (micro-step, rank) to the batch.

        Drawn on the CPU from a generator seeded by (seed, key), then moved to the batch's
        device, so runs on a GPU or a CPU decode the same queries.
        """
        from data_pipeline.loading.collators import mix_seed

        mc = self.model_cfg
        g = torch.Generator().manual_seed(mix_seed(self.seed, key))
        b = raw["label"].shape[0]
        video_idx, audio_idx = [], []
        for _ in range(b):  # without replacement, independently per clip
            video_idx.append(torch.randperm(mc.num_pixels, generator=g)[: mc.train_video_queries])
            audio_idx.append(
                torch.randperm(mc.num_audio_patches, generator=g)[: mc.train_audio_queries]
            )
        device = raw["label"].device  # draws on the CPU: the same queries on any device
        return {
            "frames": raw["frames"],
            "audio": raw["audio"],
            "has_audio": raw["has_audio"],
            "label": raw["label"],
            "label_mask": (torch.rand(b, generator=g) < mc.label_mask_prob).to(device),
            "video_query_idx": torch.stack(video_idx).to(device),
            "audio_query_idx": torch.stack(audio_idx).to(device),
        }

    def step(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Subsampled reconstruction in training, full reconstruction in evaluation mode."""
        mc, b = self.model_cfg, batch["label"].shape[0]
        video_bn3 = batch["frames"].float().div(255.0).reshape(b, -1, 3)
        audio_bn = batch["audio"].float()
        label = batch["label"]
        frames = video_bn3.reshape(b, mc.num_frames, mc.frame_height, mc.frame_width, 3)
        # DeepSpeed's engine.eval() switches only the wrapped module (engine.training stays True).
        if getattr(model, "module", model).training:
            label_mask = batch["label_mask"]
            vidx, aidx = batch["video_query_idx"], batch["audio_query_idx"]
            out = model(
                frames=frames,
                audio=audio_bn,
                label=label,
                label_mask=label_mask,
                video_query_idx=vidx,
                audio_query_idx=aidx,
            )
            spp = mc.audio_samples_per_patch
            target_video = video_bn3.gather(1, vidx[..., None].expand(-1, -1, 3))
            target_audio = audio_bn.reshape(b, -1, spp).gather(
                1, aidx[..., None].expand(-1, -1, spp)
            )
            pred_video, pred_audio = out["video"], out["audio"]
        else:
            label_mask = torch.ones_like(label, dtype=torch.bool)
            out = model(frames=frames, audio=audio_bn, label=label, label_mask=label_mask)
            pred_video, pred_audio = out["video"].reshape(b, -1, 3), out["audio"]
            target_video, target_audio = video_bn3, audio_bn
            if not self._images:
                self._images = {"val/reconstruction": _side_by_side(frames[0], out["video"][0])}
        video_err = pred_video.float().reshape(b, -1) - target_video.reshape(b, -1)
        audio_err = pred_audio.float().reshape(b, -1) - target_audio.reshape(b, -1)
        audio_w = batch["has_audio"].to(audio_err.dtype)[:, None].expand_as(audio_err)
        logits = out["label"].float()
        ce = F.cross_entropy(logits, label, reduction="none")
        sums = {
            "samples": torch.tensor(float(b), device=logits.device),
            "video_l1_sum": video_err.abs().sum(),
            "video_se_sum": video_err.square().sum(),
            "video_count": torch.tensor(float(video_err.numel()), device=logits.device),
            "audio_l1_sum": (audio_err.abs() * audio_w).sum(),
            "audio_se_sum": (audio_err.square() * audio_w).sum(),
            "audio_count": audio_w.sum(),
            "label_ce_sum": ce.sum(),
            "correct": ((logits.argmax(-1) == label) & label_mask).sum(),
            "count": label_mask.sum(),
        }
        loss = (
            mc.video_loss_weight * sums["video_l1_sum"] / sums["video_count"]
            + mc.audio_loss_weight * sums["audio_l1_sum"] / sums["audio_count"].clamp(min=1)
            + mc.label_loss_weight * ce.mean()
        )
        sums = {k: v.detach() for k, v in sums.items()}
        sums["loss_sum"] = loss.detach() * b
        return loss, sums

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Input positions (video patches + audio patches + label) of the batch."""
        return batch["label"].shape[0] * self.model_cfg.num_inputs

    def num_samples(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["label"].shape[0]

    def summarize(self, sums: dict[str, float], prefix: str) -> dict[str, float]:
        """Loss, per-modality L1 and PSNR, label cross-entropy and top-1 (of masked labels)."""
        samples = max(sums["samples"], 1.0)
        out = {
            f"{prefix}/loss": sums["loss_sum"] / samples,
            f"{prefix}/video_l1": sums["video_l1_sum"] / max(sums["video_count"], 1.0),
            f"{prefix}/video_psnr": psnr(sums["video_se_sum"], sums["video_count"]),
            f"{prefix}/label_ce": sums["label_ce_sum"] / samples,
            f"{prefix}/top1": sums["correct"] / max(sums["count"], 1.0),
        }
        if sums["audio_count"] > 0:
            out[f"{prefix}/audio_l1"] = sums["audio_l1_sum"] / sums["audio_count"]
            out[f"{prefix}/audio_psnr"] = psnr(sums["audio_se_sum"], sums["audio_count"])
        return out

    def images(self) -> dict[str, torch.Tensor]:
        """Frames of the first clip of the last evaluation beside their reconstruction (once)."""
        images, self._images = self._images, {}
        return images

    @classmethod
    def check_data(cls, cfg: Any) -> None:
        """Refuses video shards whose clip geometry or classes do not fit the model, or whose
        train split is empty (an empty val split only skips validation:
        `pretrain.train.trainer`)."""
        from data_pipeline.video.shards import check_video_manifest
        from pretrain.config import ConfigError

        mc = cfg.model_config()
        keys = [f"data.mixture[{i}].dir" for i in range(len(cfg.data.mixture))] or ["data.dir"]
        for key, (_, data_dir, _) in zip(keys, cfg.data.dataset_dirs()):
            try:
                check_video_manifest(
                    data_dir,
                    num_frames=mc.num_frames,
                    height=mc.frame_height,
                    width=mc.frame_width,
                    samples_per_frame=mc.audio_samples_per_frame,
                    num_classes=mc.num_classes,
                    splits=[cfg.data.train_split],
                )
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise ConfigError(f"{key}: {e}") from None
        if cfg.data.mixture:
            from data_pipeline.loading.mixtures import check_datasets

            try:
                check_datasets([data_dir for _, data_dir, _ in cfg.data.dataset_dirs()])
            except ValueError as e:
                raise ConfigError(f"data.mixture: {e}") from None


def _side_by_side(frames_thw3: torch.Tensor, recon_thw3: torch.Tensor) -> torch.Tensor:
    """uint8 [n, H, 2W, 3]: evenly spaced frames (left) and their reconstruction (right)."""
    t = frames_thw3.shape[0]
    idx = torch.linspace(0, t - 1, min(NUM_IMAGE_FRAMES, t)).round().long()
    pair = torch.cat([frames_thw3[idx], recon_thw3[idx].float().clamp(0, 1)], dim=2)
    return (pair * 255).round().to(torch.uint8).cpu()
