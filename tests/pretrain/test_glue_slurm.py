"""GLUE on a real Slurm cluster (tools/slurm_cluster.sh): a fine-tuning job array collected
afterwards, and a pretraining run whose GLUE probes are Slurm jobs that do not block it.

Skipped (with the reason) without a usable cluster, failed under CI=true, as tests/slurm is.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pretrain.export import Pretrained, write_native
from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM
from tests.conftest import REPO, run_perceiver
from tests.pretrain.test_export import _tiny
from tests.pretrain.test_glue_tasks import write_glue_fixture
from tests.slurm.conftest import require_cluster, slurm_env

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
FAST = ["glue.max_length=64", "trainer.precision=fp32"]


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    require_cluster()
    return slurm_env()


def _wait_for_jobs(env: dict[str, str], name: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(
            ["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, env=env
        )
        if proc.returncode == 0 and not proc.stdout.strip():
            return
        time.sleep(2)
    raise AssertionError(f"Slurm jobs named {name} still queued after {timeout} s")


def test_glue_job_array_then_collect(cluster, tmp_path):
    glue = write_glue_fixture(tmp_path / "data")
    out = tmp_path / "glue"
    name = f"glue-test-{os.getpid()}"
    torch.manual_seed(0)  # fine-tune a freshly initialised tiny MLM, exported
    mlm = PerceiverMLM(PerceiverIOConfig(**_tiny()))
    mlm.init_weights()
    source = write_native(
        Pretrained("perceiver_io_mlm", _tiny(), mlm.state_dict(), {"name": "byte"}, {}),
        tmp_path / "export",
    )
    common = ["--glue-dir", str(glue), "--out", str(out), "--tasks", "rte"]
    run_perceiver(
        [
            "glue",
            "--checkpoint",
            str(source),
            *common,
            "--lrs",
            "1e-4,5e-5",
            "--batch-sizes",
            "8",
            "--max-steps",
            "3",
            "--slurm",
            "--tasks-per-node",
            "2",
            "--time",
            "00:10:00",
            "--job-name",
            name,
            *FAST,
        ],
        env=cluster,
    )
    _wait_for_jobs(cluster, name)
    run_perceiver(["glue", "--collect", *common], env=cluster)
    results = json.loads((out / "results.json").read_text())
    runs = results["tasks"]["rte"]["runs"]
    assert sorted(r["lr"] for r in runs) == [5e-5, 1e-4] and not results["unfinished_runs"]
    assert all(r["batch_size"] == 8 for r in runs)
    assert (out / "submission" / "RTE.tsv").is_file()


def test_probes_as_slurm_jobs(cluster, tmp_path):
    from data_pipeline.cli import prepare_demo_corpus

    glue = write_glue_fixture(tmp_path / "data")
    prepare_demo_corpus(tmp_path / "shards", seq_len=256, objective="mlm", max_bytes=250_000)
    run = tmp_path / "run"
    name = f"probe-test-{os.getpid()}"
    run_perceiver(
        [
            "train",
            str(REPO / "configs" / "tiny_mlm.yaml"),
            f"data.dir={tmp_path / 'shards'}",
            f"trainer.run_dir={run}",
            "trainer.max_steps=4",
            "trainer.val_every=0",
            "logging.progress_bar=false",
            "probes.every=2",
            f"probes.glue_dir={glue}",
            "probes.tasks=[rte,mrpc]",
            "probes.max_steps=2",
            "probes.batch_size=8",
            f"probes.overrides=[{','.join(FAST)}]",
            "probes.mode=slurm",
            f"probes.slurm={{time: '00:10:00', job_name: {name}}}",
        ],
        env=cluster,
    )
    jobs = [
        json.loads((run / "probes" / f"step_0000000{s}" / "job.json").read_text()) for s in (2, 4)
    ]
    assert all(j["job_id"] for j in jobs)
    _wait_for_jobs(cluster, name)
    rows = [json.loads(x) for x in (run / "probes" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows) == [2, 4]
    assert all(set(r["glue"]) == {"rte", "mrpc"} for r in rows)
    assert set(rows[0]["glue"]["mrpc"]) == {"f1", "accuracy", "score"}
    assert len(list(Path(run / "tensorboard").glob("*.glue_probe_*"))) == 2
