"""``perceiver demo``: the whole system end to end on a corpus every machine already has.

1. Builds a byte-level corpus from the docstrings of the installed Python standard library and
   writes it as MDS shards (one set for MLM, one for AR).
2. Trains a tiny Perceiver IO (MLM) and a tiny Perceiver AR, each with 2 CPU processes under
   DeepSpeed ZeRO-2, logging to TensorBoard and checkpointing.
3. Prints what happened: tokens seen, loss first -> last, the validation metric, where the
   checkpoints and logs are, and the ``tensorboard --logdir`` command.
4. Shows what the models learned: the AR model continues a prompt (``perceiver generate``) and
   the MLM fills masked bytes (``perceiver fill-mask``), from their final checkpoints.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pretrain.config import CONFIG_ROOT, load_config

DEMO_CONFIGS = {"mlm": CONFIG_ROOT / "demo_mlm.yaml", "ar": CONFIG_ROOT / "demo_ar.yaml"}


def run_demo(
    out_dir: str | Path,
    nproc: int = 2,
    max_bytes: int | None = None,
    overrides: list[str] | None = None,
    objectives: tuple[str, ...] = ("mlm", "ar"),
) -> dict[str, dict]:
    """Prepare the demo shards and train each objective; returns each run's summary."""
    from data_pipeline.cli import prepare_demo_corpus

    out_dir = Path(out_dir)
    summaries = {}
    for objective in objectives:
        cfg = load_config(DEMO_CONFIGS[objective], overrides)
        seq_len = cfg.model.max_seq_len
        data_dir = out_dir / "data" / f"stdlib_{objective}_{seq_len}"
        if not (data_dir / "manifest.json").is_file():
            print(
                f"[demo] writing {objective.upper()} shards of {seq_len} bytes to {data_dir}",
                flush=True,
            )
            prepare_demo_corpus(data_dir, seq_len=seq_len, objective=objective, max_bytes=max_bytes)
        run_dir = out_dir / "runs" / objective
        argv = [
            sys.executable,
            "-m",
            "pretrain.cli",
            "train",
            str(DEMO_CONFIGS[objective]),
            f"data.dir={data_dir}",
            f"trainer.run_dir={run_dir}",
            "checkpoint.resume=none",
            *(overrides or []),
            "--nproc-per-node",
            str(nproc),
        ]
        print(
            f"[demo] training {cfg.model_type} with {nproc} processes (DeepSpeed ZeRO-"
            f"{cfg.trainer.zero_stage}, {cfg.trainer.precision})",
            flush=True,
        )
        subprocess.run(argv, check=True)
        summaries[objective] = json.loads((run_dir / "summary.json").read_text())
    return summaries


GENERATE_PROMPT = "Return the number of "
# Single masked bytes, as the demo MLM is trained (`objective.mask_unit: token`); with BOS and EOS
# the text fits the demo model's 32 bytes (a test checks).
FILL_MASK_TEXT = "Return t[MASK:1]e n[MASK:1]mber of items."


def model_samples(summaries: dict[str, dict], seed: int = 0) -> list[str]:
    """A continuation from the AR run and a filled mask from the MLM run (greedy, so the lines
    are reproducible), as report lines with the commands that make them."""
    from pretrain.inference.api import fill_mask, generate_text, load_for_inference

    lines = []
    if "ar" in summaries:
        run = summaries["ar"]["run_dir"]
        text = "".join(
            generate_text(load_for_inference(run), GENERATE_PROMPT, 80, temperature=0.0, seed=seed)
        )
        lines += [
            f'AR continues "{GENERATE_PROMPT}" (greedy): {GENERATE_PROMPT + text!r}',
            f'  perceiver generate {run} --prompt "{GENERATE_PROMPT}" --temperature 0.7',
        ]
    if "mlm" in summaries:
        run = summaries["mlm"]["run_dir"]
        filled = fill_mask(load_for_inference(run), FILL_MASK_TEXT, top=3)
        best = " ".join(repr(c[0][0]) for span in filled.candidates for c in span)
        lines += [
            f'MLM fills "{FILL_MASK_TEXT}": {filled.text!r} (best byte per position: {best})',
            f'  perceiver fill-mask {run} --text "{FILL_MASK_TEXT}"',
        ]
    return lines


def format_report(summaries: dict[str, dict], out_dir: Path) -> str:
    lines = ["", "=" * 72, "Demo finished", "=" * 72]
    for objective, s in summaries.items():
        val = s["val_metrics"]
        if objective == "ar":
            metric = f"val bits/byte {val.get('val/bits_per_byte', float('nan')):.3f}"
        else:
            metric = f"val masked-byte accuracy {val.get('val/accuracy', float('nan')):.3f}"
        lines += [
            f"{objective.upper()}: {s['num_params']:,} parameters, {s['state']['step']} steps, "
            f"{s['state']['tokens_seen']:,} tokens seen",
            f"  loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}; {metric} "
            f"(val loss {val.get('val/loss', float('nan')):.3f})",
            f"  checkpoint: {s['checkpoint']}",
            f"  logs:       {s['run_dir']}/tensorboard",
        ]
    lines += ["", *model_samples(summaries)]
    lines += ["", f"Watch it:  tensorboard --logdir {out_dir / 'runs'}", ""]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    summaries = run_demo(
        out_dir, nproc=args.nproc, max_bytes=args.max_bytes, overrides=args.overrides
    )
    print(format_report(summaries, out_dir))
    return 0


def add_demo_subcommand(sub) -> None:
    p = sub.add_parser(
        "demo", help="end-to-end demo on the Python stdlib docstrings (CPU, ~10 min)"
    )
    p.add_argument("--out", default="demo_out", help="where shards, runs and logs go")
    p.add_argument("--nproc", type=int, default=2, help="processes per run")
    p.add_argument("--max-bytes", type=int, default=None, help="cap the corpus size")
    p.add_argument("overrides", nargs="*", help="overrides applied to both demo configs")
    p.set_defaults(func=cmd_demo)
