"""Streaming's shared memory: a killed run's goes at the next start; a live run keeps its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, clean_env

# Streams a batch, prints the /dev/shm segments it holds, then waits on stdin.
STREAMER = """
import json, sys
from data_pipeline.loading.dataset import build_dataloader, ensure_distributed_env
ensure_distributed_env(clean_shared_memory=False)
loader = build_dataloader(sys.argv[1], "train", 2, shuffle=False, seed=0, cache_root=sys.argv[2])
next(iter(loader))
maps = open("/proc/self/maps").read().splitlines()
print(json.dumps(sorted({l.split()[-1][9:] for l in maps if "/dev/shm/" in l})), flush=True)
sys.stdin.readline()
"""


def _start_streamer(shards: Path, cache: Path) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", STREAMER, str(shards), str(cache)],
        cwd=REPO,
        env=clean_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    names = json.loads(proc.stdout.readline())
    assert names, "the streamer holds no shared memory"
    return proc, names


def test_start_removes_shared_memory_of_killed_runs_only(demo_shards, tmp_path):
    live, live_names = _start_streamer(demo_shards, tmp_path / "live")
    try:
        killed, killed_names = _start_streamer(demo_shards, tmp_path / "killed")
        os.killpg(killed.pid, signal.SIGKILL)  # with its resource tracker, as Slurm kills a step
        killed.wait()
        assert all(os.path.exists(f"/dev/shm/{n}") for n in killed_names)  # leaked
        # what every training process does first (pretrain.train.trainer -> build_dataloader)
        start = "from data_pipeline.loading.dataset import ensure_distributed_env as e; e()"
        subprocess.run([sys.executable, "-c", start], cwd=REPO, env=clean_env(), check=True)
        assert not [n for n in killed_names if os.path.exists(f"/dev/shm/{n}")]
        assert all(os.path.exists(f"/dev/shm/{n}") for n in live_names)
    finally:
        live.communicate("\n", timeout=60)
