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
    "ByteTokenizer": "tokenization.tokenizer",
    "get_tokenizer": "tokenization.tokenizer",
    "Document": "sources.records",
    "Rejected": "sources.records",
    "CorpusError": "sources.records",
    "iter_documents": "sources.kinds",
    "iter_stdlib_docstrings": "sources.demo",
    "sample_len_for": "shards.packing",
    "pack_documents": "shards.packing",
    "write_shards": "shards.manifest",
    "read_manifest": "shards.manifest",
    "check_manifest": "shards.manifest",
    "prepare_corpus": "shards.manifest",
    "prepare_demo_corpus": "shards.manifest",
    "build_dataloader": "loading.dataset",
    "ensure_distributed_env": "loading.dataset",
    "stack_tokens": "loading.collators",
    "MLMMasker": "loading.collators",
    "ARTargets": "loading.collators",
    "make_batch_transform": "loading.collators",
    "add_data_subcommands": "cli",
    "SentencePieceTokenizer": "tokenization.tokenizer",
    "tokenizer_from_manifest": "tokenization.tokenizer",
    "prepare": "shards.prepare",
    "train_spm": "tokenization.spm_train",
    "clean_wikitext": "sources.wikitext",
    "read_dump": "sources.wikipedia",
    "read_input": "sources.kinds",
    "MixtureSource": "loading.mixtures",
    "build_mixture_dataloader": "loading.mixtures",
    "build_val_loader": "loading.mixtures",
    "check_datasets": "loading.mixtures",
    "segment_ids": "loading.collators",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
