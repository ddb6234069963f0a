"""Packing: documents -> token ids -> fixed-length samples, with a hash-based train/val split.

Documents are tokenized, each followed by one separator id (the tokenizer's EOS), concatenated
into one stream per split, and cut into samples of exactly `sample_len` tokens. Samples cross
document boundaries (the separator marks them); the final partial sample of each split is dropped
and counted. The caller chooses `sample_len`: `seq_len` for MLM, `seq_len + 1` for AR (the extra
token is the last target), see `sample_len_for`.

The split is decided per document from a hash of its text, so it is stable across runs, machines
and reading orders, and exact duplicates always land in the same split (no train/val leakage).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from data_pipeline.corpus import Document, Record, Rejected
from data_pipeline.tokenizers import Tokenizer

__all__ = [
    "OBJECTIVES",
    "SPLITS",
    "PackStats",
    "SequencePacker",
    "assign_split",
    "hash_fraction",
    "pack_documents",
    "sample_len_for",
]

SPLITS = ("train", "val")
OBJECTIVES = ("mlm", "ar")
MAX_REJECTED_EXAMPLES = 20
"""How many rejection messages `PackStats` keeps (all are counted)."""


def sample_len_for(objective: str, seq_len: int) -> int:
    """Tokens per stored sample: `seq_len` for MLM, `seq_len + 1` for AR (inputs + last target).

    Args:
        objective: `"mlm"` or `"ar"`.
        seq_len: Model input length.

    Returns:
        The sample length to pack to.

    Raises:
        ValueError: For an unknown objective or a `seq_len` below 1.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    return seq_len + 1 if objective == "ar" else seq_len


def hash_fraction(key: str) -> float:
    """Maps a string to a stable number in `[0, 1)` (64-bit BLAKE2b; same on every machine)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_split(text: str, val_fraction: float) -> str:
    """The split of a document: `"val"` if `hash_fraction(text) < val_fraction`, else `"train"`.

    Args:
        text: Document text (its hash decides).
        val_fraction: Expected fraction of documents in validation, in `[0, 1]`.

    Returns:
        `"train"` or `"val"`.
    """
    return "val" if hash_fraction(text) < val_fraction else "train"


class SequencePacker:
    """Concatenates token arrays and cuts them into samples of exactly `sample_len` tokens.

    Example:
        >>> packer = SequencePacker(sample_len=4, dtype=np.uint16)
        >>> [s.tolist() for s in packer.add(np.arange(10))]
        [[0, 1, 2, 3], [4, 5, 6, 7]]
        >>> packer.pending
        2
    """

    def __init__(self, sample_len: int, dtype: np.dtype | type = np.uint16) -> None:
        if sample_len < 1:
            raise ValueError(f"sample_len must be at least 1, got {sample_len}")
        self.sample_len = sample_len
        self.dtype = np.dtype(dtype)
        self._parts: list[np.ndarray] = []
        self._pending = 0

    @property
    def pending(self) -> int:
        """Tokens buffered that do not yet fill a sample."""
        return self._pending

    def add(self, ids: np.ndarray) -> Iterator[np.ndarray]:
        """Appends ids and yields every sample that is now complete.

        Args:
            ids: 1-D token ids.

        Yields:
            Samples, 1-D arrays of `sample_len` ids (copies, safe to keep).
        """
        if ids.size == 0:
            return
        self._parts.append(np.asarray(ids, dtype=self.dtype))
        self._pending += ids.size
        if self._pending < self.sample_len:
            return
        stream = np.concatenate(self._parts)
        n_full = stream.size // self.sample_len
        for i in range(n_full):
            yield stream[i * self.sample_len : (i + 1) * self.sample_len].copy()
        rest = stream[n_full * self.sample_len :]
        self._parts = [rest] if rest.size else []
        self._pending = rest.size

    def finish(self) -> int:
        """Drops the final partial sample and returns how many tokens it held."""
        dropped = self._pending
        self._parts = []
        self._pending = 0
        return dropped


@dataclass
class PackStats:
    """Counts kept while packing; written to the shard manifest.

    Attributes:
        documents_read: Records seen (documents and rejected records).
        documents_kept: Documents tokenized into a split.
        rejected: Rejected records and empty documents, by reason.
        rejected_examples: The first `MAX_REJECTED_EXAMPLES` rejection messages.
        bytes_in: UTF-8 bytes of the kept documents.
        documents: Kept documents per split.
        tokens_in: Tokens per split including separators, before cutting.
        samples: Complete samples per split.
        tokens_dropped: Tokens of the dropped final partial sample, per split.
    """

    documents_read: int = 0
    documents_kept: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_examples: list[str] = field(default_factory=list)
    bytes_in: int = 0
    documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    tokens_in: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    samples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    tokens_dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))

    def reject(self, reason: str, detail: str) -> None:
        """Counts one rejected record."""
        self.rejected[reason] += 1
        if len(self.rejected_examples) < MAX_REJECTED_EXAMPLES:
            self.rejected_examples.append(detail)

    @property
    def documents_rejected(self) -> int:
        """Total rejected records."""
        return sum(self.rejected.values())

    def to_dict(self, sample_len: int) -> dict[str, object]:
        """A JSON-able summary: the `documents`, `bytes_in`, `tokens`, `splits` of a manifest."""
        return {
            "documents": {
                "read": self.documents_read,
                "kept": self.documents_kept,
                "rejected": self.documents_rejected,
                "rejected_by_reason": dict(sorted(self.rejected.items())),
                "rejected_examples": list(self.rejected_examples),
            },
            "bytes_in": self.bytes_in,
            "tokens": {
                "in": sum(self.tokens_in.values()),
                "written": sum(self.samples.values()) * sample_len,
                "dropped": sum(self.tokens_dropped.values()),
            },
            "splits": {
                split: {
                    "documents": self.documents[split],
                    "samples": self.samples[split],
                    "tokens_written": self.samples[split] * sample_len,
                    "tokens_dropped": self.tokens_dropped[split],
                }
                for split in SPLITS
            },
        }


def pack_documents(
    records: Iterable[Record],
    tokenizer: Tokenizer,
    sample_len: int,
    val_fraction: float,
    stats: PackStats | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Tokenizes and packs documents into `(split, sample)` pairs.

    Empty or whitespace-only documents are counted as rejected (`empty`) and skipped, like the
    readers' `Rejected` records. Each kept document is followed by `tokenizer.eos_id`.

    Args:
        records: Reader output (`Document` and `Rejected` records).
        tokenizer: Gives `encode` and `eos_id`; ids must fit in `uint16`.
        sample_len: Tokens per sample (see `sample_len_for`).
        val_fraction: Fraction of documents (by text hash) sent to `"val"`, in `[0, 1]`.
        stats: Filled in as records are consumed; pass one to read the counts afterwards.

    Yields:
        `(split, sample)` with `split` in `SPLITS` and `sample` a `uint16` array of `sample_len`.

    Raises:
        ValueError: For a `val_fraction` outside `[0, 1]` or a vocabulary too large for uint16.
        TypeError: For a record that is neither a `Document` nor a `Rejected`.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    if tokenizer.vocab_size > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"vocab_size {tokenizer.vocab_size} does not fit the uint16 shards")
    stats = stats if stats is not None else PackStats()
    packers = {split: SequencePacker(sample_len, np.uint16) for split in SPLITS}
    separator = np.array([tokenizer.eos_id], dtype=np.uint16)
    for record in records:
        stats.documents_read += 1
        if isinstance(record, Rejected):
            stats.reject(record.reason, record.detail)
            continue
        if not isinstance(record, Document):
            raise TypeError(f"expected Document or Rejected records, got {type(record).__name__}")
        if not record.text.strip():
            stats.reject("empty", f"{record.doc_id}: empty or whitespace-only document")
            continue
        split = assign_split(record.text, val_fraction)
        ids = np.asarray(tokenizer.encode(record.text), dtype=np.uint16)
        stats.documents_kept += 1
        stats.documents[split] += 1
        stats.bytes_in += len(record.text.encode("utf-8"))
        stats.tokens_in[split] += ids.size + 1
        for sample in packers[split].add(np.concatenate([ids, separator])):
            stats.samples[split] += 1
            yield split, sample
    for split, packer in packers.items():
        stats.tokens_dropped[split] += packer.finish()
