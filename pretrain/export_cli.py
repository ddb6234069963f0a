"""``perceiver export`` and ``perceiver import-hf`` (registered by :func:`add_export_subcommands`).

    perceiver export RUN_DIR[/checkpoints/step_N] --output DIR [--dtype fp32|bf16]
        [--format native|hf] [--tokenizer byte|spm:PATH]
    perceiver import-hf HF_DIR --output DIR [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import sys


def cmd_export(args: argparse.Namespace) -> int:
    """``perceiver export``: a checkpoint or export -> a native or HF directory."""
    from pretrain.export import export

    try:
        out = export(args.source, args.output, args.dtype, args.format, args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.source} -> {out} ({args.format}, {args.dtype})")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    """``perceiver import-hf``: an HF ``PerceiverForMaskedLM`` directory -> a native export."""
    from pretrain.export import read_hf, write_native

    try:
        out = write_native(read_hf(args.source), args.output, args.dtype)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"imported {args.source} -> {out}; fine-tune with perceiver glue --checkpoint {out}")
    return 0


def add_export_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` and ``import-hf`` on the ``perceiver`` parser."""
    p = sub.add_parser(
        "export",
        help="consolidate a checkpoint into model.safetensors + config.json (or an HF dir)",
    )
    p.add_argument("source", help="a run directory (its newest checkpoint) or a checkpoint")
    p.add_argument("--output", required=True, help="the directory to write")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--format", choices=["native", "hf"], default="native")
    p.add_argument("--tokenizer", default=None, help="override: byte or spm:PATH")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-hf", help="an HF PerceiverForMaskedLM directory -> a native export")
    p.add_argument("source", help="a directory saved by transformers (config.json + weights)")
    p.add_argument("--output", required=True)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.set_defaults(func=cmd_import_hf)
