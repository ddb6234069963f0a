"""`perceiver data train-spm`: a SentencePiece model trained on a sample of the corpus.

    train_spm("c4", ["c4/en/c4-train.*.json.gz"], "spm/c4_32k.model", vocab_size=32000)

The sample: the first `sample_bytes / len(inputs)` bytes of documents of every input (read with
the same readers and cleaning as `prepare`, in parallel over inputs), split into lines of at most
`MAX_SENTENCE_BYTES`. Spread the sample by passing many inputs (C4's 1024 files give a sample from
all of it; the head of a single Wikipedia dump is biased towards old, low-id articles).

The model: unigram (or BPE), 32k pieces by default (fewer when the sample holds fewer distinct
pieces: a warning names both sizes and whether the corpus or `--sample-mb` was too small; the
summary keeps `vocab_size_requested`), byte fallback (no unknown text), identity
normalisation and no whitespace collapsing (decode(encode(text)) == text, so shards round-trip
byte for byte), and the byte tokenizer's special ids (PAD 0, BOS 1, EOS 2, MASK 3, CLS 4, SEP 5)
plus UNK 6 (see `tokenizers.SentencePieceTokenizer`).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.sources.inputs import download_input, resolve_inputs
from data_pipeline.sources.kinds import SOURCES, SourceOptions, input_suffixes, read_input
from data_pipeline.sources.records import Document
from data_pipeline.tokenization.tokenizer import SentencePieceTokenizer

__all__ = ["DEFAULT_VOCAB_SIZE", "MAX_SENTENCE_BYTES", "sample_lines", "train_spm"]

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 32000
DEFAULT_SAMPLE_BYTES = 200_000_000
MAX_SENTENCE_BYTES = 4000
"""Longer lines are cut at a space (SentencePiece skips sentences over 4192 bytes)."""


def _lines(text: str) -> Iterator[str]:
    for line in text.split("\n"):
        line = line.strip()
        while len(line.encode("utf-8")) > MAX_SENTENCE_BYTES:
            cut = line.rfind(" ", 0, MAX_SENTENCE_BYTES // 4)
            cut = cut if cut > 0 else MAX_SENTENCE_BYTES // 4
            yield line[:cut]
            line = line[cut:].strip()
        if line:
            yield line


def sample_lines(
    source: str, path: str, budget: int, options: SourceOptions, out_file: str
) -> dict[str, Any]:
    """Writes the training lines of one input's first `budget` document bytes to `out_file`.

    Args:
        source: Source kind.
        path: A local input file (or URL, downloaded beside `out_file`).
        budget: Document bytes to take.
        options: Reader settings.
        out_file: Where the lines go (UTF-8, one per line).

    Returns:
        `{"input", "documents", "bytes", "lines"}`.
    """
    local = path
    if "://" in path:
        local = str(download_input(path, Path(out_file).parent / "download"))
    documents = taken = lines = 0
    with open(out_file, "w", encoding="utf-8") as out:
        for record in read_input(source, local, options):
            if not isinstance(record, Document) or not record.text.strip():
                continue
            documents += 1
            taken += len(record.text.encode("utf-8"))
            for line in _lines(record.text):
                out.write(line + "\n")
                lines += 1
            if taken >= budget:
                break
    if local != path:
        os.unlink(local)
    return {"input": path, "documents": documents, "bytes": taken, "lines": lines}


def train_spm(
    source: str,
    inputs: Sequence[str | os.PathLike[str]],
    model_path: str | os.PathLike[str],
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    model_type: str = "unigram",
    sample_bytes: int = DEFAULT_SAMPLE_BYTES,
    character_coverage: float = 0.9995,
    options: SourceOptions | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Trains a SentencePiece model on a sample of the inputs (see the module docstring).

    Args:
        source: Source kind (`sources.SOURCES`, not `demo`).
        inputs: Files, globs, directories or URLs.
        model_path: Output `.model` file (a `.vocab` and a `.json` summary are written beside).
        vocab_size: Number of pieces, specials and 256 byte pieces included.
        model_type: `unigram` or `bpe`.
        sample_bytes: Document bytes sampled over all inputs.
        character_coverage: Characters covered by pieces (the rest falls back to bytes).
        options: Reader settings.
        workers: Processes reading inputs, and SentencePiece training threads.

    Returns:
        A summary (also written to `MODEL.json`): sample size, settings, model sha256.

    Raises:
        ValueError: For bad arguments or an empty sample.
        CorpusError: If an input cannot be read at all.
    """
    import sentencepiece as spm

    if source not in SOURCES or source == "demo":
        raise ValueError(f"train-spm needs a corpus source from {SOURCES[:-1]}, got {source!r}")
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be unigram or bpe, got {model_type!r}")
    if vocab_size < 300:
        raise ValueError(
            f"vocab_size must be at least 300 (7 specials + 256 bytes), got {vocab_size}"
        )
    started = time.monotonic()
    options = options or SourceOptions()
    found = resolve_inputs(inputs, input_suffixes(source))
    budget = max(sample_bytes // len(found), 1)
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".spm-", dir=model_path.parent) as tmp:
        files = [str(Path(tmp) / f"sample-{i:05d}.txt") for i in range(len(found))]
        jobs = [(source, item.name, budget, options, f) for item, f in zip(found, files)]
        if workers > 1 and len(jobs) > 1:
            context = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(min(workers, len(jobs)), context) as pool:
                samples = list(pool.map(sample_lines, *zip(*jobs)))
        else:
            samples = [sample_lines(*job) for job in jobs]
        if not any(s["lines"] for s in samples):
            raise ValueError(f"no text to train on in {[item.name for item in found]}")
        prefix = Path(tmp) / "model"
        spm.SentencePieceTrainer.train(
            input=",".join(f for f, s in zip(files, samples) if s["lines"]),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            character_coverage=character_coverage,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=6,
            control_symbols=["[MASK]", "[CLS]", "[SEP]"],
            max_sentence_length=MAX_SENTENCE_BYTES * 2,
            hard_vocab_limit=False,  # a small sample may hold fewer pieces: warned below
            shuffle_input_sentence=True,
            num_threads=max(workers, 1),
            minloglevel=2,
        )
        shutil.move(str(prefix) + ".model", model_path)
        shutil.move(str(prefix) + ".vocab", model_path.with_suffix(".vocab"))
    tokenizer = SentencePieceTokenizer(model_path)  # checks the special ids
    sampled = sum(s["bytes"] for s in samples)
    if tokenizer.vocab_size < vocab_size:
        capped = any(s["bytes"] >= budget for s in samples)
        why = (
            f"the sample (--sample-mb {sample_bytes / 1e6:g}) was too small"
            if capped
            else "the corpus is too small: all of it was read"
        )
        logger.warning(
            "%s: %d pieces instead of the %d asked for: the %.2f MB of text sampled hold no "
            "more (%s); give more text or a smaller --vocab-size",
            model_path, tokenizer.vocab_size, vocab_size, sampled / 1e6, why,
        )  # fmt: skip
    summary = {
        "model": str(model_path),
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "vocab_size": tokenizer.vocab_size,
        "vocab_size_requested": vocab_size,
        "model_type": model_type,
        "character_coverage": character_coverage,
        "source": source,
        "sample": samples,
        "sample_bytes": sampled,
        "wall_time_s": round(time.monotonic() - started, 2),
    }
    model_path.with_suffix(".json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    logger.info(
        "trained %s: %d pieces on %.1f MB of text in %.0f s",
        model_path, tokenizer.vocab_size, summary["sample_bytes"] / 1e6, summary["wall_time_s"],
    )  # fmt: skip
    return summary
