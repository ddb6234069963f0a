"""Collation and batch transforms (the "Batches" contract of docs/design.md).

The DataLoader only stacks samples (`stack_tokens`); everything random happens afterwards in the
training process, in a batch transform called as `transform(tokens, key)` with `key` unique to
(micro-step, rank). Each call seeds its own `torch.Generator` from `(seed, key)`, so masks depend
only on the micro-step and resuming needs no collator state.

- `MLMMasker`: BERT-style whole-word masking for the byte tokenizer. Words are maximal runs of
  byte ids that are neither ASCII whitespace nor special ids. In every row,
  `round(mask_prob * words)` words (at least one if the row has any) are chosen uniformly at
  random; each chosen word as a whole is replaced by MASK (80%), by random byte ids (10%) or
  left unchanged (10%), decided once per word. Labels hold the original ids at the chosen
  positions and -100 elsewhere, so PAD and special ids (the EOS document separators) are
  never labelled. A word cut by a sample boundary counts as a word. With a SentencePiece
  tokenizer, words are runs of pieces that are neither whitespace nor special, and a piece that
  starts with the word marker `▁` starts a new word; random replacements draw non-special ids.
  With `unit="token"` every token of a word is a unit of its own (per-byte masking for the byte
  tokenizer): `round(mask_prob * word tokens)` tokens per row are chosen and replaced one by one,
  so the other bytes of a masked byte's word stay visible. Whitespace and special ids are never
  labelled in either mode.
- `ARTargets`: next-token targets, `input_ids = tokens[:, :-1]`, `labels = tokens[:, 1:]`.
- `stack_images`, `stack_flow`: the `collate_fn` of image and flow shards. They decode the
  stored JPEG/PNG bytes to RGB (in the DataLoader's workers) and place every image top-left in a
  zero batch of the largest height and width, with each sample's true size in `sizes`;
  augmentation happens later, in the objective, on the training device.

Both are vectorised over the batch (no Python loop over rows or words) and run on the device of
`tokens`; masks are deterministic per `(seed, key)` and device type (CPU and CUDA generators
draw different numbers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from data_pipeline.tokenization.tokenizer import ByteTokenizer, SentencePieceTokenizer

__all__ = [
    "IGNORE_INDEX",
    "segment_ids",
    "ARTargets",
    "BatchTransform",
    "MASK_UNITS",
    "MLMMasker",
    "make_batch_transform",
    "mix_seed",
    "stack_flow",
    "stack_images",
    "stack_tokens",
]

IGNORE_INDEX = -100
"""Label of positions that carry no loss (`torch.nn.functional.cross_entropy`'s default)."""

BatchTransform = Callable[[torch.Tensor, int], dict[str, torch.Tensor]]
"""`transform(tokens long[B, L], key) -> dict of tensors`."""


def stack_tokens(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The DataLoader's `collate_fn`: stacks samples' `tokens` into one `long[B, L]` tensor.

    Args:
        samples: Dataset samples, each `{"tokens": 1-D integer array}` of the same length.

    Returns:
        `{"tokens": long[B, L]}`.

    Raises:
        ValueError: If there are no samples or their lengths differ.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    arrays = [np.asarray(sample["tokens"]) for sample in samples]
    lengths = {a.shape for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"samples have different shapes: {sorted(lengths)}")
    return {"tokens": torch.from_numpy(np.stack(arrays).astype(np.int64))}


def decode_rgb(data: bytes | np.ndarray, what: str = "image") -> torch.Tensor:
    """Decodes JPEG/PNG bytes to RGB: uint8 [3, H, W].

    Raises:
        ValueError: If the bytes cannot be decoded (naming `what`, e.g. the sample's path).
    """
    from torchvision.io import ImageReadMode, decode_image

    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        image = decode_image(buffer, mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise ValueError(f"{what}: cannot decode the stored image ({err})") from err
    if image.dtype == torch.uint16:  # a 16-bit PNG: keep the high byte
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def _padded_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    return max(h for h, _ in sizes), max(w for _, w in sizes)


def stack_images(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The `collate_fn` of image shards (kind "image").

    Args:
        samples: Dataset samples with columns `image` (JPEG/PNG bytes), `label`, `path`.

    Returns:
        `{"images": uint8 [B, 3, Hmax, Wmax] (top-left, zero padded), "sizes": long [B, 2]
        (h, w), "labels": long [B]}`.

    Raises:
        ValueError: If there are no samples, or one cannot be decoded (naming its path).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    images = [decode_rgb(s["image"], s.get("path", "image")) for s in samples]
    sizes = [(int(i.shape[1]), int(i.shape[2])) for i in images]
    height, width = _padded_size(sizes)
    batch = torch.zeros((len(images), 3, height, width), dtype=torch.uint8)
    for row, image in enumerate(images):
        batch[row, :, : image.shape[1], : image.shape[2]] = image
    return {
        "images": batch,
        "sizes": torch.tensor(sizes, dtype=torch.long),
        "labels": torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),
    }


def stack_flow(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The `collate_fn` of flow shards (kind "flow").

    Args:
        samples: Dataset samples with columns `frame1`, `frame2` (PNG bytes), `flow` (float32
            [H, W, 2]), `valid` (uint8 [H, W]), `path`.

    Returns:
        `{"frames": uint8 [B, 2, 3, Hmax, Wmax], "flow": float32 [B, Hmax, Wmax, 2] (x, y),
        "valid": bool [B, Hmax, Wmax] (False in the padding), "sizes": long [B, 2] (h, w)}`,
        every pair top-left and zero padded.

    Raises:
        ValueError: If there are no samples, one cannot be decoded, or a pair's frames and flow
            differ in size (naming its path).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    pairs, sizes = [], []
    for s in samples:
        path = s.get("path", "pair")
        f1, f2 = decode_rgb(s["frame1"], path), decode_rgb(s["frame2"], path)
        flow, valid = np.asarray(s["flow"]), np.asarray(s["valid"])
        h, w = int(f1.shape[1]), int(f1.shape[2])
        if f2.shape != f1.shape or flow.shape != (h, w, 2) or valid.shape != (h, w):
            raise ValueError(
                f"{path}: frames {tuple(f1.shape)} and {tuple(f2.shape)}, flow {flow.shape}, "
                f"valid {valid.shape} do not agree"
            )
        pairs.append((f1, f2, flow, valid))
        sizes.append((h, w))
    height, width = _padded_size(sizes)
    b = len(pairs)
    frames = torch.zeros((b, 2, 3, height, width), dtype=torch.uint8)
    flows = torch.zeros((b, height, width, 2), dtype=torch.float32)
    valids = torch.zeros((b, height, width), dtype=torch.bool)
    for row, ((f1, f2, flow, valid), (h, w)) in enumerate(zip(pairs, sizes)):
        frames[row, 0, :, :h, :w] = f1
        frames[row, 1, :, :h, :w] = f2
        flows[row, :h, :w] = torch.from_numpy(np.array(flow, np.float32))
        valids[row, :h, :w] = torch.from_numpy(valid != 0)
    sizes_b2 = torch.tensor(sizes, dtype=torch.long)
    return {"frames": frames, "flow": flows, "valid": valids, "sizes": sizes_b2}


def segment_ids(tokens: torch.Tensor, separator_id: int) -> torch.Tensor:
    """Numbers the documents within each packed sample: `long[B, L]`, 0 for the first.

    A document ends with its separator (the manifest's `separator_id`), which keeps the number
    of the document it ends; the next document starts after it. Use it to keep attention or
    losses within documents.

    Example:
        >>> segment_ids(torch.tensor([[7, 7, 2, 8, 2, 9]]), separator_id=2).tolist()
        [[0, 0, 0, 1, 1, 2]]
    """
    ends = (tokens == separator_id).long()
    return ends.cumsum(dim=1) - ends


def mix_seed(seed: int, key: int) -> int:
    """A 63-bit generator seed from `(seed, key)`; distinct pairs give unrelated seeds."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _check_tokens(tokens: torch.Tensor, min_len: int) -> torch.Tensor:
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [batch, length], got shape {tuple(tokens.shape)}")
    if tokens.shape[1] < min_len:
        raise ValueError(f"tokens must have at least {min_len} columns, got {tokens.shape[1]}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    return tokens.long()


MASK_UNITS = ("word", "token")
"""What `MLMMasker` chooses and replaces as a whole: whole words, or single tokens of words."""


class MLMMasker:
    """Whole-word (or per-token) masking batch transform, `masker(tokens, key) -> batch` (see
    module docstring).

    Args:
        tokenizer: The byte tokenizer (gives the special ids and the whitespace table).
        mask_prob: Fraction of units (words, or tokens of words) chosen per row.
        seed: Base seed, mixed with each call's `key`.
        mask_token_frac: Fraction of chosen units replaced by MASK.
        random_token_frac: Fraction of chosen units replaced by random byte ids.
        unit: `"word"` (whole-word masking, the paper's) or `"token"` (each token of a word is
            chosen on its own: per-byte masking with the byte tokenizer).

    Example::

        masker = MLMMasker(ByteTokenizer(), mask_prob=0.15, seed=cfg.seed)
        batch = masker(raw["tokens"], key=micro_step * world_size + rank)
        # batch: {"input_ids", "attention_mask", "labels"}
    """

    def __init__(
        self,
        tokenizer: ByteTokenizer | SentencePieceTokenizer,
        mask_prob: float = 0.15,
        seed: int = 0,
        *,
        mask_token_frac: float = 0.8,
        random_token_frac: float = 0.1,
        unit: str = "word",
    ) -> None:
        if unit not in MASK_UNITS:
            raise ValueError(f"unit must be one of {MASK_UNITS}, got {unit!r}")
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        if mask_token_frac < 0 or random_token_frac < 0 or mask_token_frac + random_token_frac > 1:
            raise ValueError(
                "mask_token_frac and random_token_frac must be >= 0 with a sum <= 1, got "
                f"{mask_token_frac} and {random_token_frac}"
            )
        self.mask_prob = mask_prob
        self.seed = seed
        self.unit = unit
        self.mask_token_frac = mask_token_frac
        self.random_token_frac = random_token_frac
        self.mask_id = tokenizer.mask_id
        self.pad_id = tokenizer.pad_id
        self.vocab_size = tokenizer.vocab_size
        ids = tokenizer.random_id_range if hasattr(tokenizer, "random_id_range") else None
        self.random_low, self.random_high = ids or tokenizer.byte_id_range
        in_word = ~(tokenizer.whitespace_table | tokenizer.special_table)
        # SentencePiece: a piece starting with the word marker starts a new word even when it
        # directly follows another piece of a word.
        word_start = getattr(tokenizer, "word_start_table", np.zeros_like(in_word)) & in_word
        self._in_word_cpu = torch.from_numpy(in_word.copy())
        self._word_start_cpu = torch.from_numpy(np.asarray(word_start).copy())
        self._in_word: dict[torch.device, torch.Tensor] = {}
        self._word_start: dict[torch.device, torch.Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"MLMMasker(unit={self.unit}, mask_prob={self.mask_prob}, seed={self.seed}, "
            f"mask/random/keep={self.mask_token_frac}/{self.random_token_frac}/"
            f"{1 - self.mask_token_frac - self.random_token_frac:g})"
        )

    def _word_table(self, device: torch.device) -> torch.Tensor:
        if device not in self._in_word:
            self._in_word[device] = self._in_word_cpu.to(device)
            self._word_start[device] = self._word_start_cpu.to(device)
        return self._in_word[device]

    def find_words(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Finds words: `(in_word bool[B, L], word_index long[B, L])`.

        `word_index` numbers the words of each row from 0 and is -1 outside words.
        """
        tokens = _check_tokens(tokens, 1)
        in_word = self._word_table(tokens.device)[tokens]
        starts = in_word.clone()
        starts[:, 1:] &= ~in_word[:, :-1] | self._word_start[tokens.device][tokens[:, 1:]]
        word_index = torch.where(in_word, starts.cumsum(dim=1) - 1, -1)
        return in_word, word_index

    def find_units(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Finds the masking units: `find_words` for `unit="word"`; for `unit="token"` every
        token of a word is its own unit, numbered from 0 in each row (-1 outside words)."""
        in_word, word_index = self.find_words(tokens)
        if self.unit == "word":
            return in_word, word_index
        return in_word, torch.where(in_word, in_word.long().cumsum(dim=1) - 1, -1)

    def __call__(self, tokens: torch.Tensor, key: int) -> dict[str, torch.Tensor]:
        """Masks a batch.

        Args:
            tokens: `long[B, L]` ids (from `stack_tokens`), on any device.
            key: Integer unique to (micro-step, rank).

        Returns:
            `{"input_ids": long[B, L], "attention_mask": bool[B, L] (True = real token),
            "labels": long[B, L] (-100 where not chosen)}` on the device of `tokens`.
        """
        tokens = _check_tokens(tokens, 1)
        batch, length = tokens.shape
        device = tokens.device
        generator = torch.Generator(device=device)
        generator.manual_seed(mix_seed(self.seed, key))
        # Every draw has a fixed shape, so the random stream never depends on the text.
        word_score = torch.rand(batch, length, generator=generator, device=device)
        word_action = torch.rand(batch, length, generator=generator, device=device)
        random_ids = torch.randint(
            self.random_low, self.random_high, (batch, length), generator=generator, device=device
        )

        in_word, word_index = self.find_units(tokens)
        num_words = (word_index.max(dim=1).values + 1).clamp(min=0)  # [B]
        slot = torch.arange(length, device=device)
        # Choose exactly k words per row: rank the slots of real words by a random score.
        word_score = word_score.masked_fill(slot[None, :] >= num_words[:, None], 2.0)
        order = word_score.argsort(dim=1)
        rank = torch.empty_like(order).scatter_(1, order, slot.expand(batch, length))
        num_chosen = torch.round(num_words * self.mask_prob).long()
        num_chosen = torch.where(num_words > 0, num_chosen.clamp(min=1), 0)
        word_chosen = rank < num_chosen[:, None]  # [B, word slots]

        position_word = word_index.clamp(min=0)
        chosen = in_word & word_chosen.gather(1, position_word)
        action = word_action.gather(1, position_word)
        to_mask = chosen & (action < self.mask_token_frac)
        to_random = (
            chosen
            & (action >= self.mask_token_frac)
            & (action < self.mask_token_frac + self.random_token_frac)
        )
        input_ids = torch.where(to_mask, self.mask_id, tokens)
        input_ids = torch.where(to_random, random_ids, input_ids)
        labels = torch.where(chosen, tokens, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": tokens != self.pad_id, "labels": labels}


class ARTargets:
    """Next-token batch transform: `ARTargets()(tokens, key)` (`key` is unused: nothing random).

    Samples hold `seq_len + 1` tokens; inputs are the first `seq_len`, labels the last `seq_len`.
    """

    def __call__(self, tokens: torch.Tensor, key: int) -> dict[str, torch.Tensor]:
        """Splits `long[B, seq_len + 1]` tokens into `input_ids` and `labels` (`long[B, seq_len]`).

        Args:
            tokens: `long[B, L]` ids with `L >= 2`.
            key: Ignored; accepted for the common transform signature.

        Returns:
            `{"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}` (contiguous).
        """
        tokens = _check_tokens(tokens, 2)
        return {
            "input_ids": tokens[:, :-1].contiguous(),
            "labels": tokens[:, 1:].contiguous(),
        }

    def __repr__(self) -> str:
        return "ARTargets()"


def make_batch_transform(
    objective: str,
    tokenizer: ByteTokenizer | SentencePieceTokenizer | None = None,
    *,
    seed: int = 0,
    mask_prob: float = 0.15,
    mask_unit: str = "word",
) -> BatchTransform:
    """The batch transform of an objective: `MLMMasker` for `"mlm"`, `ARTargets` for `"ar"`.

    Args:
        objective: `"mlm"` or `"ar"`.
        tokenizer: Tokenizer for MLM (default `ByteTokenizer()`).
        seed: Masking seed (MLM).
        mask_prob: Fraction of words (or tokens, see `mask_unit`) masked (MLM).
        mask_unit: `"word"` or `"token"` (MLM; see `MLMMasker`).

    Returns:
        A callable `transform(tokens, key) -> dict`.

    Raises:
        ValueError: For an unknown objective.
    """
    if objective == "mlm":
        return MLMMasker(
            tokenizer or ByteTokenizer(), mask_prob=mask_prob, seed=seed, unit=mask_unit
        )
    if objective == "ar":
        return ARTargets()
    raise ValueError(f"unknown objective {objective!r}; expected 'mlm' or 'ar'")
