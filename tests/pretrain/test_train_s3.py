"""Training from shards in object storage (a real S3 endpoint on 127.0.0.1, moto's server): 2 CPU
ranks stream `data.dir=s3://...` through a node-local cache, stop and resume bit-identically, and
give the losses of the same shards read from a local directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, clean_env, run_perceiver
from tests.pretrain.test_train_e2e import _losses, _train

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def demo(s3_server, tmp_path_factory) -> dict[str, str]:
    from data_pipeline.cli import prepare_demo_corpus
    from pretrain.config import load_config

    seq_len = load_config(REPO / "configs" / "tiny_mlm.yaml").model.max_seq_len
    local = tmp_path_factory.mktemp("local") / "mlm"
    url = s3_server.bucket("train-data") + "/demo/mlm"
    for out in (local, url):
        prepare_demo_corpus(out, seq_len=seq_len, objective="mlm", max_bytes=400_000)
    return {"local": str(local), "s3": url}


def test_train_from_s3_on_2_ranks_resumes_bit_identically(s3_server, demo, tmp_path):
    common = (
        "trainer.max_steps=6",
        "trainer.log_every=1",
        "trainer.val_every=3",
        "checkpoint.every=0",
    )
    local, parts = tmp_path / "local", tmp_path / "parts"
    cache = tmp_path / "node-local-cache"
    _train("tiny_mlm.yaml", demo["local"], local, *common)
    remote = (*common, f"data.cache_dir={cache}", "data.predownload=16", "data.download_retry=3")
    _train("tiny_mlm.yaml", demo["s3"], parts, *remote, extra=("--stop-at-step", "2"))
    assert json.loads((parts / "summary.json").read_text())["status"] == "stopped"
    _train("tiny_mlm.yaml", demo["s3"], parts, *remote)
    summary = json.loads((parts / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from"].endswith("step_00000002")
    a, b = _losses(local), _losses(parts)
    assert sorted(b) == list(range(1, 7)) and [a[s] for s in b] == [b[s] for s in b]
    assert list(cache.rglob("shard.*.mds*")) and not (parts / ".streaming_cache").exists()
    assert "s3://train-data/demo/mlm" in (parts / "config.yaml").read_text()
    secret = s3_server.env["AWS_SECRET_ACCESS_KEY"].encode()
    leaked = [p for p in parts.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert leaked == []


def test_elastic_resume_from_s3_on_another_world_size(demo, tmp_path):
    """A checkpoint of 2 ranks reading s3:// resumes on 1 rank (universal checkpoint), with the
    same global batch and the loader's position carried over."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    common = ("trainer.max_steps=4", "trainer.log_every=1", "trainer.val_every=0",
              "checkpoint.every=0", f"data.cache_dir={cache}")  # fmt: skip
    _train("tiny_mlm.yaml", demo["s3"], run, *common, extra=("--stop-at-step", "2"))
    run_perceiver(
        [
            "train",
            str(REPO / "configs" / "tiny_mlm.yaml"),
            f"data.dir={demo['s3']}",
            f"trainer.run_dir={run}",
            "logging.progress_bar=false",
            *common,
            "trainer.micro_batch_size=2",
            "trainer.grad_accum_steps=4",
        ]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from"].endswith("step_00000002")
    assert summary["state"]["samples_seen"] == 4 * 8
    assert sorted(_losses(run)) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("config", "data", "message"),
    [
        ("tiny_ar.yaml", "s3", r"s3://train-data/demo/mlm: samples hold 256 tokens but ar"),
        ("tiny_mlm.yaml", "s3://train-data/none", r"s3://train-data/none/manifest.json not found"),
        (
            "tiny_mlm.yaml",
            "s3://no-bucket/x",
            r"bucket 'no-bucket' of s3://no-bucket/x does not exist",
        ),
        ("tiny_mlm.yaml", "https://example.com/x", r"data.dir: unsupported URL"),
    ],
)
def test_remote_data_is_checked_before_training(s3_server, demo, tmp_path, config, data, message):
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.cli",
            "train",
            str(REPO / "configs" / config),
            f"data.dir={demo.get(data, data)}",
            f"trainer.run_dir={run}",
            "--nproc-per-node",
            "2",
        ],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "data.dir" in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr[-3000:]
    assert not Path(run).exists()
