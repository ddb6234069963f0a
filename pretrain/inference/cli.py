"""``perceiver generate``, ``perceiver fill-mask``, ``perceiver eval`` and ``perceiver flow``
(registered by :func:`add_inference_subcommands`).

    perceiver generate RUN [--checkpoint STEP] --prompt TEXT [--max-new-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--seed S]
    perceiver fill-mask RUN [--checkpoint STEP] --text "... [MASK] ..." [--span N] [--top K]
    perceiver eval RUN --data DIR [--split val] [--max-batches N] [--checkpoint STEP]
        [--nproc-per-node N] [--json FILE]
    perceiver flow FRAME1 FRAME2 --checkpoint RUN [--step N] --output flow.png [--flo flow.flo]
        [--device cpu|cuda] [--min-overlap 20] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

USER_ERRORS = (FileNotFoundError, ValueError)


def _load(args: argparse.Namespace):
    from pretrain.inference.api import load_for_inference

    return load_for_inference(args.run, args.checkpoint, args.tokenizer, args.device or "cpu")


def cmd_generate(args: argparse.Namespace) -> int:
    from pretrain.inference.api import generate_text

    try:
        loaded = _load(args)
        pieces = generate_text(
            loaded,
            args.prompt,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
        sys.stdout.write(args.prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    return 0


def cmd_fill_mask(args: argparse.Namespace) -> int:
    from pretrain.inference.api import fill_mask

    try:
        result = fill_mask(_load(args), args.text, span=args.span, top=args.top)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.text)
    for i, (span, candidates) in enumerate(zip(result.spans, result.candidates)):
        print(f"[MASK] {i}: {span!r}")
        for j, top in enumerate(candidates):
            shown = "  ".join(f"{text!r} {p:.3f}" for text, p in top)
            print(f"  position {j}: {shown}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.nproc_per_node and not os.environ.get("PERCEIVER_SPAWNED_RANK"):
        from pretrain.train.distributed import spawn_local

        argv = ["eval", args.run, "--data", args.data, "--split", args.split]
        for flag, value in (
            ("--max-batches", args.max_batches),
            ("--checkpoint", args.checkpoint),
            ("--tokenizer", args.tokenizer),
            ("--device", args.device),
            ("--json", args.json),
        ):
            if value is not None:
                argv += [flag, str(value)]
        return spawn_local(argv, args.nproc_per_node)
    from pretrain.inference.evaluation import evaluate_run, format_table

    try:
        metrics = evaluate_run(
            args.run, args.data, args.split, args.max_batches, args.checkpoint, args.device
        )
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_table(metrics))
        if args.json:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def cmd_flow(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from data_pipeline.flow.formats import read_image
    from pretrain.inference.flow import estimate_flow, load_flow_model, write_flow_outputs

    try:
        model = load_flow_model(args.checkpoint, args.step, args.device)
        frame1, frame2 = read_image(args.frame1), read_image(args.frame2)
        t0 = time.perf_counter()
        flow = estimate_flow(model, frame1, frame2, args.min_overlap, args.batch_size)
        written = write_flow_outputs(flow, args.output, args.flo)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mag = np.linalg.norm(flow, axis=-1)
    print(
        f"flow {flow.shape[0]} x {flow.shape[1]} in {time.perf_counter() - t0:.1f} s: "
        f"mean |flow| {mag.mean():.2f} px, max {mag.max():.2f} px -> "
        + ", ".join(str(p) for p in written)
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory, checkpoint, export or HF Perceiver directory")
    p.add_argument("--checkpoint", type=int, default=None, help="step (default: newest)")
    p.add_argument("--tokenizer", default=None, help="byte or spm:PATH (default: the run's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu; eval: the run's)")


def add_inference_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a Perceiver AR checkpoint")
    _common(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("fill-mask", help="predict the [MASK] spans of a text with an MLM")
    _common(p)
    p.add_argument("--text", required=True, help='e.g. "some words are [MASK]." ([MASK:n]: n)')
    p.add_argument("--span", type=int, default=None, help="positions per [MASK] (bytes: 8)")
    p.add_argument("--top", type=int, default=5, help="candidates shown per position")
    p.set_defaults(func=cmd_fill_mask)

    p = sub.add_parser("eval", help="a checkpoint's metrics over a whole split")
    _common(p)
    p.add_argument("--data", required=True, help="shard directory (perceiver data prepare)")
    p.add_argument("--split", default="val")
    p.add_argument("--max-batches", type=int, default=None, help="per rank (default: all)")
    p.add_argument("--nproc-per-node", type=int, default=0, help="spawn N local ranks")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("flow", help="optical flow between two frames (tiled, any size)")
    p.add_argument("frame1", help="first frame (PNG, JPEG or PPM)")
    p.add_argument("frame2", help="second frame, the same size")
    p.add_argument(
        "--checkpoint", required=True, help="run directory, checkpoint or export of a flow model"
    )
    p.add_argument("--step", type=int, default=None, help="a run's step (default: newest)")
    p.add_argument("--output", required=True, help="colour-coded flow PNG to write")
    p.add_argument("--flo", default=None, help="also write the flow as a Middlebury .flo")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--min-overlap", type=int, default=20, help="pixels shared by adjacent tiles")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    p.set_defaults(func=cmd_flow)
