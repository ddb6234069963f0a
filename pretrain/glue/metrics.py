"""GLUE metrics, exactly as GLUE defines them, and the GLUE average of the Perceiver IO paper.

Per task (the task score is the unweighted mean of its metrics, as on the GLUE leaderboard):

=========  ==============================================
CoLA       Matthews correlation coefficient
SST-2      accuracy
MRPC, QQP  F1 of the positive class (1) and accuracy
STS-B      Pearson and Spearman correlation
MNLI       accuracy on dev/test matched and mismatched
QNLI, RTE  accuracy
WNLI       accuracy (not part of the GLUE average)
=========  ==============================================

The GLUE average is the mean of the task scores of CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI and
RTE (WNLI excluded, as in BERT and the Perceiver IO paper). Results are reported in percent.

Two forms: per-example functions for the final evaluation (``accuracy``, ``f1``, ``matthews``,
``pearson``, ``spearman``), and functions of summed statistics (``*_from_counts``,
``pearson_from_sums``), which is all the training loop's distributed evaluation keeps (sums over
batches and ranks). Spearman's needs the ranks of all predictions, so during training only
Pearson's is logged for STS-B; the final evaluation computes both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

GLUE_AVERAGE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")


def _arrays(preds, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(preds), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be equal 1-D shapes")
    if p.size == 0:
        raise ValueError("no examples to score")
    return p, y


def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of predictions equal to the label."""
    p, y = _arrays(preds, labels)
    return float((p == y).mean())


def f1_from_counts(tp: float, fp: float, fn: float) -> float:
    """F1 of the positive class, 2 tp / (2 tp + fp + fn); 0 when there are no positives at all."""
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator > 0 else 0.0


def f1(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """F1 of class 1 (binary tasks: MRPC, QQP)."""
    p, y = _arrays(preds, labels)
    tp = float(((p == 1) & (y == 1)).sum())
    return f1_from_counts(
        tp, float(((p == 1) & (y != 1)).sum()), float(((p != 1) & (y == 1)).sum())
    )


def mcc_from_counts(tp: float, fp: float, fn: float, tn: float) -> float:
    """Binary Matthews correlation from the confusion matrix; 0 when a margin is empty."""
    denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / math.sqrt(denominator) if denominator > 0 else 0.0


def matthews(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Matthews correlation coefficient (Gorodkin's multi-class form; the usual one for 2
    classes); 0 when predictions or labels are constant."""
    p, y = _arrays(preds, labels)
    classes = np.union1d(p, y)
    p_idx, y_idx = np.searchsorted(classes, p), np.searchsorted(classes, y)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (y_idx, p_idx), 1.0)
    t_k, p_k = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = math.sqrt((s * s - p_k @ p_k) * (s * s - t_k @ t_k))
    return float((c * s - t_k @ p_k) / denominator) if denominator > 0 else 0.0


def pearson_from_sums(n: float, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> float:
    """Pearson correlation from the sums of x, y, x^2, y^2 and xy over n pairs."""
    cov = n * sxy - sx * sy
    var = (n * sxx - sx * sx) * (n * syy - sy * sy)
    return cov / math.sqrt(var) if var > 0 else 0.0


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation coefficient (0 if either input is constant)."""
    a, b = _arrays(x, y)
    a, b = a.astype(np.float64) - a.mean(), b.astype(np.float64) - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else 0.0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``; tied values share the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation: Pearson's of the average ranks."""
    a, b = _arrays(x, y)
    return pearson(average_ranks(a.astype(np.float64)), average_ranks(b.astype(np.float64)))


METRIC_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews,
    "pearson": pearson,
    "spearman": spearman,
}
METRIC_NAMES = {
    "accuracy": "accuracy",
    "accuracy_m": "accuracy (matched)",
    "accuracy_mm": "accuracy (mismatched)",
    "f1": "F1",
    "mcc": "Matthews corr.",
    "pearson": "Pearson corr.",
    "spearman": "Spearman corr.",
}


def split_metrics(task_metrics: Sequence[str], preds, labels) -> dict[str, float]:
    """The task's metrics (percent) on one split; MNLI's ``accuracy_m``/``_mm`` are
    ``accuracy`` on the matched and mismatched split, computed by the caller."""
    out = {}
    for name in task_metrics:
        base = "accuracy" if name.startswith("accuracy") else name
        out[base] = 100.0 * METRIC_FUNCTIONS[base](preds, labels)
    return out


def task_score(metrics: Mapping[str, float], names: Sequence[str]) -> float:
    """The task's score: the mean of its metrics ``names`` (percent)."""
    missing = [n for n in names if n not in metrics]
    if missing:
        raise KeyError(f"metrics {missing} missing from {sorted(metrics)}")
    return float(np.mean([metrics[n] for n in names]))


def glue_average(scores: Mapping[str, float]) -> tuple[float | None, list[str]]:
    """The GLUE average of the task scores given (WNLI and unknown tasks ignored).

    Returns:
        The mean over the GLUE-average tasks present (None if none is), and the tasks of the
        average that are missing (the average is partial unless this is empty).
    """
    present = [t for t in GLUE_AVERAGE_TASKS if t in scores]
    missing = [t for t in GLUE_AVERAGE_TASKS if t not in scores]
    if not present:
        return None, missing
    return float(np.mean([scores[t] for t in present])), missing
