"""What the batch script does after srun returns, and the run's event log."""

from __future__ import annotations

import json

import pytest

from slurm import lifecycle
from slurm.lifecycle import decide
from tests.conftest import REPO

BASE = dict(
    job_state="RUNNING",
    exit_code=0,
    summary_status=None,
    start_step=40,
    latest_step=40,
    restarts=0,
    max_requeues=3,
)


@pytest.mark.parametrize(
    "change, action, exit_code",
    [
        # Slurm is ending the job itself (scontrol requeue, preemption, scancel, time limit).
        ({"job_state": "COMPLETING", "exit_code": 143}, "leave", 143),
        ({"job_state": "CANCELLED", "summary_status": "preempted"}, "leave", 0),
        # Finished, or stopped on purpose (--stop-at-step).
        ({"summary_status": "finished", "latest_step": 100}, "done", 0),
        ({"summary_status": "stopped"}, "done", 0),
        # Warning signal: the ranks saved; requeue unless the cap is reached.
        ({"summary_status": "preempted", "latest_step": 55}, "requeue", 0),
        ({"summary_status": "preempted", "start_step": None, "latest_step": 1}, "requeue", 0),
        ({"summary_status": "preempted", "latest_step": 55, "restarts": 3}, "stop", 1),
        # ... but not without progress since this start: it would requeue forever.
        ({"summary_status": "preempted"}, "stop", 1),
        ({"summary_status": "preempted", "start_step": None, "latest_step": None}, "stop", 1),
        # Crash: requeue after progress only.
        ({"exit_code": 137, "latest_step": 60}, "requeue", 0),
        ({"exit_code": 137, "start_step": None, "latest_step": 20}, "requeue", 0),
        ({"exit_code": 137}, "stop", 137),
        ({"exit_code": 1, "start_step": None, "latest_step": None}, "stop", 1),
        ({"exit_code": 137, "latest_step": 60, "restarts": 3}, "stop", 1),
        # srun succeeded but nobody wrote a summary: something is wrong, do not loop.
        ({}, "stop", 1),
        # Slurm did not answer: decide from the files.
        ({"job_state": None, "summary_status": "preempted", "latest_step": 41}, "requeue", 0),
    ],
)
def test_decide(change, action, exit_code):
    d = decide(**{**BASE, **change})
    assert (d.action, d.exit_code) == (action, exit_code), d.reason


def test_reasons_explain():
    preempted = {**BASE, "summary_status": "preempted", "latest_step": 41}
    assert "max_requeues=3" in decide(**{**preempted, "restarts": 3}).reason
    assert decide(**{**BASE, "summary_status": "preempted"}).reason.startswith(
        "stopped on a signal, but no progress since this start (newest complete checkpoint still "
        "step 40); not requeued"
    )
    assert "JobState=COMPLETING" in decide(**{**BASE, "job_state": "COMPLETING"}).reason
    assert "without a new checkpoint" in decide(**{**BASE, "exit_code": 9}).reason


def test_events_round_trip_and_start(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_00000020").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000020" / "COMPLETE").write_text("{}")
    env = {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "2", "SLURM_JOB_NODELIST": "n[1-2]"}
    event = lifecycle.on_start(run_dir, env)
    assert event["checkpoint_step"] == 20 and event["restart_count"] == 2
    with open(run_dir / "slurm" / "events.jsonl", "a") as f:
        f.write('{"event": "torn')  # a crash mid-write
    events = lifecycle.read_events(run_dir)
    assert [e["event"] for e in events] == ["start"] and events[0]["job_id"] == "77"


def test_template_start_snapshots_once_and_resumes_after_requeue(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / "tiny_mlm.yaml")
    first = {"SLURM_JOB_ID": "5"}
    run_dir, snap, extra = lifecycle.start_from_config(
        config, ["data.dir=shards", "trainer.run_dir=run", "checkpoint.resume=none"], first
    )
    assert run_dir == tmp_path / "run" and snap == run_dir / "slurm" / "config.yaml"
    assert extra == []  # the first start honours checkpoint.resume
    text = snap.read_text()
    assert f"dir: {tmp_path}/shards" in text  # relative paths made absolute for the job

    # After a requeue: the YAML may have changed, the job keeps its snapshot and resumes.
    again = {"SLURM_JOB_ID": "5", "SLURM_RESTART_COUNT": "1"}
    _, snap2, extra2 = lifecycle.start_from_config(
        config, ["data.dir=other", "trainer.run_dir=run"], again
    )
    assert snap2 == snap and snap.read_text() == text
    assert extra2 == ["checkpoint.resume=auto"]
    starts = lifecycle.read_events(run_dir)
    assert [e["restart_count"] for e in starts] == [0, 1]

    from pretrain.config import load_config

    assert load_config(snap).trainer.run_dir == str(run_dir)  # the snapshot loads as a config


def test_submitit_checkpoint_refuses_a_requeue_without_progress(tmp_path, monkeypatch):
    """submitit calls TrainJob.checkpoint() on rank 0 for its warning signal before TrainJob
    installed its own handler: nothing was trained since this start, so no requeue."""
    from pretrain.config import load_config
    from slurm.launcher import TrainJob
    from slurm.status import format_status, gather_status

    cfg = load_config(
        REPO / "configs" / "tiny_mlm.yaml", ["data.dir=shards", f"trainer.run_dir={tmp_path}"]
    )
    monkeypatch.setenv("SLURM_JOB_ID", "987654321")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert TrainJob(cfg).checkpoint() is None
    (end,) = lifecycle.read_events(tmp_path)
    assert (end["event"], end["action"], end["restart_count"]) == ("end", "stop", 1)
    assert end["reason"].startswith(
        "warning signal before training started, but no progress since this start (no "
        "checkpoint yet); not requeued"
    )
    assert f"last decision:    stop: {end['reason']}" in format_status(gather_status(tmp_path))


def test_preempted_without_progress_is_not_requeued_and_status_says_why(tmp_path):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints" / "step_00000020"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("{}")
    env = {"SLURM_JOB_ID": "987654321", "SLURM_RESTART_COUNT": "3"}
    lifecycle.on_start(run_dir, env)
    (run_dir / "summary.json").write_text(
        json.dumps({"status": "preempted", "slurm_job_id": "987654321", "slurm_restart_count": 3})
    )
    decision = lifecycle.on_end(run_dir, 75, env)
    assert (decision.action, decision.exit_code) == ("stop", 1)
    assert "no progress since this start (newest complete checkpoint still step 20)" in (
        decision.reason
    )
    from slurm.status import format_status, gather_status

    text = format_status(gather_status(run_dir))
    assert f"last decision:    stop: {decision.reason}" in text
    assert lifecycle.read_events(run_dir)[-1]["reason"] == decision.reason


def test_end_hook_reads_only_this_starts_summary(tmp_path):
    run_dir = tmp_path / "run"
    env = {"SLURM_JOB_ID": "987654321", "SLURM_RESTART_COUNT": "1"}
    lifecycle.on_start(run_dir, env)
    summary = run_dir / "summary.json"
    # Left by the previous start of this job: not this start's outcome.
    summary.write_text(
        json.dumps({"status": "finished", "slurm_job_id": "987654321", "slurm_restart_count": 0})
    )
    decision = lifecycle.on_end(run_dir, 0, env)
    assert decision.action == "stop" and "without writing a summary" in decision.reason
    # This start's: preempted after a checkpoint -> requeue, which scontrol refuses for a job
    # that does not exist.
    (run_dir / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000010" / "COMPLETE").write_text("{}")
    summary.write_text(
        json.dumps({"status": "preempted", "slurm_job_id": "987654321", "slurm_restart_count": 1})
    )
    decision = lifecycle.on_end(run_dir, 0, env)
    assert decision.action == "stop" and "scontrol requeue 987654321 failed" in decision.reason
    events = lifecycle.read_events(run_dir)
    assert [(e["event"], e.get("action")) for e in events] == [
        ("start", None),
        ("end", "stop"),
        ("end", "requeue"),
        ("requeue_failed", None),
    ]


def test_job_id_of():
    assert lifecycle.job_id_of({"SLURM_JOB_ID": "16"}) == "16"
    array = {"SLURM_JOB_ID": "16", "SLURM_ARRAY_JOB_ID": "15", "SLURM_ARRAY_TASK_ID": "0"}
    assert lifecycle.job_id_of(array) == "15_0"
    assert lifecycle.job_id_of({}) == ""


def test_resolve_run_paths_makes_every_path_absolute(tmp_path):
    from pretrain.config import load_config

    cfg = load_config(
        REPO / "configs" / "tiny_mlm.yaml",
        [
            "data.dir=shards", "data.cache_dir=cache", "trainer.run_dir=runs/x",
            "checkpoint.dir=ckpt", "checkpoint.resume=runs/old/checkpoints/step_10",
            "checkpoint.init_from=exports/base", "glue.tokenizer=spm:tok/spm.model",
            "probes.every=5", "probes.glue_dir=glue_data",
        ],
    )  # fmt: skip
    lifecycle.resolve_run_paths(cfg, tmp_path)
    assert cfg.data.dir == str(tmp_path / "shards")
    assert cfg.data.cache_dir == str(tmp_path / "cache")
    assert cfg.trainer.run_dir == str(tmp_path / "runs/x")
    assert cfg.checkpoint.dir == str(tmp_path / "ckpt")
    assert cfg.checkpoint.resume == str(tmp_path / "runs/old/checkpoints/step_10")
    assert cfg.checkpoint.init_from == str(tmp_path / "exports/base")
    assert cfg.glue.tokenizer == f"spm:{tmp_path / 'tok/spm.model'}"
    assert cfg.probes.glue_dir == str(tmp_path / "glue_data")
    # Unset paths, keywords and remote URLs are left alone.
    cfg = load_config(REPO / "configs" / "tiny_mlm.yaml", ["data.dir=s3://bucket/shards"])
    lifecycle.resolve_run_paths(cfg, tmp_path)
    assert cfg.data.dir == "s3://bucket/shards"
    assert (cfg.checkpoint.resume, cfg.checkpoint.init_from, cfg.glue.tokenizer) == (
        "auto", "", "byte"
    )  # fmt: skip
