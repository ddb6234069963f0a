"""Tokenizers: UTF-8 bytes (the Perceiver IO paper's) and SentencePiece, behind one interface.

Id layout of `ByteTokenizer` (262 ids), identical to the Perceiver IO code and to HuggingFace's
`PerceiverTokenizer`:

    0 PAD   1 BOS   2 EOS   3 MASK   4 CLS   5 SEP   byte b -> b + 6   (6 .. 261)

Text is encoded as its UTF-8 bytes, so every string round-trips and there is no unknown token.
`encode` returns `uint16`. Shards store the smallest dtype that holds every id that can occur
(`shard_dtype`): valid UTF-8 never contains the bytes 0xF5..0xFF, so byte ids never exceed
`0xF4 + 6 = 250` and byte shards are `uint8`, half the size (and half the compression and loading
work) of `uint16`.

The whitespace lookup table (`whitespace_table`) marks the ids of ASCII whitespace bytes; the
whole-word masker uses it to find word boundaries without decoding. Bytes of multi-byte UTF-8
characters are never whitespace, so a word boundary never falls inside a character.

`SentencePieceTokenizer` (a model trained by `perceiver data train-spm`, see `spm.py`) keeps the
same special ids 0..5 and adds UNK at 6, then 256 byte-fallback pieces, then the vocabulary. Its
`word_start_table` marks pieces that begin with SentencePiece's word marker `▁`, so whole-word
masking finds words in SentencePiece ids too.

Names (as in `--tokenizer` and in manifests): `byte` (alias `bytes`) and `spm:PATH/TO.model`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "SPM_MODEL_NAME",
    "ByteTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "available_tokenizers",
    "encode_documents",
    "get_tokenizer",
    "shard_dtype",
    "tokenizer_from_manifest",
]

SPM_MODEL_NAME = "tokenizer.model"
"""File name of a SentencePiece model stored beside the shards."""

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
    max_stored_id = 0xF4 + num_special_tokens
    """Largest id of encoded text: UTF-8 has no bytes above 0xF4."""
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

    @property
    def random_id_range(self) -> tuple[int, int]:
        """Ids MLM's random replacement draws from (the bytes)."""
        return self.byte_id_range

    @property
    def word_start_table(self) -> np.ndarray:
        """No id starts a word by itself: bytes words are runs between whitespace."""
        return np.zeros(self.vocab_size, dtype=bool)

    def encode_documents(
        self, texts: Sequence[str], utf8: Sequence[bytes] | None = None
    ) -> np.ndarray:
        """Encodes documents into one array, each followed by `eos_id`, in one NumPy pass.

        Args:
            texts: The documents.
            utf8: Their UTF-8 encodings, if already computed.

        Returns:
            `uint8` ids (valid UTF-8 gives ids up to `max_stored_id` = 250).
        """
        parts = list(utf8) if utf8 is not None else [t.encode("utf-8") for t in texts]
        if not parts:
            return np.empty(0, np.uint8)
        joined = b"\x00".join(parts) + b"\x00"
        ids = np.frombuffer(joined, dtype=np.uint8) + np.uint8(self.num_special_tokens)
        ends = np.cumsum(np.fromiter((len(p) + 1 for p in parts), np.int64, len(parts))) - 1
        ids[ends] = self.eos_id
        return ids

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


class SentencePieceTokenizer:
    """A SentencePiece model with the byte tokenizer's special ids (see `spm.train_spm`).

    Id layout: PAD 0, BOS 1, EOS 2, MASK 3, CLS 4, SEP 5, UNK 6, byte-fallback pieces
    `<0x00>..<0xFF>` 7..262, then the learned pieces. Text round-trips exactly (identity
    normalisation, no whitespace collapsing, byte fallback).

    Args:
        model_file: Path to the `.model` file.

    Raises:
        ValueError: If the model does not have the expected special ids.
    """

    pad_id, bos_id, eos_id, mask_id, cls_id, sep_id, unk_id = range(7)
    num_special_tokens = 7
    special_tokens = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]", "[UNK]")

    def __init__(self, model_file: str | os.PathLike[str]) -> None:
        import sentencepiece as spm

        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {self.model_file}")
        data = self.model_file.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.sp = spm.SentencePieceProcessor(model_proto=data)
        self.vocab_size = int(self.sp.get_piece_size())
        expected = {"pad": 0, "bos": 1, "eos": 2, "unk": 6}
        actual = {
            "pad": self.sp.pad_id(),
            "bos": self.sp.bos_id(),
            "eos": self.sp.eos_id(),
            "unk": self.sp.unk_id(),
        }
        if actual != expected or self.sp.piece_to_id("[MASK]") != self.mask_id:
            raise ValueError(
                f"{self.model_file}: special ids {actual}, [MASK]={self.sp.piece_to_id('[MASK]')}"
                f" differ from {expected}, [MASK]=3; train it with `perceiver data train-spm`"
            )
        self.name = f"spm:{self.model_file}"
        self.max_stored_id = self.vocab_size - 1
        pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        special = np.zeros(self.vocab_size, dtype=bool)
        special[: self.num_special_tokens] = True
        whitespace = np.zeros(self.vocab_size, dtype=bool)
        word_start = np.zeros(self.vocab_size, dtype=bool)
        space_bytes = {f"<0x{b:02X}>" for b in b" \t\n\r\x0b\x0c"}
        for i, piece in enumerate(pieces):
            if i < self.num_special_tokens:
                continue
            if piece in space_bytes or not piece.replace("\u2581", "").strip():
                whitespace[i] = True
            elif piece.startswith("\u2581"):
                word_start[i] = True
        for table in (special, whitespace, word_start):
            table.flags.writeable = False
        self.special_table, self.whitespace_table, self.word_start_table = (
            special,
            whitespace,
            word_start,
        )

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.model_file)!r}, vocab_size={self.vocab_size})"

    @property
    def random_id_range(self) -> tuple[int, int]:
        """Ids MLM's random replacement draws from (everything but the specials)."""
        return self.num_special_tokens, self.vocab_size

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Encodes text to ids (`uint16` if the vocabulary fits, else `uint32`)."""
        ids = self.sp.encode(text, add_bos=add_bos, add_eos=add_eos)
        return np.asarray(ids, dtype=np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    def encode_documents(
        self, texts: Sequence[str], utf8: Sequence[bytes] | None = None
    ) -> np.ndarray:
        """Encodes documents with one batched call, each followed by `eos_id`."""
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32
        pieces = self.sp.encode(list(texts), add_eos=True, num_threads=1)
        if not pieces:
            return np.empty(0, dtype)
        return np.fromiter((i for doc in pieces for i in doc), dtype)

    def decode(self, ids: Iterable[int] | np.ndarray, *, skip_special_tokens: bool = True) -> str:
        """Decodes ids to text (specials dropped, or rendered as `[EOS]` etc.)."""
        arr = np.asarray(ids if hasattr(ids, "__array__") else list(ids), dtype=np.int64)
        arr = arr.reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = arr[(arr < 0) | (arr >= self.vocab_size)][0]
            raise ValueError(f"token id {int(bad)} is outside [0, {self.vocab_size})")
        if skip_special_tokens:
            return self.sp.decode(arr[arr >= self.num_special_tokens].tolist())
        out, run = [], []
        for i in arr.tolist():
            if i < self.num_special_tokens:
                out.append(self.sp.decode(run))
                out.append(self.special_tokens[i])
                run = []
            else:
                run.append(i)
        out.append(self.sp.decode(run))
        return "".join(out)

    def config(self) -> dict[str, object]:
        """A JSON-able description, stored in shard manifests."""
        return {
            "name": "spm",
            "model_file": SPM_MODEL_NAME,
            "model_sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "mask_id": self.mask_id,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
            "unk_id": self.unk_id,
            "num_special_tokens": self.num_special_tokens,
        }


def shard_dtype(tokenizer: Tokenizer) -> np.dtype:
    """The smallest unsigned dtype holding every id the tokenizer's encoded text can contain.

    Example:
        >>> shard_dtype(ByteTokenizer())
        dtype('uint8')
    """
    from data_pipeline.shards.mds import token_dtype

    return token_dtype(getattr(tokenizer, "max_stored_id", tokenizer.vocab_size - 1) + 1)


def encode_documents(
    tokenizer: Tokenizer, texts: Sequence[str], utf8: Sequence[bytes] | None = None
) -> np.ndarray:
    """Ids of `texts`, each followed by `tokenizer.eos_id`, as one array.

    Uses the tokenizer's batched `encode_documents` when it has one.
    """
    batched = getattr(tokenizer, "encode_documents", None)
    if batched is not None:
        return batched(texts, utf8)
    eos = np.array([tokenizer.eos_id])
    parts = [np.concatenate([np.asarray(tokenizer.encode(t)), eos]) for t in texts]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


_REGISTRY: dict[str, Callable[[], Tokenizer]] = {"byte": ByteTokenizer, "bytes": ByteTokenizer}


def available_tokenizers() -> list[str]:
    """Names accepted by `get_tokenizer` (plus `spm:PATH` for a SentencePiece model)."""
    return sorted(_REGISTRY)


def get_tokenizer(name: str) -> Tokenizer:
    """Builds a tokenizer from its name: `byte`/`bytes`, or `spm:PATH` to a SentencePiece model.

    Args:
        name: Registry name or `spm:PATH`.

    Returns:
        The tokenizer.

    Raises:
        ValueError: If the name is unknown; the message lists the known names.
        FileNotFoundError: If a SentencePiece model file does not exist.
    """
    if name.startswith("spm:"):
        return SentencePieceTokenizer(name[4:])
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown tokenizer {name!r}; known tokenizers: {available_tokenizers()} or "
            "spm:PATH/TO/MODEL"
        ) from None
    return factory()


def tokenizer_from_manifest(
    data_dir: str | os.PathLike[str], manifest: dict[str, Any]
) -> Tokenizer:
    """The tokenizer a shard directory was built with (its model file is stored beside it).

    Args:
        data_dir: The shard directory.
        manifest: Its manifest (`shards.read_manifest`).

    Returns:
        The tokenizer.

    Raises:
        ValueError: If a stored SentencePiece model does not match the manifest's checksum.
    """
    info = manifest["tokenizer"]
    if info["name"] != "spm":
        return get_tokenizer(info["name"])
    from data_pipeline.shards.remote import fetch  # a URL's model is downloaded once per process

    tokenizer = SentencePieceTokenizer(fetch(data_dir, info.get("model_file", SPM_MODEL_NAME)))
    if info.get("model_sha256") and tokenizer.sha256 != info["model_sha256"]:
        raise ValueError(
            f"{tokenizer.model_file}: sha256 {tokenizer.sha256} differs from the manifest's "
            f"{info['model_sha256']}"
        )
    return tokenizer
