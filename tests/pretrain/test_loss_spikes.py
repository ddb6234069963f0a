"""Tiny AR and tiny MLM, as shipped, train on the C4 samples without an isolated loss spike.

Issue #10: right after the warmup, at the peak learning rate, one batch could lift a tiny run's
train loss far above anything the run had reached before (AR 3.3 -> 5.0, MLM 9.43 at accuracy 0),
and the next batch brought it back. The cause and the measurements are in README.md ("Isolated
loss spikes") and docs/benchmarks.md ("Loss spikes of the tiny presets"); this test runs the
presets through the CLI over the old spike window and bounds how far any step's loss may rise
above the lowest loss of the steps before it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_perceiver

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

SEQ_LEN = 128  # the runs; the three C4 samples give ~400 samples of 128 bytes
STEPS = 40  # the old collapses came at steps 18-26, after the 5 warmup steps
# How far any step's loss may rise above the minimum of the steps before it (nats). No measured
# run that did not collapse rose more than 1.97 (a block of capitals, lr 1e-3 and warmup 10 but
# eps 1e-6, another seed); the old settings' collapses (accuracy 0, loss above log(262) for 1-5
# steps) rose 6.4 (AR) and 14.5 (MLM) in these two runs. docs/benchmarks.md has every run.
MARGIN = 3.0


def _prepare(c4: Path, out: Path, objective: str, prepare_args: tuple[str, ...]) -> Path:
    run_perceiver(
        ["data", "prepare", "--source", "c4", "--input", str(c4), "--output", str(out),
         "--objective", objective, "--seq-len", str(SEQ_LEN), *prepare_args]
    )  # fmt: skip
    return out


def _worst_spike(run_dir: Path) -> tuple[float, int, dict[int, float]]:
    """The largest rise of a step's train loss above the minimum of all earlier steps."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert sorted(losses) == list(range(1, STEPS + 1)), sorted(losses)
    worst, at, low = 0.0, 0, float("inf")
    for step in sorted(losses):
        if losses[step] - low > worst:
            worst, at = losses[step] - low, step
        low = min(low, losses[step])
    return worst, at, losses


# The two runs (data split, seeds) in which the old settings (lr 2e-3, warmup 5) collapsed.
@pytest.mark.parametrize(
    "config, objective, prepare_args, overrides, ranks",
    [
        ("tiny_ar.yaml", "ar", (), (), 1),  # the default split and seeds
        (
            "tiny_mlm.yaml",
            "mlm",
            ("--val-fraction", "0.1"),
            ("trainer.seed=1", "data.shuffle_seed=1"),
            2,
        ),
    ],  # fmt: skip
    ids=["ar", "mlm"],
)
def test_no_isolated_loss_spike_on_c4(
    shared_data, tmp_path, config, objective, prepare_args, overrides, ranks
):
    data = _prepare(shared_data / "c4", tmp_path / "data", objective, prepare_args)
    run = tmp_path / "run"
    args = [
        "train", str(REPO / "configs" / config), f"data.dir={data}", f"trainer.run_dir={run}",
        f"model.max_seq_len={SEQ_LEN}", f"trainer.max_steps={STEPS}", "trainer.log_every=1",
        "trainer.val_every=0", "checkpoint.every=0", "checkpoint.save_final=false",
        "logging.progress_bar=false", *overrides,
    ]  # fmt: skip
    if ranks > 1:
        args += ["--nproc-per-node", str(ranks)]
    run_perceiver(args)
    worst, at, losses = _worst_spike(run)
    shown = " ".join(f"{s}:{v:.2f}" for s, v in sorted(losses.items()))
    assert worst <= MARGIN, f"step {at} rose {worst:.2f} above the earlier minimum: {shown}"
