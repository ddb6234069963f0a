"""Data pipeline: raw corpus -> documents -> packed token shards (MDS) -> batches.

    sources/        raw files -> `Document`/`Rejected` records
        inputs.py       input files (paths, globs, dirs, s3:// gs://), decompression, truncation
        records.py      the record types and the helpers every reader shares (imports no reader)
        text.py         plain-text and JSON-lines readers
        formats.py      C4, WikiExtractor output, Parquet
        wikipedia.py    MediaWiki XML dumps -> chunks of pages -> articles (wikitext.py: prose)
        demo.py         the demo corpus: the standard library's docstrings
        kinds.py        source kinds -> readers: `read_input`, `iter_documents`, `SourceOptions`
    tokenization/   `ByteTokenizer` (262 ids), `SentencePieceTokenizer`; spm_train.py `train_spm`
    shards/         documents -> samples -> MDS shard directories
        packing.py      documents -> fixed-length samples; hash-based train/val split
        mds.py          `TokenShardWriter` (vectorised MDS writer), sub-index merging
        convert.py      parts, worker processes, resume
        prepare.py      `prepare`, the one text shard writer (perceiver data prepare)
        manifest.py     the shard contract: `read_manifest`, `write_manifest`, `check_shards`
                        (one validator, text, video, image and flow), publishing a build
        remote.py       s3:// gs:// outputs and inputs
    loading/        `build_dataloader` (dataset.py), mixtures.py, collators.py (MLM/AR batches,
                    image and flow batches)
    video/          labelled videos -> clip shards (clips.py records, decode.py, labels.py,
                    shards.py, cli.py)
    images/         labelled images -> image shards (listing.py layouts, prepare.py decoding and
                    conversion, build.py the parallel resumable writer of image and flow shards)
    flow/           optical flow: formats.py (.flo, KITTI PNG, colour wheel), generate.py
                    (procedural pairs), shards.py (generate-flow), readers.py (prepare-flow)
    inspection.py   `perceiver data inspect`
    cli.py          `perceiver data prepare|train-spm|inspect|prepare-video|prepare-images|
                    generate-flow|prepare-flow` (argparse wiring)
    files.py        atomic file writes

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
    "read_manifest": "shards.manifest",
    "write_manifest": "shards.manifest",
    "check_shards": "shards.manifest",
    "prepare_corpus": "shards.prepare",
    "prepare_demo_corpus": "shards.prepare",
    "build_dataloader": "loading.dataset",
    "ensure_distributed_env": "loading.dataset",
    "stack_tokens": "loading.collators",
    "MLMMasker": "loading.collators",
    "ARTargets": "loading.collators",
    "make_batch_transform": "loading.collators",
    "add_data_subcommands": "cli",
    "inspect_shards": "inspection",
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
    "segment_ids": "loading.collators",
    "stack_images": "loading.collators",
    "stack_flow": "loading.collators",
    "check_image_manifest": "shards.manifest",
    "check_flow_manifest": "shards.manifest",
    "prepare_images": "images.prepare",
    "generate_flow": "flow.shards",
    "prepare_flow": "flow.readers",
    "generate_pair": "flow.generate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
