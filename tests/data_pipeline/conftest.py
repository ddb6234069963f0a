"""Shared fixtures: tiny shard directories built once per session."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from data_pipeline.shards.packing import assign_split
from data_pipeline.shards.prepare import prepare
from data_pipeline.sources.kinds import SourceOptions
from data_pipeline.sources.records import Document
from data_pipeline.tokenization.tokenizer import ByteTokenizer


def write_documents(
    documents: Iterable[Document],
    out: str | os.PathLike[str],
    sample_len: int,
    val_fraction: float = 0.0,
    **kwargs: Any,
) -> dict[str, Any]:
    """Shards of in-memory documents, written by `prepare` (the one shard writer): the documents
    go to a JSON-lines input beside `out` (`OUT.jsonl`, ids kept, in order), read back as such.

    MLM samples of `sample_len` tokens, zstd (the MDS default level); `kwargs` go to `prepare`.
    """
    out = Path(out)
    source = out.parent / f"{out.name}.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": doc.text, "id": doc.doc_id}) + "\n" for doc in documents]
    source.write_text("".join(lines), encoding="utf-8")
    kwargs.setdefault("compression", "zstd")
    return prepare(
        "jsonl",
        [source],
        out,
        seq_len=sample_len,
        objective="mlm",
        val_fraction=val_fraction,
        options=SourceOptions(id_field="id"),
        **kwargs,
    )


@pytest.fixture(autouse=True, scope="session")
def _never_clean_shared_memory():
    """The first `ensure_distributed_env` call of a process decides whether streaming's shared
    memory of the whole machine is unlinked; here it must not be (another test process may be
    streaming). The rank variables it sets are reset around every test (tests/conftest.py), and
    every loader builder sets them again."""
    from data_pipeline.loading.dataset import ensure_distributed_env

    ensure_distributed_env(clean_shared_memory=False)


@dataclass
class NumberedCorpus:
    """Documents `000...i` of exactly one sample each (15 digits + EOS), and their shards.

    Sample k of a split decodes to an identifying number, so tests can check order and coverage.
    """

    root: Path
    sample_len: int = 16
    val_fraction: float = 0.25
    num_train: int = 64
    expected: dict[str, list[int]] = field(default_factory=dict)

    def documents(self, num_train: int | None = None) -> list[Document]:
        """Documents in order until `num_train` of them fall in train (split by text hash)."""
        target = self.num_train if num_train is None else num_train
        documents: list[Document] = []
        train = 0
        while train < target:
            text = f"{len(documents):0{self.sample_len - 1}d}"
            documents.append(Document(text, "numbers", text))
            train += assign_split(text, self.val_fraction) == "train"
        return documents

    @staticmethod
    def number(tokens) -> int:
        """The number a sample encodes."""
        return int(ByteTokenizer().decode(tokens))


@pytest.fixture(scope="session")
def numbered(tmp_path_factory: pytest.TempPathFactory) -> NumberedCorpus:
    """Shards of the numbered corpus: 64 train samples over several small shards, ~20 val."""
    corpus = NumberedCorpus(root=tmp_path_factory.mktemp("numbered") / "shards")
    documents = corpus.documents()
    write_documents(documents, corpus.root, corpus.sample_len, corpus.val_fraction, size_limit=512)
    corpus.expected = {"train": [], "val": []}
    for doc in documents:
        corpus.expected[assign_split(doc.text, corpus.val_fraction)].append(int(doc.text))
    return corpus


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo-corpus (stdlib docstrings) MLM shards, seq_len 64, about 60 kB of text."""
    from data_pipeline.shards.prepare import prepare_demo_corpus

    out = tmp_path_factory.mktemp("demo") / "shards"
    prepare_demo_corpus(out, seq_len=64, objective="mlm", max_bytes=60_000, val_fraction=0.3)
    return out
