"""``perceiver glue`` on one CPU process: MNLI with the diagnostic set (AX) in the official
layout, and the check of every requested task's files before anything trains."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.export import Pretrained, write_native
from pretrain.glue.results import read_predictions
from pretrain.glue.tasks import TASKS
from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM
from tests.conftest import REPO, clean_env
from tests.pretrain.test_export import _tiny
from tests.pretrain.test_glue_tasks import write_glue_fixture

pytestmark = pytest.mark.slow
FAST = ["--lrs", "1e-4", "--batch-sizes", "8", "--max-steps", "2"]
FAST += ["glue.max_length=64", "trainer.precision=fp32"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A freshly initialised tiny MLM as a native export."""
    torch.manual_seed(0)
    mlm = PerceiverMLM(PerceiverIOConfig(**_tiny()))
    mlm.init_weights()
    pretrained = Pretrained("perceiver_io_mlm", _tiny(), mlm.state_dict(), {"name": "byte"}, {})
    return write_native(pretrained, tmp_path_factory.mktemp("export"))


def glue(source: Path, glue_dir: Path, out: Path, tasks: str, *extra: str):
    """``perceiver glue`` in a subprocess; returns the finished process (any exit code)."""
    args = ["glue", "--checkpoint", str(source), "--glue-dir", str(glue_dir), "--out", str(out)]
    return subprocess.run(
        [sys.executable, "-m", "perceiver_cli", *args, "--tasks", tasks, *FAST, *extra],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_mnli_writes_ax_from_the_diagnostic_set(source, tmp_path):
    glue_dir = write_glue_fixture(tmp_path / "data")
    diagnostic = (glue_dir / "diagnostic" / "diagnostic.tsv").read_text().splitlines()
    assert diagnostic[0] == "index\tsentence1\tsentence2"  # the official AX layout: no label
    out = tmp_path / "out"
    proc = glue(source, glue_dir, out, "mnli")
    assert proc.returncode == 0, proc.stderr[-4000:]
    labels = set(TASKS["mnli"].labels)
    for name, rows in (("MNLI-m", 10), ("MNLI-mm", 10), ("AX", len(diagnostic) - 1)):
        indices, predictions = read_predictions(out / "submission" / f"{name}.tsv")
        assert len(indices) == rows and set(predictions) <= labels
    indices, _ = read_predictions(out / "submission" / "AX.tsv")
    assert indices == [line.split("\t")[0] for line in diagnostic[1:]]


def test_missing_files_refused_before_any_training(source, tmp_path):
    glue_dir = write_glue_fixture(tmp_path / "data")
    (glue_dir / "QNLI" / "train.tsv").unlink()
    (glue_dir / "QNLI" / "test.tsv").unlink()
    out = tmp_path / "out"
    proc = glue(source, glue_dir, out, "wnli,qnli")
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert str(glue_dir / "QNLI" / "train.tsv") in proc.stderr
    assert str(glue_dir / "QNLI" / "test.tsv") in proc.stderr
    assert "dev.tsv" not in proc.stderr and "WNLI" not in proc.stderr
    assert not out.exists()  # nothing trained, nothing consolidated
    # Without test predictions the test file is not needed; the training file still is.
    proc = glue(source, glue_dir, out, "wnli,qnli", "--no-test")
    assert proc.returncode == 2 and "QNLI/train.tsv" in proc.stderr
    assert "test.tsv" not in proc.stderr and not out.exists()
    # Every grid is planned (its training file read) before the first run trains.
    (glue_dir / "QNLI" / "train.tsv").write_text(
        "index\tquestion\tsentence\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n"
    )
    proc = glue(source, glue_dir, out, "wnli,qnli", "--no-test")
    assert proc.returncode == 2 and "QNLI/train.tsv:3: 3 tab-separated fields" in proc.stderr
    assert not out.exists()


def test_all_runs_the_tasks_whose_files_exist_and_lists_the_others(source, tmp_path):
    glue_dir = write_glue_fixture(tmp_path / "data")
    for task in TASKS.values():
        if task.name not in ("rte", "wnli"):
            shutil.rmtree(glue_dir / task.dir_name)
    (glue_dir / "WNLI" / "dev.tsv").unlink()
    out = tmp_path / "out"
    proc = glue(source, glue_dir, out, "all")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"rte"}
    missing = results["missing_files"]
    assert set(missing) == set(TASKS) - {"rte"}
    assert missing["wnli"] == [str(glue_dir / "WNLI" / "dev.tsv")]
    assert missing["mnli"] == [
        str(glue_dir / "MNLI" / f"{split}.tsv")
        for split in ("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")
    ]
    assert str(glue_dir / "WNLI" / "dev.tsv") in proc.stdout
    assert str(glue_dir / "CoLA" / "train.tsv") in proc.stdout
    assert "WNLI" in (out / "results.md").read_text().split("| **GLUE average**")[1]
    assert not (out / "wnli").exists()
    assert read_predictions(out / "submission" / "RTE.tsv")[0] == [str(i) for i in range(10)]
