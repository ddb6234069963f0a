"""GLUE results: per-run evaluation files, the results table, and leaderboard submission files.

Written by ``perceiver glue`` under its output directory::

    results.json        # every task: best run (by dev score), its metrics, all grid runs; average
    results.md          # the same as a Markdown table (percent)
    submission/         # GLUE leaderboard files of the best runs: CoLA.tsv, SST-2.tsv, MRPC.tsv,
                        # STS-B.tsv, QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv,
                        # AX.tsv (MNLI model on the diagnostic set, when diagnostic.tsv exists)

A submission file has a header ``index<TAB>prediction`` and one row per test example, in file
order, with the test file's index and the label string the task expects: ``0``/``1`` for CoLA,
SST-2, MRPC, QQP and WNLI; ``entailment``/``not_entailment`` for QNLI and RTE;
``entailment``/``neutral``/``contradiction`` for MNLI and AX; a score in [0, 5] for STS-B.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.glue.metrics import METRIC_NAMES, glue_average
from pretrain.glue.tasks import TASKS, TaskSpec

SUBMISSION_DIR = "submission"


def prediction_strings(task: TaskSpec, outputs: np.ndarray) -> list[str]:
    """Model outputs (logits [n, k], or [n, 1] for regression) -> the labels GLUE expects
    (regression outputs are mapped back to scores and clipped to the task's range)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if task.is_regression:
        scores = np.clip(task.score(outputs.reshape(-1)), *task.score_range)
        return [f"{s:.3f}" for s in scores]
    return [task.labels[i] for i in outputs.argmax(axis=-1)]


def write_predictions(path: str | Path, indices: Sequence[str], predictions: Sequence[str]) -> Path:
    """A leaderboard-format file: ``index<TAB>prediction`` and one row per example."""
    if len(indices) != len(predictions):
        raise ValueError(f"{len(indices)} indices but {len(predictions)} predictions")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["index\tprediction", *(f"{i}\t{p}" for i, p in zip(indices, predictions))]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_predictions(path: str | Path) -> tuple[list[str], list[str]]:
    """The indices and predictions of a file written by :func:`write_predictions`."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0] != "index\tprediction":
        raise ValueError(f"{path}:1: expected the header 'index<TAB>prediction'")
    rows = [line.split("\t") for line in lines[1:]]
    for lineno, row in enumerate(rows, 2):
        if len(row) != 2:
            raise ValueError(f"{path}:{lineno}: expected 2 fields, got {len(row)}")
    return [r[0] for r in rows], [r[1] for r in rows]


def best_run(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The run with the highest dev score (ties: the first, i.e. the larger learning rate and
    smaller batch of the grid order)."""
    if not runs:
        raise ValueError("no evaluated run")
    return max(runs, key=lambda r: r["score"])


def summarize(evaluations: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """``{task: [run evaluations]}`` -> the results document (best run per task + average)."""
    tasks: dict[str, Any] = {}
    for name, runs in evaluations.items():
        if not runs:
            continue
        best = best_run(runs)
        tasks[name] = {
            "best": dict(best),
            "runs": sorted(
                ({k: r[k] for k in ("run_dir", "lr", "batch_size", "score")} for r in runs),
                key=lambda r: -r["score"],
            ),
        }
    average, missing = glue_average({n: t["best"]["score"] for n, t in tasks.items()})
    return {"tasks": tasks, "glue_average": average, "missing_for_average": missing}


def markdown_table(results: Mapping[str, Any]) -> str:
    """The results as Markdown: one row per task (metrics, score, best lr/batch, runs)."""
    lines = [
        "| task | metrics (dev, %) | score | lr | batch | runs |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in results["tasks"].items():
        best = entry["best"]
        metrics = ", ".join(f"{METRIC_NAMES.get(k, k)} {v:.1f}" for k, v in best["metrics"].items())
        lines.append(
            f"| {TASKS[name].dir_name} | {metrics} | {best['score']:.1f} | {best['lr']} "
            f"| {best['batch_size']} | {len(entry['runs'])} |"
        )
    average = results.get("glue_average")
    if average is not None:
        missing = results.get("missing_for_average") or []
        note = f" (partial: without {', '.join(TASKS[t].dir_name for t in missing)})"
        lines.append(f"| **GLUE average** | WNLI excluded | **{average:.1f}** | | | |")
        if missing:
            lines += ["", f"The average is over the tasks run{note}."]
    skipped = results.get("missing_files") or {}
    if skipped:
        lines += ["", "Not run, for want of their files:", ""]
        lines += [f"- {TASKS[n].dir_name}: {', '.join(f)}" for n, f in skipped.items()]
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, results: Mapping[str, Any]) -> tuple[Path, Path]:
    """Writes ``results.json`` and ``results.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text("# GLUE dev results\n\n" + markdown_table(results))
    return json_path, md_path


def write_submission(out_dir: str | Path, results: Mapping[str, Any]) -> list[Path]:
    """Copies the best runs' test predictions to ``out_dir/submission`` (leaderboard names)."""
    target = Path(out_dir) / SUBMISSION_DIR
    written = []
    for entry in results["tasks"].values():
        for name, file in (entry["best"].get("test_predictions") or {}).items():
            target.mkdir(parents=True, exist_ok=True)
            read_predictions(file)  # refuse to submit a malformed file
            written.append(Path(shutil.copyfile(file, target / f"{name}.tsv")))
    return written
