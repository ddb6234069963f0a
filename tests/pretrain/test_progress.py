"""Training progress: a bar on a terminal, plain lines every trainer.log_every steps in a log."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.train.progress import LineProgress, step_progress
from tests.conftest import REPO, clean_env


@pytest.fixture(scope="module")
def c4_256(tmp_path_factory) -> Path:
    """Real C4 sample shards of the tiny model's 256 bytes."""
    from data_pipeline.shards.prepare import prepare
    from tests.conftest import SHARED_DATA, skip_unless_ci

    if not SHARED_DATA.is_dir():
        skip_unless_ci(f"shared test data not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("c4") / "c4_bytes_256"
    prepare("c4", [SHARED_DATA / "c4"], out, seq_len=256)
    return out


@pytest.mark.slow
def test_training_into_a_log_writes_lines_not_bar_frames(c4_256, tmp_path):
    log_file = tmp_path / "train.log"
    with open(log_file, "wb") as log:  # as `perceiver train ... > train.log 2>&1` or Slurm
        proc = subprocess.run(
            [
                sys.executable, "-m", "pretrain.cli", "train",
                str(REPO / "configs" / "tiny_mlm.yaml"),
                f"data.dir={c4_256}",
                f"trainer.run_dir={tmp_path / 'run'}",
                "trainer.max_steps=10",
                "trainer.log_every=5",
                "trainer.val_every=0",
                "checkpoint.every=0",
                "logging.tensorboard=false",
            ],
            cwd=REPO, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, timeout=600,
        )  # fmt: skip
    raw = log_file.read_bytes()
    assert proc.returncode == 0, raw[-4000:]
    assert b"\r" not in raw  # (text-mode pipes would hide carriage returns: bytes here)
    lines = [ln for ln in raw.decode().splitlines() if ln.startswith("train perceiver_io_mlm:")]
    assert [line.split(",")[0] for line in lines] == [
        "train perceiver_io_mlm: step 5/10",
        "train perceiver_io_mlm: step 10/10",
    ]
    assert all(", loss " in line and " steps/s, eta " in line for line in lines), lines


def test_line_progress_resumes_mid_run_and_ends_on_the_last_step(tmp_path):
    with open(tmp_path / "log", "w") as f:
        progress = step_progress(total=7, initial=2, desc="train x", every=3, file=f)
        assert isinstance(progress, LineProgress)
        for step in range(3, 8):
            progress.set_postfix(loss=f"{1 / step:.4f}")
            progress.update(1)
        progress.close()
    lines = (tmp_path / "log").read_text().splitlines()
    assert [line.rsplit(", ", 2)[0] for line in lines] == [
        "train x: step 3/7, loss 0.3333",
        "train x: step 6/7, loss 0.1667",
        "train x: step 7/7, loss 0.1429",
    ]


def test_a_terminal_keeps_the_bar():
    from tqdm import tqdm

    main_fd, term_fd = pty.openpty()
    try:
        with os.fdopen(term_fd, "w") as term:
            progress = step_progress(total=3, initial=0, desc="train x", every=1, file=term)
            assert isinstance(progress, tqdm)
            progress.update(1)
            progress.close()
        drawn = os.read(main_fd, 4096)
    finally:
        os.close(main_fd)
    assert b"\r" in drawn and b"train x" in drawn
