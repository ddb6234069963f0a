"""GLUE metrics against independent implementations (scikit-learn, scipy) on random predictions;
the sum-based metrics of the training loop; the GLUE average; results and leaderboard files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from pretrain.glue import metrics as M
from pretrain.glue import results as R
from pretrain.glue.tasks import TASKS

SEEDS = range(5)


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    labels = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 2, n))
    assert M.accuracy(preds, labels) == pytest.approx(skm.accuracy_score(labels, preds))
    assert M.f1(preds, labels) == pytest.approx(skm.f1_score(labels, preds))
    assert M.matthews(preds, labels) == pytest.approx(skm.matthews_corrcoef(labels, preds))
    three = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert M.matthews(*three) == pytest.approx(skm.matthews_corrcoef(three[1], three[0]))
    assert M.accuracy(*three) == pytest.approx(skm.accuracy_score(three[1], three[0]))


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    labels = np.round(rng.uniform(0, 5, n), 1)  # rounded: many ties, as STS-B scores have
    preds = labels + rng.normal(0, 1.5, n)
    if seed == 0:
        preds = np.round(preds)  # ties on both sides
    assert M.pearson(preds, labels) == pytest.approx(stats.pearsonr(preds, labels)[0])
    assert M.spearman(preds, labels) == pytest.approx(stats.spearmanr(preds, labels)[0])
    assert np.allclose(M.average_ranks(labels), stats.rankdata(labels))


def test_degenerate_inputs_are_zero_not_nan():
    assert M.matthews([1, 1, 1], [0, 1, 1]) == 0.0 == skm.matthews_corrcoef([0, 1, 1], [1, 1, 1])
    assert M.f1([0, 0], [0, 0]) == 0.0
    assert M.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        M.accuracy([0, 1], [0])


@pytest.mark.parametrize("seed", SEEDS)
def test_sum_based_metrics_equal_per_example_ones(seed):
    """What the objective sums over batches and ranks gives the exact dev metrics."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    preds = np.where(rng.random(300) < 0.6, labels, 1 - labels)
    tp = float(((preds == 1) & (labels == 1)).sum())
    fp = float(((preds == 1) & (labels == 0)).sum())
    fn = float(((preds == 0) & (labels == 1)).sum())
    tn = float(((preds == 0) & (labels == 0)).sum())
    assert M.f1_from_counts(tp, fp, fn) == pytest.approx(skm.f1_score(labels, preds))
    assert M.mcc_from_counts(tp, fp, fn, tn) == pytest.approx(skm.matthews_corrcoef(labels, preds))
    x, y = rng.normal(size=300), rng.normal(size=300)
    sums = (300, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
    assert M.pearson_from_sums(*sums) == pytest.approx(stats.pearsonr(x, y)[0])


@pytest.mark.parametrize("task", ["mrpc", "cola", "stsb", "mnli"])
def test_objective_summaries_over_padded_batches(task):
    """ClassificationObjective.step + summarize on batches with padding rows (weight 0)."""
    from types import SimpleNamespace

    from pretrain.objectives.classification import ClassificationObjective

    spec = TASKS[task]
    cfg = SimpleNamespace(
        glue=SimpleNamespace(task=task), trainer=SimpleNamespace(micro_batch_size=8)
    )
    objective = ClassificationObjective(cfg)
    gen = torch.Generator().manual_seed(0)
    k = spec.num_classes
    logits = torch.randn(40, k, generator=gen)
    labels = (
        torch.randn(40, generator=gen) * 2 + 2
        if spec.is_regression
        else torch.randint(0, k, (40,), generator=gen)
    )
    weight = torch.ones(40)
    weight[-5:] = 0  # padding of the last batch
    sums: dict[str, float] = {}
    for i in range(0, 40, 8):
        batch = {
            "input_ids": torch.zeros(8, 4, dtype=torch.long),
            "attention_mask": torch.ones(8, 4, dtype=torch.bool),
            "labels": labels[i : i + 8],
            "weight": weight[i : i + 8],
        }
        rows = logits[i : i + 8]
        _, stats_ = objective.step(lambda ids, attention_mask, rows=rows: rows, batch)
        for key, value in stats_.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    out = objective.summarize(sums, "val")
    real_logits, real_labels = logits[:35].numpy(), labels[:35].numpy()
    if spec.is_regression:
        assert out["val/pearson"] == pytest.approx(
            stats.pearsonr(real_logits[:, 0], real_labels)[0]
        )
        mse = ((real_logits[:, 0] - (real_labels - 2.5) / 2.5) ** 2).mean()  # scores -> [-1, 1]
        assert out["val/loss"] == pytest.approx(mse, rel=1e-5)
        return
    preds = real_logits.argmax(-1)
    assert out["val/accuracy"] == pytest.approx(skm.accuracy_score(real_labels, preds))
    assert out["val/loss"] == pytest.approx(
        skm.log_loss(real_labels, torch.softmax(logits[:35], -1).numpy(), labels=list(range(k))),
        rel=1e-5,
    )
    if "f1" in spec.metrics:
        assert out["val/f1"] == pytest.approx(skm.f1_score(real_labels, preds))
    if "mcc" in spec.metrics:
        assert out["val/mcc"] == pytest.approx(skm.matthews_corrcoef(real_labels, preds))


def test_task_scores_and_glue_average():
    assert M.task_score({"f1": 90.0, "accuracy": 86.0}, TASKS["mrpc"].metrics) == 88.0
    mnli = M.task_score({"accuracy_m": 84.0, "accuracy_mm": 83.0}, TASKS["mnli"].metrics)
    assert mnli == 83.5
    scores = {"cola": 50.0, "sst2": 90.0, "mrpc": 88.0, "stsb": 85.0, "qqp": 88.0, "mnli": 83.5}
    scores.update(qnli=90.0, rte=70.0, wnli=10.0)
    average, missing = M.glue_average(scores)
    assert average == pytest.approx((50 + 90 + 88 + 85 + 88 + 83.5 + 90 + 70) / 8) and not missing
    average, missing = M.glue_average({"rte": 60.0, "wnli": 56.3})
    assert average == 60.0 and "cola" in missing and "wnli" not in missing


def test_split_metrics_in_percent():
    out = M.split_metrics(TASKS["mrpc"].metrics, np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1]))
    assert out == pytest.approx(
        {"f1": 100 * skm.f1_score([1, 0, 0, 1], [1, 0, 1, 1]), "accuracy": 75.0}
    )


def test_leaderboard_prediction_strings_and_files(tmp_path):
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert R.prediction_strings(TASKS["mnli"], logits) == ["entailment", "contradiction", "neutral"]
    assert R.prediction_strings(TASKS["rte"], logits[:, :2]) == [
        "not_entailment",
        "entailment",
        "entailment",
    ]
    assert R.prediction_strings(TASKS["cola"], logits[:, :2]) == ["1", "0", "0"]
    assert R.prediction_strings(TASKS["stsb"], np.array([[1.2], [-1.08], [0.0]])) == [
        "5.000",
        "0.000",
        "2.500",
    ]
    path = R.write_predictions(
        tmp_path / "MNLI-m.tsv", ["0", "1", "2"], ["entailment", "neutral", "contradiction"]
    )
    assert path.read_text() == "index\tprediction\n0\tentailment\n1\tneutral\n2\tcontradiction\n"
    assert R.read_predictions(path) == (["0", "1", "2"], ["entailment", "neutral", "contradiction"])
    (tmp_path / "bad.tsv").write_text("id\tlabel\n")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        R.read_predictions(tmp_path / "bad.tsv")


def test_results_table_json_and_submission(tmp_path):
    test_file = R.write_predictions(
        tmp_path / "run" / "RTE.tsv", ["0", "1"], ["entailment", "entailment"]
    )

    def run(lr, score):
        return {
            "run_dir": f"r{lr}",
            "lr": lr,
            "batch_size": 16,
            "score": score,
            "metrics": {"accuracy": score},
            "test_predictions": {"RTE": str(test_file)},
        }

    results = R.summarize({"rte": [run(1e-4, 60.0), run(2e-5, 65.0)], "mrpc": []})
    assert results["tasks"]["rte"]["best"]["lr"] == 2e-5 and "mrpc" not in results["tasks"]
    assert results["glue_average"] == 65.0 and "cola" in results["missing_for_average"]
    json_path, md_path = R.write_results(tmp_path, results)
    assert json.loads(json_path.read_text())["tasks"]["rte"]["runs"][0]["score"] == 65.0
    table = md_path.read_text()
    assert "| RTE | accuracy 65.0 | 65.0 | 2e-05 | 16 | 2 |" in table and "partial" in table
    written = R.write_submission(tmp_path, results)
    assert [p.name for p in written] == ["RTE.tsv"]
    assert (tmp_path / "submission" / "RTE.tsv").read_text().startswith("index\tprediction\n")
