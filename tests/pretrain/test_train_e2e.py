"""End to end on 2 CPU processes (gloo): shards -> DeepSpeed ZeRO-2/3 training -> checkpoints ->
exact resume; and the demo pipeline at reduced size."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, clean_env, free_port, run_perceiver

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    from data_pipeline.cli import prepare_demo_corpus
    from pretrain.config import load_config

    root = tmp_path_factory.mktemp("shards")
    out = {}
    for objective, cfg in (("mlm", "tiny_mlm.yaml"), ("ar", "tiny_ar.yaml")):
        seq_len = load_config(REPO / "configs" / cfg).model.max_seq_len
        out[objective] = root / objective
        prepare_demo_corpus(out[objective], seq_len=seq_len, objective=objective, max_bytes=400_000)
    return out


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _train(
    config: str, data_dir: Path, run_dir: Path, *overrides: str, extra: tuple[str, ...] = ()
):
    return run_perceiver(
        [
            "train",
            str(REPO / "configs" / config),
            f"data.dir={data_dir}",
            f"trainer.run_dir={run_dir}",
            "logging.progress_bar=false",
            *overrides,
            "--nproc-per-node",
            "2",
            *extra,
        ]
    )


def test_zero3_mlm_with_activation_checkpointing(shards, tmp_path):
    run = tmp_path / "run"
    _train(
        "tiny_mlm.yaml",
        shards["mlm"],
        run,
        "trainer.zero_stage=3",
        "trainer.activation_checkpointing=true",
        "trainer.max_steps=6",
        "trainer.log_every=1",
        "trainer.val_every=3",
        "checkpoint.every=3",
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["state"]["step"] == 6
    assert set(_losses(run)) == set(range(1, 7))
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000003", "step_00000006"]
    assert all((run / "checkpoints" / c / "COMPLETE").is_file() for c in ckpts)
    assert "val/accuracy" in summary["val_metrics"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file()


def _client_state(run_dir: Path, step: int) -> dict:
    import torch

    path = run_dir / "checkpoints" / f"step_{step:08d}" / "mp_rank_00_model_states.pt"
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return {k: saved[k] for k in ("train_state", "loader_state")}


@pytest.mark.parametrize(
    "config, objective, overrides",
    [
        # the AR preset as it ships: prefix dropout 0.5 draws at every step
        ("tiny_ar.yaml", "ar", ()),
        # MLM masks come from the masker's generator; attention dropout from the global one
        ("tiny_mlm.yaml", "mlm", ("model.dropout=0.1",)),
    ],
    ids=["ar", "mlm_dropout"],
)
def test_resume_reproduces_uninterrupted_losses_exactly(
    shards, tmp_path, config, objective, overrides
):
    """Stopped at step 3 and resumed, 2 ranks reproduce every loss of a run that never stopped,
    bit for bit, and end with the same data loader position: every random draw depends only on
    (seed, micro-step, rank), not on what ran before it."""
    common = (
        "trainer.max_steps=8",
        "trainer.log_every=1",
        "trainer.val_every=0",
        "checkpoint.every=0",
        *overrides,
    )
    full, parts = tmp_path / "full", tmp_path / "parts"
    _train(config, shards[objective], full, *common)
    _train(config, shards[objective], parts, *common, extra=("--stop-at-step", "3"))
    assert json.loads((parts / "summary.json").read_text())["status"] == "stopped"
    _train(config, shards[objective], parts, *common)
    summary = json.loads((parts / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step_00000003")
    a, b = _losses(full), _losses(parts)
    assert sorted(a) == list(range(1, 9)) and sorted(b) == list(range(1, 9))
    assert [a[s] for s in range(1, 9)] == [b[s] for s in range(1, 9)]  # bit-identical
    assert _client_state(full, 8) == _client_state(parts, 8)  # same samples seen, same position


def test_damaged_checkpoint_is_rejected_and_leftovers_removed(shards, tmp_path):
    """A file truncated after COMPLETE: status and resume name it, resume falls back to the
    previous checkpoint and replays the lost steps once in metrics.jsonl; the next save removes
    the rejected and a killed save's directory."""
    from pretrain.train.checkpoint import list_complete
    from slurm.status import format_status, gather_status

    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    common = (
        "trainer.log_every=1",
        "trainer.val_every=0",
        "checkpoint.every=2",
        "checkpoint.keep=0",
    )
    _train("tiny_mlm.yaml", shards["mlm"], run, "trainer.max_steps=5", *common)
    before = _losses(run)
    assert [s for s, _ in list_complete(ckpts)] == [2, 4, 5]
    shutil.copytree(ckpts / "step_00000002", ckpts / "step_00000003")  # a save killed before
    (ckpts / "step_00000003" / "COMPLETE").unlink()  # its COMPLETE
    victim = ckpts / "step_00000005" / "mp_rank_00_model_states.pt"
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)

    status = gather_status(run)
    assert status.last_checkpoint_step == 4
    assert str(victim) in format_status(status) and "step_00000005: damaged" in format_status(
        status
    )

    proc = _train("tiny_mlm.yaml", shards["mlm"], run, "trainer.max_steps=6", *common)
    assert f"{victim}: " in proc.stderr and "trying the previous complete checkpoint" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from"].endswith("step_00000004")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 5 again, logged once
    after = _losses(run)
    assert [after[s] for s in range(1, 6)] == [before[s] for s in range(1, 6)]
    assert sorted(p.name for p in ckpts.glob("step_*")) == [
        "step_00000002",
        "step_00000004",
        "step_00000006",
    ]
    assert not gather_status(run).unusable_checkpoints


@pytest.mark.parametrize(
    "engine,limit",
    [(("trainer.zero_stage=2",), 0), (("trainer.zero_stage=0", "trainer.precision=fp32"), 2)],
    ids=["zero2-bf16-stop-at-once", "zero0-fp32-skip-2"],
)
def test_diverging_run_stops_and_leaves_no_checkpoint_of_nonfinite_state(
    shards, tmp_path, engine, limit
):
    """optimizer.lr=1e6: every step is checked; bad steps are skipped up to the limit, then the
    run stops naming the step and the last good checkpoint; no COMPLETE checkpoint holds weights
    that gave a non-finite loss or gradients."""
    run = tmp_path / "run"
    overrides = [
        f"data.dir={shards['mlm']}",
        f"trainer.run_dir={run}",
        "optimizer.lr=1e6",
        "trainer.max_steps=12",
        "trainer.log_every=1",
        "trainer.val_every=0",
        "checkpoint.every=1",
        "checkpoint.keep=0",
        *engine,
    ]
    if limit:
        overrides.append(f"trainer.nonfinite_skip_limit={limit}")
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.cli", "train", str(REPO / "configs" / "tiny_mlm.yaml")]
        + overrides
        + ["--nproc-per-node", "2"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    m = re.search(
        r"step (\d+): loss or gradients were not finite on (\d+) consecutive steps \(since step "
        rf"(\d+); trainer.nonfinite_skip_limit={limit}\)\. Last good checkpoint: (\S+)",
        proc.stderr,
    )
    assert m, proc.stderr[-3000:]
    stop, streak, first_bad = int(m[1]), int(m[2]), int(m[3])
    assert streak == limit + 1 and stop == first_bad + limit
    assert proc.stderr.count("optimizer step skipped") == limit  # one warning per skip, rank 0
    from pretrain.train.checkpoint import list_complete, rejected

    ckpts = run / "checkpoints"
    good = list_complete(ckpts)
    assert all(step < first_bad - 1 for step, _ in good)
    assert m[4] == (str(good[-1][1]) if good else "None")
    assert [p.name for p, _ in rejected(ckpts)] == [f"step_{first_bad - 1:08d}"]
    assert max(_losses(run)) < first_bad  # skipped steps are not logged
    assert all(math.isfinite(v) for v in _losses(run).values())


def test_demo_pipeline_reduced(tmp_path):
    """The `make demo` code path, shortened: both models train with 2 ranks under ZeRO-2."""
    from pretrain.demo import format_report, run_demo

    summaries = run_demo(
        tmp_path,
        nproc=2,
        max_bytes=300_000,
        overrides=[
            "trainer.max_steps=30",
            "trainer.val_every=30",
            "trainer.log_every=5",
            "checkpoint.every=0",
            "logging.progress_bar=false",
        ],
    )
    for objective in ("mlm", "ar"):
        s = summaries[objective]
        assert s["status"] == "finished" and s["state"]["step"] == 30
        assert s["last_loss"] < s["first_loss"], f"{objective}: loss did not fall"
        assert Path(s["checkpoint"], "COMPLETE").is_file()
    assert "val/bits_per_byte" in summaries["ar"]["val_metrics"]
    report = format_report(summaries, tmp_path)
    assert "tensorboard --logdir" in report and "tokens seen" in report
    # what the models learned, from their final checkpoints
    assert 'AR continues "Return the number of "' in report and "perceiver generate" in report
    assert "MLM fills" in report and "perceiver fill-mask" in report


def test_empty_val_split_warns_once_and_trains_without_validation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from data_pipeline.cli import prepare_demo_corpus
    from pretrain.config import load_config

    seq_len = load_config(REPO / "configs" / "tiny_mlm.yaml").model.max_seq_len
    data = tmp_path / "data"
    prepare_demo_corpus(data, seq_len=seq_len, max_bytes=60_000, val_fraction=0.0)
    run = tmp_path / "run"
    proc = _train("tiny_mlm.yaml", data, run, "trainer.max_steps=2", "trainer.log_every=1",
                  "trainer.val_every=1", "checkpoint.every=0")  # fmt: skip
    assert proc.stderr.count("no validation (trainer.val_every=1 skipped)") == 1  # rank 0 only
    assert f"{data / 'val'} has no samples" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["state"]["step"] == 2
    assert summary["val_metrics"] == {}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    assert not any(k.startswith("val/") for r in rows for k in r)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    assert "validation/text_summary" in events.Tags()["tensors"]


def test_shards_that_do_not_fit_the_model_are_refused_before_training(shards, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.cli",
            "train",
            str(REPO / "configs" / "tiny_mlm.yaml"),
            f"data.dir={shards['ar']}",
            f"trainer.run_dir={tmp_path / 'run'}",
            "--nproc-per-node",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "data.dir" in proc.stderr and "257 tokens" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_single_process_and_torchrun_launches(shards, tmp_path):
    """Without a launcher (1 process) and under torchrun (2 processes) the same CLI trains."""
    import subprocess
    import sys

    common = [
        "trainer.max_steps=3",
        "trainer.val_every=0",
        "checkpoint.every=0",
        "logging.progress_bar=false",
        f"data.dir={shards['ar']}",
    ]
    run_perceiver(
        [
            "train",
            str(REPO / "configs" / "tiny_ar.yaml"),
            *common,
            f"trainer.run_dir={tmp_path / 'single'}",
        ]
    )
    single = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert single["status"] == "finished" and single["state"]["samples_seen"] == 3 * 4

    env = clean_env()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(free_port()),
            "-m",
            "pretrain.cli",
            "train",
            str(REPO / "configs" / "tiny_ar.yaml"),
            *common,
            f"trainer.run_dir={tmp_path / 'torchrun'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    multi = json.loads((tmp_path / "torchrun" / "summary.json").read_text())
    assert multi["status"] == "finished" and multi["state"]["samples_seen"] == 3 * 4 * 2


def test_resume_with_another_world_size_through_universal_checkpoint(shards, tmp_path):
    """A ZeRO-2 checkpoint of 2 ranks resumes on 1 rank with the same global batch."""
    run = tmp_path / "run"
    common = (
        "trainer.max_steps=5",
        "trainer.log_every=1",
        "trainer.val_every=0",
        "checkpoint.every=0",
    )
    _train("tiny_mlm.yaml", shards["mlm"], run, *common, extra=("--stop-at-step", "2"))
    run_perceiver(
        [
            "train",
            str(REPO / "configs" / "tiny_mlm.yaml"),
            f"data.dir={shards['mlm']}",
            f"trainer.run_dir={run}",
            "logging.progress_bar=false",
            *common,
            "trainer.micro_batch_size=2",
            "trainer.grad_accum_steps=4",
            "checkpoint.keep=1",
        ]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from"].endswith("step_00000002")
    assert summary["state"]["samples_seen"] == 5 * 8  # 2 ranks x 4, then 1 rank x 2 x 4
    # the universal conversion goes with its checkpoint (checkpoint.keep=1)
    left = sorted(p.name for p in (run / "checkpoints").glob("*") if "step" in p.name)
    assert left == ["step_00000005"] and not (run / "checkpoints" / "latest_universal").exists()
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3, 4, 5] and all(math.isfinite(v) for v in losses.values())


def test_nproc_per_node_under_another_launcher_is_refused(shards, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.cli",
            "train",
            str(REPO / "configs" / "tiny_ar.yaml"),
            f"data.dir={shards['ar']}",
            f"trainer.run_dir={tmp_path / 'run'}",
            "--nproc-per-node",
            "2",
        ],
        cwd=REPO,
        env=clean_env({"RANK": "0", "WORLD_SIZE": "2"}),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "already started by a launcher" in proc.stderr
    assert not (tmp_path / "run").exists()
