"""``train()`` called in-process (1 rank on gloo, no CLI) with hooks: the loop calls every hook
point in order, saves complete checkpoints, resumes and stops early; GLUE probes are a hook whose
Slurm submission is handed in."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pretrain.config import load_config
from pretrain.glue.probes import GlueProbes, probe_hooks
from pretrain.train import checkpoint as ckpt
from pretrain.train.hooks import Hook
from tests.conftest import REPO, free_port
from tests.pretrain.test_glue_tasks import write_glue_fixture


class Recorder(Hook):
    """Records what the loop calls, checking what each call promises."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_start(self, ctx) -> None:
        assert ctx.engine.module is not None and ctx.env.world_size == 1
        self.events.append(("start", ctx.state.step))

    def after_step(self, ctx) -> None:
        self.events.append(("step", ctx.state.step, ctx.stopping))

    def after_save(self, ctx, path: Path) -> None:
        assert ckpt.is_complete(path) and ckpt.verify(path) == []  # complete, files as recorded
        assert path == ctx.cfg.checkpoint_dir() / ckpt.tag_for_step(ctx.state.step)
        self.events.append(("save", ctx.state.step, path))

    def on_end(self, ctx, result) -> None:
        assert result.state is ctx.state
        self.events.append(("end", result.status, result.state.step))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from data_pipeline.cli import prepare_demo_corpus

    out = tmp_path_factory.mktemp("shards") / "mlm"
    seq_len = load_config(REPO / "configs" / "tiny_mlm.yaml").model.max_seq_len
    prepare_demo_corpus(out, seq_len=seq_len, objective="mlm", max_bytes=400_000)
    return out


@pytest.fixture
def one_rank(monkeypatch):
    """This process as rank 0 of 1 (gloo, free port); the process group and torch's global
    settings that train() changes are restored afterwards."""
    from pretrain.train import distributed as dist_utils

    env = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    for k, v in {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    dist_utils.destroy()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _cfg(shards: Path, run: Path, *overrides: str):
    return load_config(
        REPO / "configs" / "tiny_mlm.yaml",
        [
            f"data.dir={shards}",
            f"trainer.run_dir={run}",
            "trainer.log_every=1",
            "trainer.val_every=2",
            "checkpoint.every=2",
            "logging.progress_bar=false",
            *overrides,
        ],
    )


@pytest.mark.slow
def test_train_in_process_calls_every_hook_point(shards, tmp_path, one_rank):
    from pretrain.train.trainer import train

    run = tmp_path / "run"
    glue = write_glue_fixture(tmp_path / "glue")
    submitted: list[tuple[list[str], Path, int]] = []

    def submit(command: list[str], out: Path, step: int) -> str:
        submitted.append((command, out, step))
        return f"job{step}"

    probes = ["probes.every=2", f"probes.glue_dir={glue}", "probes.mode=slurm"]
    cfg = _cfg(shards, run, "trainer.max_steps=4", *probes)
    rec = Recorder()
    result = train(cfg, hooks=[rec, *probe_hooks(cfg, True, submit)])

    saves = {s: run / "checkpoints" / ckpt.tag_for_step(s) for s in (2, 4)}
    assert rec.events == [
        ("start", 0),
        ("step", 1, False),
        ("save", 2, saves[2]),
        ("step", 2, False),
        ("step", 3, False),
        ("save", 4, saves[4]),
        ("step", 4, False),
        ("end", "finished", 4),
    ]
    assert result.status == "finished" and result.checkpoint == saves[4]
    assert math.isfinite(result.first_loss) and "val/loss" in result.val_metrics
    # the probes of steps 2 and 4: a snapshot export each, handed to the submitter
    assert [s for _, _, s in submitted] == [2, 4]
    for command, out, step in submitted:
        assert (out / "model").is_dir() and str(out / "model") in command
        assert json.loads((out / "job.json").read_text())["job_id"] == f"job{step}"

    # Resume from step 4 and stop early at 6: the stopping step is saved, and no probe starts.
    rec = Recorder()
    more = _cfg(shards, run, "trainer.max_steps=8", *probes)
    result = train(more, hooks=[rec, *probe_hooks(more, True, submit)], stop_at_step=6)
    assert result.resumed_from == saves[4]
    assert rec.events == [
        ("start", 4),
        ("step", 5, False),
        ("save", 6, run / "checkpoints" / ckpt.tag_for_step(6)),
        ("step", 6, True),
        ("end", "stopped", 6),
    ]
    assert [s for _, _, s in submitted] == [2, 4]  # not at 6: the loop was stopping


def test_slurm_probes_need_a_submitter(tmp_path):
    glue = write_glue_fixture(tmp_path / "glue")
    cfg = load_config(
        REPO / "configs" / "tiny_mlm.yaml",
        [f"data.dir={tmp_path}", "probes.every=2", f"probes.glue_dir={glue}", "probes.mode=slurm"],
    )
    with pytest.raises(ValueError, match=r"^probes.mode=slurm: .*slurm.probes.probe_submitter"):
        GlueProbes(cfg, True)
    cfg.probes.every = 0
    assert probe_hooks(cfg, True) == []


def test_cpu_ranks_split_the_cores_unless_omp_num_threads_is_set(monkeypatch):
    from pretrain.train.trainer import cpu_threads

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert (cpu_threads(1), cpu_threads(4), cpu_threads(32)) == (16, 4, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(4) is None
