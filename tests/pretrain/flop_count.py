"""Counting a model's matmul FLOPs the same way on every torch version.

`FlopCounterMode` counts SDPA through per-kernel formulas, and which kernel runs on the CPU (and
whether the counter knows it) changes between torch releases: 2.14 and 2.15 disagree on the same
model. Inside `count_matmul_flops` the models' one attention function is swapped for its einsum
reference, so every FLOP the counter sees is a plain `mm`/`bmm` whose formula never changes, and
the analytic counts in `pretrain.models.flops` are checked against matmuls we control.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

from torch.utils.flop_counter import FlopCounterMode

from pretrain.models import attention as attention_module


def _reference_attention(
    q_bhnd, k_bhmd, v_bhme, key_padding_mask_bm=None, causal=False, dropout_p=0.0, attn_mask=None
):
    assert dropout_p == 0.0 and attn_mask is None, "count FLOPs in eval mode"
    return attention_module.attention_reference(q_bhnd, k_bhmd, v_bhme, key_padding_mask_bm, causal)


@contextlib.contextmanager
def count_matmul_flops() -> Iterator[FlopCounterMode]:
    """A `FlopCounterMode` under which attention runs as explicit einsums."""
    with (
        mock.patch.object(attention_module, "attention", _reference_attention),
        FlopCounterMode(display=False) as counter,
    ):
        yield counter
