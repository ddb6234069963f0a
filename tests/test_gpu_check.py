"""`make gpu-check` end to end on the CPU at tiny sizes, so the GPU's first run finds it working."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, clean_env

pytestmark = pytest.mark.slow


def test_gpu_check_runs_on_cpu(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "gpu_check.py"),
            "--device",
            "cpu",
            "--out",
            tmp_path,
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    names = {c["name"] for c in report["checks"]}
    for expected in (
        "sdpa kernels, mlm",
        "sdpa kernels, ar",
        "bf16 vs fp32 loss",
        "fused AdamW step",
        "activation checkpointing",
        "ZeRO-2, 1 device",
        "ZeRO-3, 1 device",
    ):
        assert expected in names
    assert not [c for c in report["checks"] if c["status"] == "FAIL"]
    impls = {(s["model"].split()[0], s["implementation"]) for s in report["speed"]}
    assert ("MLM", "HF PerceiverForMaskedLM") in impls
    assert ("MLM", "ours, masked decoding, compiled") in impls and ("AR", "ours, compiled") in impls
    assert all(s["tokens_per_s"] > 0 for s in report["speed"])
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| check | result |" in table and "tokens/s" in table
