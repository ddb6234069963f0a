"""Perceiver IO sequence classifier: the pretrained MLM encoder with a classification decoder.

The encoder (token + position embeddings, latents, encoder cross-attention, latent self-attention
stack) has exactly the parameters and parameter names of `PerceiverMLM`, so pretrained weights
load unchanged. The decoder follows the Perceiver IO paper's GLUE set-up: one learned class query
cross-attends the latents, and a 2-layer MLP maps its output to the class logits (one output for
regression, e.g. STS-B):

    tokens [b, s] -> embeddings x_bsc -> latents z_bnD (as PerceiverMLM.encode)
    class_query [1, c] --decoder_cross_attention(z)-->  h_b1c
    h --head_fc1 -> GELU -> dropout -> head_fc2-->        logits_bk  (k = num_classes)

`decoder_cross_attention` has the shapes of the MLM decoder's cross-attention, so fine-tuning can
start it from the pretrained decoder too (see `pretrain.export.adapt_state_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.attention import writable
from pretrain.models.flops import (
    cross_attention_layer_flops,
    cross_attention_layer_params,
    linear_params,
)
from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverIOEncoder


@dataclass
class PerceiverClassifierConfig(PerceiverIOConfig):
    """Hyperparameters of `PerceiverClassifier`: the encoder fields of `PerceiverIOConfig` plus
    the classification head (the MLM's decoder fields size the class query's cross-attention).

    Attributes:
        num_classes: Number of classes; 1 makes the model a regressor (STS-B).
        head_hidden_channels: Width of the hidden layer of the 2-layer MLP head (0: the input
            channels, `num_input_channels`).
        head_dropout: Dropout before the last layer of the head (BERT fine-tunes with 0.1).
    """

    type: ClassVar[str] = "perceiver_io_classifier"  # `model.type` in a config file
    num_classes: int = 2
    head_hidden_channels: int = 0
    head_dropout: float = 0.1

    def __post_init__(self) -> None:
        # The encoder fields are checked by building the MLM config they describe (its
        # __post_init__ would refuse head_hidden_channels=0 and the float head_dropout).
        self.encoder_config()
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        hidden = self.head_hidden_channels
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 0:
            raise ValueError(f"head_hidden_channels must be an int >= 0, got {hidden!r}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}")

    def encoder_config(self) -> PerceiverIOConfig:
        """The `PerceiverIOConfig` of the masked LM whose encoder (and decoder shapes) this is."""
        names = [f.name for f in fields(PerceiverIOConfig)]
        return PerceiverIOConfig(**{name: getattr(self, name) for name in names})

    @property
    def head_channels(self) -> int:
        """The hidden width of the MLP head."""
        return self.head_hidden_channels or self.num_input_channels

    def num_params(self) -> int:
        """Analytic number of parameters."""
        c, s = self.num_input_channels, self.max_seq_len
        return (
            self.vocab_size * c
            + s * c
            + self.encoder_spec().num_params()
            + c  # class query
            + cross_attention_layer_params(**self.decoder_layer_sizes(), widening=1)
            + linear_params(c, self.head_channels)
            + linear_params(self.head_channels, self.num_classes)
        )

    def flops_per_sample(self, seq_len: int | None = None) -> int:
        """Forward + backward matmul FLOPs for one sample of `seq_len` tokens (default max)."""
        s = self.max_seq_len if seq_len is None else seq_len
        c, h = self.num_input_channels, self.head_channels
        forward = (
            self.encoder_spec().forward_flops(s)
            + cross_attention_layer_flops(
                num_q=1, num_kv=self.num_latents, **self.decoder_layer_sizes(), widening=1
            )
            + 2 * c * h
            + 2 * h * self.num_classes
        )
        return 3 * forward


class PerceiverClassifier(PerceiverIOEncoder):
    """Perceiver IO encoder + class-query decoder + 2-layer MLP head (see the module docstring).

    Args:
        cfg: Model hyperparameters. Parameters are allocated but not initialised: call
            `init_weights()` (allows construction on the meta device).
    """

    def __init__(self, cfg: PerceiverClassifierConfig) -> None:
        super().__init__(cfg)
        c = cfg.num_input_channels
        self.class_query = nn.Parameter(torch.empty(1, c))
        self.decoder_cross_attention = self.decoder_cross_attention_layer()
        self.head_fc1 = nn.Linear(c, cfg.head_channels)
        self.head_dropout = nn.Dropout(cfg.head_dropout)
        self.head_fc2 = nn.Linear(cfg.head_channels, cfg.num_classes)

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_scale) for weights, embeddings, latents and the class query (as the MLM)."""
        super().init_weights()
        with writable(self.class_query):
            nn.init.normal_(self.class_query, std=self.cfg.init_scale)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Class logits (or the regression output).

        Args:
            input_ids: long [b, s].
            attention_mask: Optional bool [b, s], True = real token.

        Returns:
            Logits [b, num_classes] ([b, 1] for regression).
        """
        z_bnd = self.encode(input_ids, attention_mask)
        query_b1c = self.class_query.expand(z_bnd.shape[0], -1, -1)
        h_bc = self.decoder_cross_attention(query_b1c, z_bnd)[:, 0]
        return self.head_fc2(self.head_dropout(F.gelu(self.head_fc1(h_bc))))
