"""Data pipeline: raw corpus -> documents -> packed token shards (MDS) -> batches.

    inputs.py      input files (paths, globs, dirs, s3:// gs://), decompression, truncation
    corpus.py      `Document`/`Rejected` records; text and JSON-lines readers; stdlib demo
    wikitext.py    wikitext -> clean prose
    wikipedia.py   MediaWiki XML dumps -> chunks of pages -> articles
    sources.py     source kinds (wikipedia, wikiextractor, c4, jsonl, text, parquet, demo)
    tokenizers.py  `ByteTokenizer` (262 ids: 6 specials + bytes), `SentencePieceTokenizer`
    spm.py         `train_spm` (perceiver data train-spm)
    packing.py     documents -> fixed-length samples; hash-based train/val split
    mds.py         `TokenShardWriter` (vectorised MDS writer), sub-index merging
    convert.py     parts, worker processes, resume
    prepare.py     `prepare` (perceiver data prepare): plan -> parts -> merged shards + manifest
    shards.py      `write_shards` (one process) -> DIR/{train,val} + manifest.json; manifests
    streaming.py   `build_dataloader` (StreamingDataset + StreamingDataLoader)
    mixtures.py    several datasets in proportions (train), interleaved validation
    collators.py   `stack_tokens` (collate_fn); `MLMMasker`, `ARTargets` (batch transforms)
    cli.py         `perceiver data prepare|train-spm|inspect`

Nothing here imports `pretrain`. Names below are imported lazily, so `import data_pipeline` is
cheap and `mosaicml-streaming` (slow to import) loads only when shards or loaders are used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ByteTokenizer": "tokenizers",
    "get_tokenizer": "tokenizers",
    "Document": "corpus",
    "Rejected": "corpus",
    "CorpusError": "corpus",
    "iter_documents": "corpus",
    "iter_stdlib_docstrings": "corpus",
    "sample_len_for": "packing",
    "pack_documents": "packing",
    "write_shards": "shards",
    "read_manifest": "shards",
    "check_manifest": "shards",
    "prepare_corpus": "shards",
    "prepare_demo_corpus": "shards",
    "build_dataloader": "streaming",
    "ensure_distributed_env": "streaming",
    "stack_tokens": "collators",
    "MLMMasker": "collators",
    "ARTargets": "collators",
    "make_batch_transform": "collators",
    "add_data_subcommands": "cli",
    "SentencePieceTokenizer": "tokenizers",
    "tokenizer_from_manifest": "tokenizers",
    "prepare": "prepare",
    "train_spm": "spm",
    "clean_wikitext": "wikitext",
    "read_dump": "wikipedia",
    "read_input": "sources",
    "MixtureSource": "mixtures",
    "build_mixture_dataloader": "mixtures",
    "build_val_loader": "mixtures",
    "check_datasets": "mixtures",
    "segment_ids": "collators",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
