"""Tokenizers: the UTF-8 byte tokenizer of the Perceiver IO paper (and a small name registry).

Id layout of `ByteTokenizer` (262 ids), identical to the Perceiver IO code and to HuggingFace's
`PerceiverTokenizer`:

    0 PAD   1 BOS   2 EOS   3 MASK   4 CLS   5 SEP   byte b -> b + 6   (6 .. 261)

Text is encoded as its UTF-8 bytes, so every string round-trips and there is no unknown token.
Shards store ids as `uint16`; `encode` returns that dtype so packing never copies or widens.

The whitespace lookup table (`whitespace_table`) marks the ids of ASCII whitespace bytes; the
whole-word masker uses it to find word boundaries without decoding. Bytes of multi-byte UTF-8
characters are never whitespace, so a word boundary never falls inside a character.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "ByteTokenizer",
    "Tokenizer",
    "available_tokenizers",
    "get_tokenizer",
]

# The bytes Python's `bytes.isspace()` and `str.split()` treat as ASCII whitespace.
_WHITESPACE_BYTES = b" \t\n\r\x0b\x0c"


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer (a SentencePiece one will follow)."""

    name: str
    vocab_size: int
    pad_id: int
    eos_id: int
    mask_id: int

    def encode(self, text: str) -> np.ndarray:
        """Encodes text to ids (no special tokens added)."""
        ...

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Decodes ids to text, skipping special tokens."""
        ...


class ByteTokenizer:
    """UTF-8 byte tokenizer with 6 special tokens (262 ids).

    Attributes:
        name: Registry name, recorded in shard manifests.
        vocab_size: Number of ids (262).
        pad_id, bos_id, eos_id, mask_id, cls_id, sep_id: Special token ids 0..5.
        num_special_tokens: Number of special ids (6); byte `b` has id `b + num_special_tokens`.
        special_tokens: Names of the special ids, in id order.
        whitespace_table: Bool array `[vocab_size]`, True at ids of ASCII whitespace bytes.
        special_table: Bool array `[vocab_size]`, True at the special ids.
    """

    name = "byte"
    pad_id = 0
    bos_id = 1
    eos_id = 2
    mask_id = 3
    cls_id = 4
    sep_id = 5
    num_special_tokens = 6
    vocab_size = 256 + num_special_tokens
    special_tokens = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]")

    def __init__(self) -> None:
        whitespace = np.zeros(self.vocab_size, dtype=bool)
        whitespace[np.frombuffer(_WHITESPACE_BYTES, dtype=np.uint8) + self.num_special_tokens] = (
            True
        )
        whitespace.flags.writeable = False
        special = np.zeros(self.vocab_size, dtype=bool)
        special[: self.num_special_tokens] = True
        special.flags.writeable = False
        self.whitespace_table = whitespace
        self.special_table = special

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"

    @property
    def byte_id_range(self) -> tuple[int, int]:
        """Half-open range `[low, high)` of the ids that stand for bytes."""
        return self.num_special_tokens, self.vocab_size

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Encodes text as UTF-8 byte ids.

        Args:
            text: The string to encode.
            add_bos: Prepend `bos_id`.
            add_eos: Append `eos_id`.

        Returns:
            A 1-D `uint16` array of ids.
        """
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
        ids += self.num_special_tokens
        if add_bos or add_eos:
            parts = [ids]
            if add_bos:
                parts.insert(0, np.array([self.bos_id], dtype=np.uint16))
            if add_eos:
                parts.append(np.array([self.eos_id], dtype=np.uint16))
            ids = np.concatenate(parts)
        return ids

    def decode(self, ids: Iterable[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
        """Decodes ids back to text.

        Invalid UTF-8 (for example a sample that starts in the middle of a character) is replaced
        by U+FFFD, never raised.

        Args:
            ids: Ids as a list, a NumPy array or a CPU tensor.
            skip_special_tokens: Drop special ids; otherwise render them as `[PAD]`, `[EOS]`, ...

        Returns:
            The decoded string.

        Raises:
            ValueError: If an id is outside `[0, vocab_size)`.
        """
        arr = np.asarray(ids if hasattr(ids, "__array__") else list(ids), dtype=np.int64)
        arr = arr.reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = arr[(arr < 0) | (arr >= self.vocab_size)][0]
            raise ValueError(f"token id {int(bad)} is outside [0, {self.vocab_size})")
        if skip_special_tokens:
            return self._bytes_to_str(arr[arr >= self.num_special_tokens])
        pieces: list[str] = []
        is_special = arr < self.num_special_tokens
        # Decode runs of bytes together so multi-byte characters survive between specials.
        boundaries = np.flatnonzero(np.diff(is_special.astype(np.int8))) + 1
        for run in np.split(arr, boundaries):
            if run.size == 0:
                continue
            if run[0] < self.num_special_tokens:
                pieces.extend(self.special_tokens[int(i)] for i in run)
            else:
                pieces.append(self._bytes_to_str(run))
        return "".join(pieces)

    def _bytes_to_str(self, byte_ids: np.ndarray) -> str:
        raw = (byte_ids - self.num_special_tokens).astype(np.uint8).tobytes()
        return raw.decode("utf-8", errors="replace")

    def is_whitespace_id(self, token_id: int) -> bool:
        """Whether `token_id` is the id of an ASCII whitespace byte (space, tab, newline, ...)."""
        return 0 <= token_id < self.vocab_size and bool(self.whitespace_table[token_id])

    def is_special_id(self, token_id: int) -> bool:
        """Whether `token_id` is one of the 6 special ids."""
        return 0 <= token_id < self.num_special_tokens

    def config(self) -> dict[str, object]:
        """A JSON-able description, stored in shard manifests."""
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "mask_id": self.mask_id,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
            "num_special_tokens": self.num_special_tokens,
        }


_REGISTRY: dict[str, Callable[[], Tokenizer]] = {"byte": ByteTokenizer}


def available_tokenizers() -> list[str]:
    """Names accepted by `get_tokenizer`."""
    return sorted(_REGISTRY)


def get_tokenizer(name: str) -> Tokenizer:
    """Builds a tokenizer from its registry name (as written in a shard manifest).

    Args:
        name: Registry name, e.g. `"byte"`.

    Returns:
        The tokenizer.

    Raises:
        ValueError: If the name is unknown; the message lists the known names.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown tokenizer {name!r}; known tokenizers: {available_tokenizers()}"
        ) from None
    return factory()
