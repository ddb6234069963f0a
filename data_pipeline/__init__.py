"""Data pipeline: raw corpus -> documents -> packed token shards (MDS) -> batches.

    corpus.py      readers yielding `Document`/`Rejected` records; the stdlib-docstring demo
    tokenizers.py  `ByteTokenizer` (262 ids: 6 specials + bytes)
    packing.py     documents -> fixed-length samples; hash-based train/val split
    shards.py      `write_shards` -> DIR/{train,val} + manifest.json; `prepare_demo_corpus`
    streaming.py   `build_dataloader` (StreamingDataset + StreamingDataLoader)
    collators.py   `stack_tokens` (collate_fn); `MLMMasker`, `ARTargets` (batch transforms)
    cli.py         `perceiver data prepare|inspect`

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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
