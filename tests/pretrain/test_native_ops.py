"""DeepSpeed's JIT-compiled ops: a cache per environment, a line before a build, no silent wait.

Every test uses its own TORCH_EXTENSIONS_DIR or lock file (the user's cache is never touched).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.utils.cpp_extension  # noqa: F401  (imported where it runs: slow the first time)

from pretrain.train.native_ops import extensions_dir, wait_for_build_lock
from tests.conftest import REPO, run_perceiver

HOLD = """import sys, time
from torch.utils._filelock import FileLock  # the lock torch's cpp_extension builds under
with FileLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(lock: Path, seconds: float) -> subprocess.Popen:
    """A process holding torch's build lock on ``lock`` for ``seconds`` (a build in progress)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def _age(directory: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in directory.iterdir():
        os.utime(p, (then, then))


def test_cache_is_per_environment_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert extensions_dir() == Path(sys.prefix) / "torch_extensions"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix) / "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_dir() == tmp_path


def test_lock_of_a_killed_build_does_not_block(tmp_path, capsys):
    lock = tmp_path / "lock"
    holder = _holder(lock, 600)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    _age(tmp_path, 3600)
    started = time.monotonic()
    wait_for_build_lock(lock, "op", stale_after_s=60)
    assert time.monotonic() - started < 5 and capsys.readouterr().err == ""


def test_stale_lock_file_of_an_older_torch_is_removed_with_a_warning(tmp_path, capsys):
    """FileBaton (older PyTorch) waits while the file exists: one left by a killed build would
    block every later start forever. A recent one is a build in progress: waited for."""
    lock = tmp_path / "lock"
    lock.touch()
    (tmp_path / "shm.o").touch()
    release = threading.Timer(3, lock.unlink)  # the builder finishes
    release.start()
    wait_for_build_lock(lock, "op", stale_after_s=60, by_existence=True, poll_s=0.1)
    release.join()
    assert "waiting for another process's build of op" in capsys.readouterr().err
    lock.touch()
    _age(tmp_path, 3600)
    wait_for_build_lock(lock, "op", stale_after_s=60, by_existence=True)
    err = capsys.readouterr().err
    assert not lock.exists() and f"warning: removing {lock}" in err and "60 min ago" in err


def test_a_live_build_is_waited_for_out_loud(tmp_path, capsys):
    lock = tmp_path / "lock"
    holder = _holder(lock, 4)
    started = time.monotonic()
    wait_for_build_lock(lock, "deepspeed_shm_comm", stale_after_s=60, poll_s=0.1)
    assert holder.wait() == 0 and time.monotonic() - started > 2
    assert f"waiting for another process's build of deepspeed_shm_comm (lock {lock})" in (
        capsys.readouterr().err
    )


def test_a_hung_build_fails_with_the_lock_path(tmp_path):
    lock = tmp_path / "lock"
    holder = _holder(lock, 600)
    try:
        _age(tmp_path, 3600)
        with pytest.raises(RuntimeError, match=f"{lock}: another process has held"):
            wait_for_build_lock(lock, "op", stale_after_s=1, poll_s=0.1)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_first_start_says_it_compiles(shared_data, tmp_path):
    """A fresh environment's first `perceiver train` prints one line before compiling (2 ranks),
    into the environment's own cache; the next start compiles nothing."""
    from data_pipeline.shards.prepare import prepare

    prepare("c4", [shared_data / "c4"], tmp_path / "c4", seq_len=256)
    cache = tmp_path / "torch_extensions"
    args = [
        "train",
        str(REPO / "configs" / "tiny_mlm.yaml"),
        f"data.dir={tmp_path / 'c4'}",
        "trainer.max_steps=2",
        "trainer.val_every=0",
        "checkpoint.every=0",
        "logging.tensorboard=false",
    ]
    env = {"TORCH_EXTENSIONS_DIR": str(cache)}
    first = run_perceiver(
        [*args, f"trainer.run_dir={tmp_path / 'a'}", "--nproc-per-node", "2"], env=env
    )
    log = first.stderr
    line = f"compiling DeepSpeed's deepspeed_shm_comm op into {cache / 'deepspeed_shm_comm'}"
    assert log.count(line) == 1, log[-4000:]
    assert log.index(line) < log.index("compiled deepspeed_shm_comm in")
    assert (cache / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").is_file()
    again = run_perceiver([*args, f"trainer.run_dir={tmp_path / 'b'}"], env=env)
    assert "compiling" not in again.stderr
