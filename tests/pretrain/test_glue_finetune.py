"""End to end on 2 CPU processes: tiny MLM pretraining with an inline GLUE probe -> export
(native, HF with identical logits) -> ``perceiver glue`` fine-tuning through the trainer ->
results, leaderboard files; and short runs on the real GLUE tasks in ../shared/data/glue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_perceiver
from tests.pretrain.test_glue_tasks import write_glue_fixture

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
FAST = ["glue.max_length=64", "trainer.precision=fp32"]


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return write_glue_fixture(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, glue_dir) -> Path:
    """4 steps of tiny MLM pretraining (ZeRO-2, 2 ranks) with a GLUE probe (RTE) at step 4."""
    from data_pipeline.cli import prepare_demo_corpus

    root = tmp_path_factory.mktemp("pretrain")
    prepare_demo_corpus(root / "shards", seq_len=256, objective="mlm", max_bytes=250_000)
    run = root / "run"
    run_perceiver(
        [
            "train",
            str(REPO / "configs" / "tiny_mlm.yaml"),
            f"data.dir={root / 'shards'}",
            f"trainer.run_dir={run}",
            "trainer.max_steps=4",
            "trainer.val_batches=1",
            "logging.progress_bar=false",
            "probes.every=4",
            f"probes.glue_dir={glue_dir}",
            "probes.tasks=[rte]",
            "probes.max_steps=3",
            "probes.batch_size=8",
            f"probes.overrides=[{','.join(FAST)}]",
            "--nproc-per-node",
            "2",
        ]
    )
    return run


def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer({"run": str(tb_dir)}).Reload()
    acc = mux.GetAccumulator("run")
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_probe_results_land_in_the_pretraining_tensorboard(pretrain_run):
    summary = json.loads((pretrain_run / "summary.json").read_text())
    assert summary["status"] == "finished" and "val/bits_per_byte" in summary["val_metrics"]
    rows = [
        json.loads(x)
        for x in (pretrain_run / "probes" / "results.jsonl").read_text().split("\n")
        if x
    ]
    assert [r["step"] for r in rows] == [4]
    accuracy = rows[0]["glue"]["rte"]["accuracy"]
    assert 0.0 <= accuracy <= 100.0 and rows[0]["glue"]["rte"]["score"] == accuracy
    scalars = _scalars(pretrain_run / "tensorboard")
    assert scalars["glue/rte/accuracy"] == [(4, pytest.approx(accuracy))]
    assert "train/loss" in scalars  # the same TensorBoard run as pretraining
    snapshot = pretrain_run / "probes" / "step_00000004"
    assert (snapshot / "model" / "model.safetensors").is_file()
    probe_run = json.loads((snapshot / "results.json").read_text())["tasks"]["rte"]["best"]
    assert probe_run["step"] == 3 and not probe_run["test_predictions"]


def test_export_cli_native_and_hf_identical_logits(pretrain_run, tmp_path):
    import transformers

    from pretrain.export import consolidate, find_checkpoint, load_pretrained
    from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM

    checkpoint = pretrain_run / "checkpoints" / "step_00000004"
    run_perceiver(["export", str(pretrain_run), "--output", str(tmp_path / "hf"), "--format", "hf"])
    run_perceiver(
        ["export", str(checkpoint), "--output", str(tmp_path / "native"), "--dtype", "bf16"]
    )
    assert find_checkpoint(pretrain_run) == checkpoint
    native = load_pretrained(tmp_path / "native")
    state = consolidate(checkpoint)
    assert native.source["step"] == 4 and native.tokenizer["name"] == "byte"
    assert all(torch.equal(native.state_dict[k], v.bfloat16().float()) for k, v in state.items())
    model = PerceiverMLM(PerceiverIOConfig(**native.model)).eval()
    model.load_state_dict(state)
    hf = transformers.PerceiverForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.randint(6, 262, (2, 256), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 100:] = 0
    with torch.no_grad():
        diff = (model(ids, mask.bool()) - hf(input_ids=ids, attention_mask=mask).logits).abs().max()
    assert diff < 1e-4


def test_pretrain_export_finetune_chain_on_2_processes(pretrain_run, glue_dir, tmp_path):
    from pretrain.export import consolidate, read_export
    from pretrain.glue.results import read_predictions

    out = tmp_path / "glue"
    common = ["--glue-dir", str(glue_dir), "--out", str(out), "--lrs", "1e-4", "--epochs", "2"]
    run_perceiver(
        [
            "glue",
            "--checkpoint",
            str(pretrain_run),
            "--tasks",
            "rte,stsb",
            *common,
            "--batch-sizes",
            "8",
            "--nproc-per-node",
            "2",
            *FAST,
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"rte", "stsb"} and not results["unfinished_runs"]
    stsb = results["tasks"]["stsb"]["best"]
    assert set(stsb["metrics"]) == {"pearson", "spearman"} and stsb["batch_size"] == 8
    assert results["glue_average"] == pytest.approx(
        (results["tasks"]["rte"]["best"]["score"] + stsb["score"]) / 2
    )
    assert "| STS-B | Pearson corr." in (out / "results.md").read_text()
    # Fine-tuning started from the consolidated pretraining checkpoint.
    pretrained = read_export(out / "pretrained")
    state = consolidate(pretrain_run / "checkpoints" / "step_00000004")
    assert all(torch.equal(pretrained.state_dict[k], v) for k, v in state.items())
    run_dir = Path(stsb["run_dir"])
    config = (run_dir / "config.yaml").read_text()
    assert f"init_from: {out / 'pretrained'}" in config
    complete = json.loads((run_dir / "checkpoints" / "step_00000012" / "COMPLETE").read_text())
    assert complete["world_size"] == 2  # 2 epochs x 48 // 8 steps on 2 ranks
    scalars = _scalars(run_dir / "tensorboard")
    assert [s for s, _ in scalars["val/pearson"]] == [6, 12]  # dev once per epoch
    for name in ("RTE", "STS-B"):
        indices, predictions = read_predictions(out / "submission" / f"{name}.tsv")
        assert indices == [str(i) for i in range(10)]
    assert set(predictions) - {f"{x / 1000:.3f}" for x in range(5001)} == set()
    # --collect re-reads the finished runs instead of training again.
    before = (run_dir / "eval.json").stat().st_mtime
    run_perceiver(["glue", "--collect", "--tasks", "rte,stsb", "--out", str(out)])
    assert (run_dir / "eval.json").stat().st_mtime == before
    assert json.loads((out / "results.json").read_text())["tasks"] == results["tasks"]


@pytest.mark.shared_data
def test_short_runs_on_the_real_glue_tasks(shared_data, pretrain_run, tmp_path):
    """The real files of the two tasks whose metrics the fixture chain does not cover (MRPC's F1,
    CoLA's Matthews correlation; RTE and STS-B run in test_pretrain_export_finetune_chain...)."""
    glue = shared_data / "glue"
    assert glue.is_dir(), f"{glue} not found in the shared data"
    out = tmp_path / "glue"
    run_perceiver(
        [
            "glue",
            "--checkpoint",
            str(pretrain_run),
            "--glue-dir",
            str(glue),
            "--tasks",
            "mrpc,cola",
            "--out",
            str(out),
            "--lrs",
            "1e-4",
            "--batch-sizes",
            "16",
            "--max-steps",
            "6",
            "--no-test",
            *FAST,
        ]
    )
    results = json.loads((out / "results.json").read_text())
    expected = {"mrpc": {"f1", "accuracy"}, "cola": {"mcc"}}
    for task, names in expected.items():
        best = results["tasks"][task]["best"]
        assert set(best["metrics"]) == names
        assert all(-100.0 <= v <= 100.0 for v in best["metrics"].values())
    rows = (out / "mrpc" / "bs=16" / "lr=1e-4" / "predictions" / "dev.tsv").read_text().splitlines()
    assert len(rows) == 1 + 408 and rows[1].split("\t")[1] in ("0", "1")


def test_glue_run_resumes_exactly(glue_dir, tmp_path):
    """Stopped at the end of an epoch and resumed, a GLUE run logs the losses of one that never
    stopped (the loader's state and the dropout RNG are in the checkpoint)."""

    def train(run: Path, *extra: str) -> dict[int, float]:
        run_perceiver(
            [
                "train",
                str(REPO / "configs" / "glue_tiny.yaml"),
                f"data.dir={glue_dir / 'RTE'}",
                f"trainer.run_dir={run}",
                "trainer.max_steps=8",
                "trainer.log_every=1",
                "trainer.micro_batch_size=16",
                "trainer.val_every=4",
                "trainer.deterministic=true",
                "glue.max_length=64",
                *extra,
            ]
        )
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    full = train(tmp_path / "full")
    first = train(tmp_path / "resumed", "--stop-at-step", "3")  # 48 examples: 3 batches/epoch
    assert sorted(first) == [1, 2, 3]
    resumed = train(tmp_path / "resumed")
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step_00000003")
    assert sorted(full) == list(range(1, 9)) and resumed == full
    assert len(set(full.values())) == 8


def test_fine_tuning_learns_a_learnable_task(tmp_path):
    """Through the whole path (export -> perceiver glue -> trainer -> evaluation) a classifier
    from scratch learns an easy rule: the label is whether a sentence starts with "cat"."""
    import random

    import yaml

    from pretrain.config import CONFIG_ROOT
    from pretrain.export import Pretrained, write_native
    from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM

    rng = random.Random(0)
    words = "the a sat ran on under mat log quickly slowly red blue big small".split()
    for split, n in (("train", 640), ("dev", 128)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            text = " ".join(["cat" if i % 2 else "dog"] + [rng.choice(words) for _ in range(6)])
            lines.append(f"{text} \t{i % 2}")
        (tmp_path / "glue" / "SST-2").mkdir(parents=True, exist_ok=True)
        (tmp_path / "glue" / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    spec = yaml.safe_load((CONFIG_ROOT / "model" / "perceiver_io_mlm_tiny.yaml").read_text())
    spec.pop("type")
    torch.manual_seed(0)
    mlm = PerceiverMLM(PerceiverIOConfig(**spec))
    mlm.init_weights()
    source = write_native(
        Pretrained("perceiver_io_mlm", spec, mlm.state_dict(), {"name": "byte"}, {}),
        tmp_path / "scratch",
    )
    out = tmp_path / "out"
    run_perceiver(
        [
            "glue",
            "--checkpoint",
            str(source),
            "--glue-dir",
            str(tmp_path / "glue"),
            "--tasks",
            "sst2",
            "--out",
            str(out),
            "--lrs",
            "1e-3",
            "--batch-sizes",
            "32",
            "--epochs",
            "3",
            "--no-test",
            *FAST,
            "optimizer.name=adamw",
            "optimizer.warmup_steps=0",
            "model.head_dropout=0.0",
        ]
    )
    best = json.loads((out / "results.json").read_text())["tasks"]["sst2"]["best"]
    assert best["metrics"]["accuracy"] > 90.0
    losses = [
        json.loads(x) for x in (Path(best["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    val = [r["val/loss"] for r in losses if "val/loss" in r]
    assert len(val) == 3 and val[-1] < 0.5 * val[0]
