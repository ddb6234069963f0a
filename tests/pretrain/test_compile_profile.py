"""``trainer.compile`` (losses equal to eager within float tolerance, with activation
checkpointing) and ``trainer.profile`` (a Chrome / TensorBoard trace of the chosen steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.config import ConfigError, load_config
from tests.conftest import REPO, run_perceiver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    from data_pipeline.cli import prepare_demo_corpus

    root = tmp_path_factory.mktemp("shards")
    out = {}
    for objective, cfg in (("mlm", "tiny_mlm.yaml"), ("ar", "tiny_ar.yaml")):
        seq_len = load_config(REPO / "configs" / cfg).model.max_seq_len
        out[objective] = root / objective
        prepare_demo_corpus(out[objective], seq_len=seq_len, objective=objective, max_bytes=200_000)
    return out


def _run(config: str, data: Path, run: Path, *overrides: str) -> dict[int, float]:
    run_perceiver(
        [
            "train",
            str(REPO / "configs" / config),
            f"data.dir={data}",
            f"trainer.run_dir={run}",
            "trainer.max_steps=4",
            "trainer.log_every=1",
            "trainer.val_every=0",
            "trainer.precision=fp32",
            "trainer.zero_stage=0",
            "checkpoint.every=0",
            "checkpoint.save_final=false",
            "logging.progress_bar=false",
            *overrides,
        ]
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.parametrize(
    ("objective", "config"), [("mlm", "tiny_mlm.yaml"), ("ar", "tiny_ar.yaml")]
)
def test_compiled_training_matches_eager(shards, tmp_path, objective, config) -> None:
    common = ("trainer.activation_checkpointing=true",)
    eager = _run(config, shards[objective], tmp_path / "eager", *common)
    compiled = _run(
        config, shards[objective], tmp_path / "compiled", *common, "trainer.compile=true"
    )
    assert eager.keys() == compiled.keys() == {1, 2, 3, 4}
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=1e-3), step


def test_profile_writes_a_trace_of_the_chosen_steps(shards, tmp_path) -> None:
    run = tmp_path / "run"
    _run("tiny_mlm.yaml", shards["mlm"], run, "trainer.profile=2-3")
    traces = sorted((run / "profile").glob("rank0*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert any(n.startswith("aten::") for n in names)
    assert any("scaled_dot_product" in n for n in names)  # the attention kernels are in it


@pytest.mark.parametrize("bad", ["0-2", "3-2", "x", "1-2-3"])
def test_profile_range_is_validated(bad) -> None:
    with pytest.raises(ConfigError, match="trainer.profile"):
        load_config(REPO / "configs" / "tiny_mlm.yaml", [f"trainer.profile={bad}"])
