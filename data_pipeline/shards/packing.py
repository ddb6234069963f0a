"""Packing: documents -> token ids -> fixed-length samples, with a hash-based train/val split.

Documents are tokenized, each followed by one separator id (the tokenizer's EOS), concatenated
into one stream per split, and cut into samples of exactly `sample_len` tokens. Samples cross
document boundaries (the separator marks them); the final partial sample of each split is dropped
and counted. The caller chooses `sample_len`: `seq_len` for MLM, `seq_len + 1` for AR (the extra
token is the last target), see `sample_len_for`.

The split is decided per document from a hash of its text, so it is stable across runs, machines,
reading orders and worker counts, and exact duplicates always land in the same split (no
train/val leakage).

Document boundaries stay visible to the collator: every document ends with the separator, so
`tokens == separator_id` marks them (`collators.segment_ids` numbers the documents of a sample).

`DocumentPacker` is the fast path the converter uses: it tokenizes documents in batches of about
a megabyte (`tokenizer.encode_documents`, one NumPy pass for bytes, one C++ call for
SentencePiece) and yields whole `[n, sample_len]` blocks of samples.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from data_pipeline.sources.records import DEFAULT_MAX_DOC_BYTES, Document, Record, Rejected
from data_pipeline.tokenization.tokenizer import Tokenizer, encode_documents

__all__ = [
    "FILTER_REASONS",
    "OBJECTIVES",
    "SPLITS",
    "DocumentPacker",
    "PackStats",
    "SequencePacker",
    "StrictError",
    "assign_split",
    "hash_fraction",
    "pack_documents",
    "sample_len_for",
]

SPLITS = ("train", "val")
OBJECTIVES = ("mlm", "ar")
MAX_REJECTED_EXAMPLES = 20
"""How many rejection messages `PackStats` keeps (all are counted)."""
EXAMPLES_PER_REASON = 5
"""How many messages `PackStats` keeps for each reason."""
FILTER_REASONS = frozenset({"redirect", "non_article", "no_prose"})
"""Rejection reasons that are filtering by design, not damaged input: `--strict` tolerates them
(every Wikipedia dump has redirects and non-article pages)."""
BATCH_BYTES = 1 << 20
"""Text bytes tokenized per batch by `DocumentPacker`."""


class StrictError(ValueError):
    """A record was rejected while `strict` was set; the message names the file and line."""


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


def hash_fraction(key: str | bytes) -> float:
    """Maps a string (or its UTF-8 bytes) to a stable number in `[0, 1)` (64-bit BLAKE2b)."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    digest = hashlib.blake2b(data, digest_size=8).digest()
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

    def add_array(self, ids: np.ndarray) -> np.ndarray:
        """Appends ids and returns every sample now complete as one `[n, sample_len]` array."""
        if ids.size:
            self._parts.append(np.asarray(ids, dtype=self.dtype))
            self._pending += ids.size
        n_full = self._pending // self.sample_len
        if not n_full:
            return np.empty((0, self.sample_len), self.dtype)
        stream = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        cut = n_full * self.sample_len
        rest = stream[cut:]
        self._parts = [rest.copy()] if rest.size else []
        self._pending = rest.size
        return stream[:cut].reshape(n_full, self.sample_len)

    def finish(self) -> int:
        """Drops the final partial sample and returns how many tokens it held."""
        dropped = self._pending
        self._parts = []
        self._pending = 0
        return dropped


@dataclass
class PackStats:
    """Counts kept while packing; written to the shard manifest (summed over parts).

    Attributes:
        documents_read: Records seen (documents and rejected records).
        documents_kept: Documents tokenized into a split.
        rejected: Rejected records and empty documents, by reason.
        rejected_examples: The first `MAX_REJECTED_EXAMPLES` rejection messages.
        examples_by_reason: The first `EXAMPLES_PER_REASON` messages of each reason.
        bytes_in: UTF-8 bytes of the kept documents.
        documents: Kept documents per split.
        tokens_in: Tokens per split including separators, before cutting.
        samples: Complete samples per split.
        tokens_dropped: Tokens of the dropped final partial sample, per split.
        strict: If True, `reject` raises `StrictError` for any reason not in `FILTER_REASONS`.
    """

    documents_read: int = 0
    documents_kept: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_examples: list[str] = field(default_factory=list)
    examples_by_reason: dict[str, list[str]] = field(default_factory=dict)
    bytes_in: int = 0
    documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    tokens_in: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    samples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    tokens_dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    strict: bool = False

    def reject(self, reason: str, detail: str) -> None:
        """Counts one rejected record.

        Raises:
            StrictError: In strict mode, for a reason that is not mere filtering.
        """
        if self.strict and reason not in FILTER_REASONS:
            raise StrictError(f"{detail} [{reason}; --strict]")
        self.rejected[reason] += 1
        if len(self.rejected_examples) < MAX_REJECTED_EXAMPLES:
            self.rejected_examples.append(detail)
        examples = self.examples_by_reason.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(detail)

    @property
    def documents_rejected(self) -> int:
        """Total rejected records."""
        return sum(self.rejected.values())

    def merge(self, other: PackStats) -> None:
        """Adds the counts of `other` (a later part) to these; examples keep their order."""
        self.documents_read += other.documents_read
        self.documents_kept += other.documents_kept
        self.rejected.update(other.rejected)
        room = MAX_REJECTED_EXAMPLES - len(self.rejected_examples)
        self.rejected_examples.extend(other.rejected_examples[: max(room, 0)])
        for reason, examples in other.examples_by_reason.items():
            mine = self.examples_by_reason.setdefault(reason, [])
            mine.extend(examples[: max(EXAMPLES_PER_REASON - len(mine), 0)])
        self.bytes_in += other.bytes_in
        for counts, more in (
            (self.documents, other.documents),
            (self.tokens_in, other.tokens_in),
            (self.samples, other.samples),
            (self.tokens_dropped, other.tokens_dropped),
        ):
            for split in SPLITS:
                counts[split] += more[split]

    def state(self) -> dict[str, object]:
        """Everything, JSON-able (`from_state` restores it)."""
        return {
            "documents_read": self.documents_read,
            "documents_kept": self.documents_kept,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_examples": self.rejected_examples,
            "examples_by_reason": self.examples_by_reason,
            "bytes_in": self.bytes_in,
            "documents": self.documents,
            "tokens_in": self.tokens_in,
            "samples": self.samples,
            "tokens_dropped": self.tokens_dropped,
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> PackStats:
        """The inverse of `state`."""
        stats = cls(**{k: v for k, v in state.items() if k != "rejected"})  # type: ignore[arg-type]
        stats.rejected = Counter(state["rejected"])  # type: ignore[arg-type]
        return stats

    def to_dict(self, sample_len: int) -> dict[str, object]:
        """A JSON-able summary: the `documents`, `bytes_in`, `tokens`, `splits` of a manifest."""
        return {
            "documents": {
                "read": self.documents_read,
                "kept": self.documents_kept,
                "rejected": self.documents_rejected,
                "rejected_by_reason": dict(sorted(self.rejected.items())),
                "filtered_reasons": sorted(FILTER_REASONS & set(self.rejected)),
                "rejected_examples": list(self.rejected_examples),
                "examples_by_reason": {
                    k: self.examples_by_reason[k] for k in sorted(self.examples_by_reason)
                },
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


class DocumentPacker:
    """Splits, tokenizes (in batches) and packs documents into `[n, sample_len]` sample blocks.

    Empty or whitespace-only documents are rejected (`empty`), so are documents above
    `max_doc_bytes` (`too_large`) and texts that are not valid Unicode (`invalid_utf8`, e.g. a
    lone surrogate from a JSON escape). Each kept document is followed by `tokenizer.eos_id`.

    Args:
        tokenizer: Encodes the text (`encode_documents` when it has one).
        sample_len: Tokens per sample (see `sample_len_for`).
        val_fraction: Fraction of documents (by text hash) sent to `"val"`, in `[0, 1]`.
        dtype: Token dtype of the samples (must hold every id).
        stats: Filled in as records are consumed.
        max_doc_bytes: Larger documents are rejected.

    Raises:
        ValueError: For a `val_fraction` outside `[0, 1]` or a vocabulary too large for `dtype`.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        sample_len: int,
        val_fraction: float,
        dtype: np.dtype | type = np.uint16,
        stats: PackStats | None = None,
        max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    ) -> None:
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
        self.dtype = np.dtype(dtype)
        max_id = getattr(tokenizer, "max_stored_id", tokenizer.vocab_size - 1)
        if max_id > np.iinfo(self.dtype).max:
            raise ValueError(
                f"vocab_size {tokenizer.vocab_size} does not fit the {self.dtype.name} shards"
            )
        self.tokenizer = tokenizer
        self.sample_len = sample_len
        self.val_fraction = val_fraction
        self.stats = stats if stats is not None else PackStats()
        self.max_doc_bytes = max_doc_bytes
        # hash_fraction(text) < val_fraction, without the float division per document
        self._val_threshold = int(val_fraction * 2.0**64)
        self._packers = {split: SequencePacker(sample_len, self.dtype) for split in SPLITS}
        self._texts: dict[str, list[str]] = {split: [] for split in SPLITS}
        self._utf8: dict[str, list[bytes]] = {split: [] for split in SPLITS}
        self._buffered = dict.fromkeys(SPLITS, 0)

    def add(self, record: Record) -> Iterator[tuple[str, np.ndarray]]:
        """Takes one record; yields `(split, samples [n, sample_len])` blocks that became full.

        Raises:
            TypeError: For a record that is neither a `Document` nor a `Rejected`.
            StrictError: In strict mode, for a rejected record (see `PackStats`).
        """
        stats = self.stats
        stats.documents_read += 1
        if isinstance(record, Rejected):
            stats.reject(record.reason, record.detail)
            return
        if not isinstance(record, Document):
            raise TypeError(f"expected Document or Rejected records, got {type(record).__name__}")
        text = record.text
        if not text.strip():
            stats.reject("empty", f"{record.doc_id}: empty or whitespace-only document")
            return
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as err:
            detail = f"{record.doc_id}: not valid Unicode at character {err.start} ({err.reason})"
            stats.reject("invalid_utf8", detail)
            return
        if len(data) > self.max_doc_bytes:
            detail = f"{record.doc_id}: document larger than max_doc_bytes={self.max_doc_bytes}"
            stats.reject("too_large", detail)
            return
        digest = hashlib.blake2b(data, digest_size=8).digest()
        split = "val" if int.from_bytes(digest, "big") < self._val_threshold else "train"
        stats.documents_kept += 1
        stats.documents[split] += 1
        stats.bytes_in += len(data)
        self._texts[split].append(text)
        self._utf8[split].append(data)
        self._buffered[split] += len(data)
        if self._buffered[split] >= BATCH_BYTES:
            yield from self._flush(split)

    def _flush(self, split: str) -> Iterator[tuple[str, np.ndarray]]:
        if not self._texts[split]:
            return
        ids = encode_documents(self.tokenizer, self._texts[split], self._utf8[split])
        self._texts[split], self._utf8[split], self._buffered[split] = [], [], 0
        self.stats.tokens_in[split] += ids.size
        block = self._packers[split].add_array(ids)
        if block.shape[0]:
            self.stats.samples[split] += block.shape[0]
            yield split, block

    def finish(self) -> Iterator[tuple[str, np.ndarray]]:
        """Tokenizes what is buffered, yields the last blocks and drops the partial samples."""
        for split in SPLITS:
            yield from self._flush(split)
            self.stats.tokens_dropped[split] += self._packers[split].finish()

    def pack(self, records: Iterable[Record]) -> Iterator[tuple[str, np.ndarray]]:
        """`add` for every record, then `finish`."""
        for record in records:
            yield from self.add(record)
        yield from self.finish()


def pack_documents(
    records: Iterable[Record],
    tokenizer: Tokenizer,
    sample_len: int,
    val_fraction: float,
    stats: PackStats | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Tokenizes and packs documents into `(split, sample)` pairs, one sample at a time.

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
    packer = DocumentPacker(tokenizer, sample_len, val_fraction, np.uint16, stats)
    for split, block in packer.pack(records):
        for sample in block:
            yield split, sample.copy()
