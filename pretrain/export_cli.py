"""``perceiver export`` and ``perceiver import-hf`` (registered by :func:`add_export_subcommands`).

    perceiver export RUN_DIR[/checkpoints/step_N] --output DIR [--dtype fp32|bf16]
        [--format native|hf] [--tokenizer byte|spm:PATH]
    perceiver import-hf HF_DIR --output DIR [--dtype fp32|bf16]

HF classes: PerceiverForMaskedLM (perceiver_io_mlm), PerceiverForImageClassificationFourier /
Learned / ConvProcessing (perceiver_io_image_classifier) and PerceiverForOpticalFlow
(perceiver_io_optical_flow); ``import-hf`` picks the class from the saved ``architectures``.
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
    """``perceiver import-hf``: an HF Perceiver directory (masked LM, image classifier, optical
    flow) -> a native export."""
    from pretrain.export import read_hf, write_native

    try:
        pretrained = read_hf(args.source)
        out = write_native(pretrained, args.output, args.dtype)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if pretrained.model_type == "perceiver_io_mlm":
        hint = f"fine-tune with perceiver glue --checkpoint {out}"
    else:
        hint = f"train from it with checkpoint.init_from={out} (model.type {pretrained.model_type})"
    print(f"imported {args.source} -> {out}; {hint}")
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
    p.add_argument(
        "--format",
        choices=["native", "hf"],
        default="native",
        help="hf: the transformers class of the model (PerceiverForMaskedLM, "
        "PerceiverForImageClassification{Fourier,Learned,ConvProcessing}, PerceiverForOpticalFlow)",
    )
    p.add_argument("--tokenizer", default=None, help="override: byte or spm:PATH")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "import-hf",
        help="an HF Perceiver directory (PerceiverForMaskedLM, image classification, optical "
        "flow) -> a native export",
    )
    p.add_argument("source", help="a directory saved by transformers (config.json + weights)")
    p.add_argument("--output", required=True)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.set_defaults(func=cmd_import_hf)
