"""The GLUE tasks: readers of the official distribution layout and encoding into token ids.

Layout (what `download_glue_data.py` writes)::

    <glue_dir>/{CoLA,SST-2,MRPC,STS-B,QQP,QNLI,RTE,WNLI}/{train,dev,test}.tsv
    <glue_dir>/MNLI/{train,dev_matched,dev_mismatched,test_matched,test_mismatched}.tsv
    <glue_dir>/diagnostic/diagnostic.tsv        (AX, scored with the MNLI model; optional;
                                                 index, sentence1, sentence2: no label)

Quirks handled here: CoLA's train/dev have no header (4 columns: source, label, original label,
sentence) and its dev file no final newline; MRPC's header starts with a UTF-8 BOM and its
sentences contain unbalanced double quotes, so no file is read with CSV quoting (fields are split
on tabs only, as GLUE's own scripts do); test files have an index column and no label; QQP's
train file has a few rows with missing fields, which are skipped (and counted), while a malformed
row in any other task is an error naming the file and line.

Encoding: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` in the ids of the tokenizer pretraining
used (UTF-8 bytes or SentencePiece; both have CLS 4 and SEP 5). A pair longer than the input
length is truncated fairly (BERT's rule: drop the last token of the longer text until it fits).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class GlueFormatError(ValueError):
    """A GLUE file that does not have its task's layout; the message names the file and line."""


@dataclass(frozen=True)
class TaskSpec:
    """How one GLUE task is stored, labelled, scored and submitted.

    Attributes:
        name: Short name used on the command line and in metric tags (``cola``, ``sst2``, ...).
        dir_name: Directory under the GLUE root (``CoLA``, ``SST-2``, ...).
        labels: Label strings as they appear in the files, in class order (empty: regression).
        text_columns: Header names of the first and (for pairs) second text column.
        label_column: Header name of the label column (train/dev files).
        test_index_column: Header name of the index column of test files.
        metrics: Metric names (see ``pretrain.glue.metrics``); the task score is their mean.
        dev_splits: Labelled evaluation splits (file stems).
        test_splits: Test file stem -> leaderboard submission file stem.
        headerless_columns: For files without a header (CoLA train/dev): name -> column index.
        skip_malformed: Skip rows with missing fields instead of failing (QQP).
        score_range: Range of a regression task's scores (STS-B: 0 to 5). The model is trained
            to output scores mapped linearly onto [-1, 1] (see :meth:`model_target`).
    """

    name: str
    dir_name: str
    labels: tuple[str, ...]
    text_columns: tuple[str, str | None]
    label_column: str
    test_index_column: str
    metrics: tuple[str, ...]
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: dict[str, str] = field(default_factory=dict)
    headerless_columns: dict[str, int] = field(default_factory=dict)
    skip_malformed: bool = False
    score_range: tuple[float, float] = (0.0, 5.0)

    @property
    def is_regression(self) -> bool:
        """STS-B: a score, not a class."""
        return not self.labels

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier: the number of labels, or 1 for regression."""
        return len(self.labels) or 1

    def model_target(self, score: Any) -> Any:
        """A regression score -> the model's target in [-1, 1].

        A freshly initialised head outputs ~0, the middle of the range; with raw scores LAMB (the
        paper's optimizer, whose steps are relative to each tensor's norm) would need many
        epochs just to move the output bias from 0 to the mean score.
        """
        low, high = self.score_range
        return (score - (high + low) / 2) / ((high - low) / 2)

    def score(self, output: Any) -> Any:
        """The model's regression output -> a score (the inverse of :meth:`model_target`)."""
        low, high = self.score_range
        return output * ((high - low) / 2) + (high + low) / 2

    @property
    def is_pair(self) -> bool:
        """Whether examples have a second text."""
        return self.text_columns[1] is not None


def _spec(name, dir_name, labels, a, b, label, metrics, index="index", **kw) -> TaskSpec:
    kw.setdefault("test_splits", {"test": dir_name})
    return TaskSpec(name, dir_name, labels, (a, b), label, index, metrics, **kw)


BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        _spec(
            "cola",
            "CoLA",
            BINARY,
            "sentence",
            None,
            "label",
            ("mcc",),
            headerless_columns={"label": 1, "sentence": 3, "__columns__": 4},
        ),
        _spec("sst2", "SST-2", BINARY, "sentence", None, "label", ("accuracy",)),
        _spec("mrpc", "MRPC", BINARY, "#1 String", "#2 String", "Quality", ("f1", "accuracy")),
        _spec("stsb", "STS-B", (), "sentence1", "sentence2", "score", ("pearson", "spearman")),
        _spec(
            "qqp",
            "QQP",
            BINARY,
            "question1",
            "question2",
            "is_duplicate",
            ("f1", "accuracy"),
            index="id",
            skip_malformed=True,
        ),
        _spec(
            "mnli",
            "MNLI",
            ("contradiction", "entailment", "neutral"),
            "sentence1",
            "sentence2",
            "gold_label",
            ("accuracy_m", "accuracy_mm"),
            dev_splits=("dev_matched", "dev_mismatched"),
            test_splits={"test_matched": "MNLI-m", "test_mismatched": "MNLI-mm"},
        ),
        _spec("qnli", "QNLI", ENTAILMENT, "question", "sentence", "label", ("accuracy",)),
        _spec("rte", "RTE", ENTAILMENT, "sentence1", "sentence2", "label", ("accuracy",)),
        _spec("wnli", "WNLI", BINARY, "sentence1", "sentence2", "label", ("accuracy",)),
    )
}
_ALIASES = {spec.dir_name.lower(): name for name, spec in TASKS.items()}
_ALIASES.update({"sts-b": "stsb", "sst-2": "sst2", "mnli-m": "mnli"})
# The GLUE diagnostic set (AX) is scored with the MNLI model; its file has no labels.
DIAGNOSTIC = TaskSpec(
    "ax", "diagnostic", TASKS["mnli"].labels, ("sentence1", "sentence2"), "", "index", ()
)


def get_task(name: str) -> TaskSpec:
    """The task named ``name`` (``rte``, ``RTE``, ``SST-2``, ``sts-b`` ... are accepted).

    Raises:
        ValueError: For an unknown name, listing the known ones.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


def parse_task_list(text: str) -> list[TaskSpec]:
    """``"rte,mrpc"`` (or ``all``) -> task specs, in the order given, without duplicates."""
    names = list(TASKS) if text.strip().lower() == "all" else text.split(",")
    specs: list[TaskSpec] = []
    for name in names:
        if name.strip():
            spec = get_task(name)
            if spec not in specs:
                specs.append(spec)
    if not specs:
        raise ValueError("no GLUE task given")
    return specs


@dataclass
class Example:
    """One row of a GLUE file.

    Attributes:
        index: The row's id: the file's index column for test files, else the row number.
        text_a: First (or only) text.
        text_b: Second text of a pair, else None.
        label: Class index, regression target, or None (test files).
    """

    index: str
    text_a: str
    text_b: str | None
    label: int | float | None


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty line; splits on ``\\n`` and tabs only."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.decode("utf-8", errors="strict")
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line.split("\t")


def split_path(glue_dir: str | Path, task: TaskSpec, split: str) -> Path:
    """``<glue_dir>/<TASK>/<split>.tsv`` (``<glue_dir>/diagnostic/diagnostic.tsv`` for AX)."""
    if task is DIAGNOSTIC:
        return Path(glue_dir) / "diagnostic" / "diagnostic.tsv"
    return Path(glue_dir) / task.dir_name / f"{split}.tsv"


def task_files(glue_dir: str | Path, task: TaskSpec, test: bool = True) -> list[Path]:
    """The files ``perceiver glue`` reads for ``task``: train, dev split(s) and, with ``test``,
    the test split(s). The diagnostic set (AX) of MNLI is optional and not among them."""
    splits = ["train", *task.dev_splits, *(task.test_splits if test else ())]
    return [split_path(glue_dir, task, split) for split in splits]


def read_split(task_dir: str | Path, task: TaskSpec, split: str) -> tuple[list[Example], int]:
    """Reads ``<task_dir>/<split>.tsv``; splits named ``test*`` are read without labels.

    Args:
        task_dir: The task's directory (``<glue_dir>/RTE``).
        task: Its spec.
        split: File stem: ``train``, ``dev``, ``dev_matched``, ``test``, ...

    Returns:
        The examples and the number of malformed rows skipped (QQP only; 0 otherwise).

    Raises:
        FileNotFoundError: If the file does not exist.
        GlueFormatError: For a missing column, a row with the wrong number of fields or an
            unknown label, naming the file and line.
    """
    path = Path(task_dir) / f"{split}.tsv"
    if task is DIAGNOSTIC:
        path = Path(task_dir) / "diagnostic.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected the official GLUE layout)")
    labelled = not split.startswith("test") and task is not DIAGNOSTIC
    rows = _rows(path)
    if labelled and task.headerless_columns:
        columns = dict(task.headerless_columns)
        width = columns.pop("__columns__")
    else:
        try:
            _, header = next(rows)
        except StopIteration:
            raise GlueFormatError(f"{path}:1: empty file (expected a header)") from None
        columns = {name: i for i, name in enumerate(header)}
        width = len(header)
    wanted = [c for c in task.text_columns if c is not None]
    wanted += [task.label_column] if labelled else [task.test_index_column]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise GlueFormatError(
            f"{path}:1: no column {missing[0]!r} for {task.dir_name} (columns: {list(columns)})"
        )
    a_col = columns[task.text_columns[0]]
    b_col = columns[task.text_columns[1]] if task.is_pair else None
    key_col = columns[task.label_column if labelled else task.test_index_column]
    examples: list[Example] = []
    skipped = 0
    for lineno, row in rows:
        if len(row) != width:
            if task.skip_malformed and len(row) < width:
                skipped += 1
                continue
            raise GlueFormatError(
                f"{path}:{lineno}: {len(row)} tab-separated fields, expected {width} "
                f"({task.dir_name} {split})"
            )
        text_b = row[b_col] if b_col is not None else None
        if not labelled:
            examples.append(Example(row[key_col], row[a_col], text_b, None))
            continue
        examples.append(
            Example(
                str(len(examples)), row[a_col], text_b, _label(task, row[key_col], path, lineno)
            )
        )
    return examples, skipped


def _label(task: TaskSpec, raw: str, path: Path, lineno: int) -> int | float:
    raw = raw.strip()
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise GlueFormatError(f"{path}:{lineno}: score {raw!r} is not a number") from None
    try:
        return task.labels.index(raw)
    except ValueError:
        raise GlueFormatError(
            f"{path}:{lineno}: label {raw!r} is not one of {list(task.labels)}"
        ) from None


# --------------------------------------------------------------------------------------------
# Encoding


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths BERT's pair truncation keeps: drop the last token of the longer text (of ``b`` on
    a tie) one at a time until both fit in ``budget`` tokens.

    Example:
        >>> truncate_pair(3, 10, 7), truncate_pair(10, 10, 5), truncate_pair(2, 2, 9)
        ((3, 4), (3, 2), (2, 2))
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    half_a, half_b = (budget + 1) // 2, budget // 2
    if len_a <= half_a:
        return len_a, budget - len_a
    if len_b <= half_b:
        return budget - len_b, len_b
    return half_a, half_b


def encode_pair(tokenizer: Any, text_a: str, text_b: str | None, max_length: int) -> np.ndarray:
    """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` in ``tokenizer``'s ids, at most
    ``max_length`` long (``a`` and ``b`` truncated fairly)."""
    ids_a = np.asarray(tokenizer.encode(text_a), dtype=np.int32)
    cls = np.array([tokenizer.cls_id], dtype=np.int32)
    sep = np.array([tokenizer.sep_id], dtype=np.int32)
    if text_b is None:
        if max_length < 3:
            raise ValueError(f"max_length {max_length} leaves no room for text")
        return np.concatenate([cls, ids_a[: max_length - 2], sep])
    if max_length < 5:
        raise ValueError(f"max_length {max_length} leaves no room for a pair")
    ids_b = np.asarray(tokenizer.encode(text_b), dtype=np.int32)
    keep_a, keep_b = truncate_pair(len(ids_a), len(ids_b), max_length - 3)
    return np.concatenate([cls, ids_a[:keep_a], sep, ids_b[:keep_b], sep])


@dataclass
class EncodedSplit:
    """A split as token ids: ``tokens[offsets[i]:offsets[i + 1]]`` is example ``i``.

    Attributes:
        tokens: int32 ids of all examples, concatenated.
        offsets: int64 [n + 1] start of each example.
        labels: int64 class indices (-1 if unlabelled) or float32 targets (NaN if unlabelled).
        indices: Each example's id (see :class:`Example`).
        pad_id: The tokenizer's padding id.
    """

    tokens: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    indices: list[str]
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.indices)

    def lengths(self) -> np.ndarray:
        """Tokens of each example."""
        return np.diff(self.offsets)

    def subset(self, rows: Sequence[int] | np.ndarray) -> EncodedSplit:
        """The examples at ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        parts = [self.tokens[self.offsets[i] : self.offsets[i + 1]] for i in rows]
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        return EncodedSplit(
            np.concatenate(parts) if parts else np.empty(0, np.int32),
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            self.labels[rows],
            [self.indices[i] for i in rows],
            self.pad_id,
        )


def encode_examples(
    examples: Sequence[Example], task: TaskSpec, tokenizer: Any, max_length: int
) -> EncodedSplit:
    """Encodes ``examples`` (see :func:`encode_pair`) into one :class:`EncodedSplit`."""
    parts = [encode_pair(tokenizer, e.text_a, e.text_b, max_length) for e in examples]
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    if task.is_regression:
        labels = np.array(
            [np.nan if e.label is None else e.label for e in examples], dtype=np.float32
        )
    else:
        labels = np.array([-1 if e.label is None else e.label for e in examples], dtype=np.int64)
    return EncodedSplit(
        np.concatenate(parts) if parts else np.empty(0, np.int32),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        labels,
        [e.index for e in examples],
        int(tokenizer.pad_id),
    )


def load_tokenizer(name: str) -> Any:
    """``byte`` or ``spm:PATH`` -> a tokenizer with ``cls_id``/``sep_id`` (data_pipeline's)."""
    from data_pipeline.tokenization.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(name)
    for attr in ("cls_id", "sep_id", "pad_id"):
        if not hasattr(tokenizer, attr):
            raise ValueError(f"tokenizer {name!r} has no {attr}; GLUE needs [CLS] and [SEP]")
    return tokenizer
