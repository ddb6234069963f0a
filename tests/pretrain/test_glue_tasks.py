"""GLUE readers on fixtures in the exact official formats, encoding and fair truncation; the real
GLUE files in ../shared/data/glue when present.

``write_glue_fixture`` is also the data of the fine-tuning tests (test_glue_finetune.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from pretrain.glue.tasks import (
    DIAGNOSTIC,
    TASKS,
    GlueFormatError,
    encode_examples,
    encode_pair,
    get_task,
    load_tokenizer,
    parse_task_list,
    read_split,
    truncate_pair,
)

WORDS = "the a cat dog sat ran on under mat log quickly slowly red blue big small".split()
MNLI_HEAD = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2"
)


def _sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + " ."


def _write(path: Path, lines: list[str], final_newline: bool = True, bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def write_glue_fixture(root: Path, n_train: int = 48, n_dev: int = 12, n_test: int = 10) -> Path:
    """All nine tasks + the diagnostic set in the official layout and formats (tiny, random).

    Pair tasks follow a rule: the first label means "sentence 2 repeats sentence 1".
    """
    rng = random.Random(0)

    def pair_rows(n: int, labels: tuple[str, ...]) -> list[tuple[str, str, str]]:
        rows = []
        for i in range(n):
            a = _sentence(rng)
            label = labels[i % len(labels)]
            b = a if label == labels[0] else _sentence(rng)
            rows.append((a, b, label))
        return rows

    for split, n in (("train", n_train), ("dev", n_dev)):  # CoLA: no header (dev: no final \n)
        lines = [f"gj04\t{i % 2}\t{'' if i % 2 else '*'}\t{_sentence(rng)}" for i in range(n)]
        _write(root / "CoLA" / f"{split}.tsv", lines, final_newline=split == "train")
    _write(
        root / "CoLA" / "test.tsv",
        ["index\tsentence"] + [f"{i}\t{_sentence(rng)}" for i in range(n_test)],
    )
    for split, n in (("train", n_train), ("dev", n_dev)):  # SST-2 keeps a space before the tab
        lines = ["sentence\tlabel"] + [f"{_sentence(rng)} \t{i % 2}" for i in range(n)]
        _write(root / "SST-2" / f"{split}.tsv", lines)
    _write(
        root / "SST-2" / "test.tsv",
        ["index\tsentence"] + [f"{i}\t{_sentence(rng)}" for i in range(n_test)],
    )
    head = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    for split, n in (("train", n_train), ("dev", n_dev)):  # MRPC: BOM, unbalanced quotes
        rows = pair_rows(n, ("1", "0"))
        lines = [head] + [
            f'{y}\t{100 + i}\t{200 + i}\t" {a}\t{b} "' for i, (a, b, y) in enumerate(rows)
        ]
        _write(root / "MRPC" / f"{split}.tsv", lines, bom=True)
    rows = pair_rows(n_test, ("1", "0"))
    lines = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    lines += [f'{i}\t{300 + i}\t{400 + i}\t{a} "\t{b}' for i, (a, b, _) in enumerate(rows)]
    _write(root / "MRPC" / "test.tsv", lines)
    sts_head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        lines = [sts_head + ("" if split == "test" else "\tscore")]
        for i in range(n):
            a, b = _sentence(rng), _sentence(rng)
            score = "" if split == "test" else f"\t{(i * 0.37) % 5:.3f}"
            lines.append(
                f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}{score}"
            )
        _write(root / "STS-B" / f"{split}.tsv", lines)
    for split, n in (("train", n_train), ("dev", n_dev)):  # QQP: one malformed train row
        lines = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
        lines += [
            f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{y}"
            for i, (a, b, y) in enumerate(pair_rows(n, ("1", "0")))
        ]
        if split == "train":
            lines.insert(3, "999\t1\t2\tHow do I\n")
        _write(root / "QQP" / f"{split}.tsv", lines)
    lines = ["id\tquestion1\tquestion2"] + [
        f"{i}\t{_sentence(rng)}\t{_sentence(rng)}" for i in range(n_test)
    ]
    _write(root / "QQP" / "test.tsv", lines)
    mnli = ("entailment", "neutral", "contradiction")
    for split, n, extra in (
        ("train", n_train, ["label1"]),
        ("dev_matched", n_dev, [f"label{k}" for k in range(1, 6)]),
        ("dev_mismatched", n_dev, [f"label{k}" for k in range(1, 6)]),
    ):
        lines = ["\t".join([MNLI_HEAD, *extra, "gold_label"])]
        for i, (a, b, y) in enumerate(pair_rows(n, mnli)):
            parses = "\t".join(f"( {s} )" for s in (a, b, a, b))
            lines.append(
                "\t".join([str(i), str(i), f"{i}e", "fiction", parses, a, b, *[y] * len(extra), y])
            )
        _write(root / "MNLI" / f"{split}.tsv", lines)
    for split in ("test_matched", "test_mismatched"):
        lines = [MNLI_HEAD]
        for i, (a, b, _) in enumerate(pair_rows(n_test, mnli)):
            parses = "\t".join(f"( {s} )" for s in (a, b, a, b))
            lines.append("\t".join([str(i), str(i), f"{i}n", "travel", parses, a, b]))
        _write(root / "MNLI" / f"{split}.tsv", lines)
    for name, first, labels in (
        ("QNLI", ("question", "sentence"), ("entailment", "not_entailment")),
        ("RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
        ("WNLI", ("sentence1", "sentence2"), ("1", "0")),
    ):
        for split, n in (("train", n_train), ("dev", n_dev)):
            lines = [f"index\t{first[0]}\t{first[1]}\tlabel"]
            lines += [f"{i}\t{a}\t{b}\t{y}" for i, (a, b, y) in enumerate(pair_rows(n, labels))]
            _write(root / name / f"{split}.tsv", lines)
        lines = [f"index\t{first[0]}\t{first[1]}"]
        lines += [f"{i}\t{a}\t{b}" for i, (a, b, _) in enumerate(pair_rows(n_test, labels))]
        _write(root / name / "test.tsv", lines)
    lines = ["index\tsentence1\tsentence2"] + [
        f"{i}\t{_sentence(rng)}\t{_sentence(rng)}" for i in range(5)
    ]
    _write(root / "diagnostic" / "diagnostic.tsv", lines)
    return root


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return write_glue_fixture(tmp_path_factory.mktemp("glue"))


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_reads_train_dev_and_test(glue_dir, name):
    task = TASKS[name]
    train, skipped = read_split(glue_dir / task.dir_name, task, "train")
    assert len(train) == 48 and skipped == (1 if name == "qqp" else 0)
    assert all((e.text_b is not None) == task.is_pair for e in train)
    for split in task.dev_splits:
        dev, _ = read_split(glue_dir / task.dir_name, task, split)
        assert len(dev) == 12 and all(e.label is not None for e in dev)
        if task.is_regression:
            assert all(isinstance(e.label, float) and 0 <= e.label <= 5 for e in dev)
        else:
            assert {e.label for e in dev} == set(range(task.num_classes))
    for split in task.test_splits:
        test, _ = read_split(glue_dir / task.dir_name, task, split)
        assert [e.index for e in test] == [str(i) for i in range(10)]
        assert all(e.label is None for e in test)


def test_quirks_cola_headerless_mrpc_bom_and_quotes_sst2_space(glue_dir):
    cola, _ = read_split(glue_dir / "CoLA", TASKS["cola"], "dev")  # no header, no final newline
    raw = (glue_dir / "CoLA" / "dev.tsv").read_text().split("\n")
    assert len(cola) == len(raw) == 12
    assert cola[-1].text_a == raw[-1].split("\t")[3] and cola[-1].label == 1
    mrpc, _ = read_split(glue_dir / "MRPC", TASKS["mrpc"], "train")
    assert mrpc[0].label == 1 and mrpc[0].text_a.startswith('" ') and mrpc[0].text_b.endswith(' "')
    assert mrpc[0].text_b == mrpc[0].text_a[2:] + ' "'  # quotes are text, never CSV quoting
    sst, _ = read_split(glue_dir / "SST-2", TASKS["sst2"], "dev")
    assert sst[0].text_a.endswith(". ")  # the space before the tab is part of the text
    mnli, _ = read_split(glue_dir / "MNLI", TASKS["mnli"], "dev_mismatched")
    assert {e.label for e in mnli} == {0, 1, 2}  # contradiction, entailment, neutral
    ax, _ = read_split(glue_dir / "diagnostic", DIAGNOSTIC, "diagnostic")
    assert len(ax) == 5 and ax[0].index == "0"


def test_malformed_rows_and_labels_name_file_and_line(tmp_path):
    rte = tmp_path / "RTE"
    rte.mkdir()
    (rte / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n"
    )
    with pytest.raises(GlueFormatError, match=r"RTE/train.tsv:3: 3 tab-separated fields"):
        read_split(rte, TASKS["rte"], "train")
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(GlueFormatError, match=r"dev.tsv:2: label 'maybe'"):
        read_split(rte, TASKS["rte"], "dev")
    (rte / "test.tsv").write_text("idx\tsentence1\tsentence2\n0\ta\tb\n")
    with pytest.raises(GlueFormatError, match=r"test.tsv:1: no column 'index'"):
        read_split(rte, TASKS["rte"], "test")
    with pytest.raises(FileNotFoundError, match="official GLUE layout"):
        read_split(rte, TASKS["rte"], "dev_matched")


def test_task_names():
    assert get_task("SST-2") is get_task("sst2") is TASKS["sst2"]
    assert get_task("STS-B").is_regression and get_task("mnli").num_classes == 3
    assert [t.name for t in parse_task_list("rte, MRPC,rte")] == ["rte", "mrpc"]
    assert len(parse_task_list("all")) == 9
    with pytest.raises(ValueError, match="known tasks"):
        get_task("squad")


def _bert_truncate(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """BERT's _truncate_seq_pair, literally."""
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_fair_truncation_equals_berts_loop():
    for len_a in range(0, 14):
        for len_b in range(0, 14):
            for budget in range(0, 20):
                assert truncate_pair(len_a, len_b, budget) == _bert_truncate(len_a, len_b, budget)


def test_byte_encoding_of_singles_and_pairs():
    tok = load_tokenizer("byte")
    ids = encode_pair(tok, "hé", None, 16)
    assert ids.tolist() == [4, ord("h") + 6, 0xC3 + 6, 0xA9 + 6, 5]
    ids = encode_pair(tok, "abcdefgh", "xyz", 10)  # budget 7: a keeps 4, b keeps 3
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS]abcd[SEP]xyz[SEP]"
    assert len(encode_pair(tok, "a" * 50, "b" * 50, 32)) == 32
    with pytest.raises(ValueError, match="no room"):
        encode_pair(tok, "a", "b", 4)


def test_encoded_split_layout(glue_dir):
    task = TASKS["stsb"]
    examples, _ = read_split(glue_dir / "STS-B", task, "dev")
    split = encode_examples(examples, task, load_tokenizer("byte"), 24)
    assert len(split) == 12 and split.lengths().max() <= 24
    first = split.tokens[split.offsets[0] : split.offsets[1]]
    assert first[0] == 4 and first[-1] == 5 and (first == 5).sum() == 2
    assert split.labels.dtype == np.float32 and split.labels[1] == pytest.approx(0.37)
    sub = split.subset([3, 1])
    assert sub.indices == ["3", "1"] and np.array_equal(sub.labels, split.labels[[3, 1]])


def test_sentencepiece_encoding(tmp_path):
    from data_pipeline.tokenization.spm_train import train_spm

    text = tmp_path / "corpus.txt"
    rng = random.Random(1)
    text.write_text("\n\n".join(_sentence(rng, 12) for _ in range(400)))
    train_spm("text", [str(text)], tmp_path / "spm.model", vocab_size=300)
    tok = load_tokenizer(f"spm:{tmp_path / 'spm.model'}")
    ids = encode_pair(tok, "the cat sat", "on the mat", 64)
    assert ids[0] == tok.cls_id and (ids == tok.sep_id).sum() == 2 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == "the cat sat on the mat"  # "▁on" decodes to " on"


@pytest.mark.shared_data
def test_real_glue_files(shared_data):
    glue = shared_data / "glue"
    assert glue.is_dir(), f"{glue} not found in the shared data"
    expected = {"cola": 8551, "sst2": 67349, "stsb": 5749, "rte": 2490}
    for name, n in expected.items():
        task = TASKS[name]
        train, _ = read_split(glue / task.dir_name, task, "train")
        assert len(train) == n
    mrpc, _ = read_split(glue / "MRPC", TASKS["mrpc"], "dev")
    assert len(mrpc) == 408 and mrpc[0].text_b.startswith('" The foodservice')
    cola_dev, _ = read_split(glue / "CoLA", TASKS["cola"], "dev")
    assert len(cola_dev) == 1043
    rte_test, _ = read_split(glue / "RTE", TASKS["rte"], "test")
    assert len(rte_test) == 3000 and rte_test[-1].index == "2999"


def test_max_eval_examples_cuts_dev_splits_never_submission_files(glue_dir):
    from pretrain.config import config_from_dict
    from pretrain.glue.data import load_split

    cfg = config_from_dict(
        {
            "model": {"preset": "perceiver_io_classifier_tiny"},
            "data": {"dir": str(glue_dir / "MNLI")},
            "glue": {"task": "mnli", "max_eval_examples": 3},
            "trainer": {"zero_stage": 0},
        }
    )
    assert len(load_split(cfg, "dev_matched").labels) == 3
    test, _ = read_split(glue_dir / "MNLI", TASKS["mnli"], "test_matched")
    assert len(load_split(cfg, "test_matched").labels) == len(test) > 3
    ax, _ = read_split(glue_dir / "diagnostic", DIAGNOSTIC, "diagnostic")
    whole = load_split(cfg, "diagnostic", glue_dir / "diagnostic", DIAGNOSTIC)
    assert len(whole.labels) == len(ax) > 3
