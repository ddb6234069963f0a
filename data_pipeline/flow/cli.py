"""`perceiver data generate-flow` and `prepare-flow`: optical-flow pairs -> flow shards.

    perceiver data generate-flow --output DIR --train 20000 --val 500 --height 368 --width 496 \\
        --seed 0 [--max-flow 10] [--workers 8]
    perceiver data prepare-flow --format sintel --input MPI-Sintel-complete --output DIR \\
        [--pass clean|final] [--val-fraction 0.05] [--workers 8]
    perceiver data prepare-flow --format kitti --input data_scene_flow --output DIR
    perceiver data prepare-flow --format chairs --input FlyingChairs_release --output DIR

`data_pipeline/cli.py` registers both with `add_flow_subcommands(subparsers)`.
"""

from __future__ import annotations

import argparse
from typing import Any

from data_pipeline.build_cli import add_output_arguments, build_options, building, print_rejections

__all__ = ["add_flow_subcommands", "print_flow_summary", "run_generate_flow", "run_prepare_flow"]


def add_flow_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Registers `generate-flow` and `prepare-flow` on the `perceiver data` subparsers."""
    gen = subparsers.add_parser(
        "generate-flow",
        help="write procedural (AutoFlow-style) frame pairs with exact flow as flow shards",
        description="Render textured layered scenes, each layer moving by its own random "
        "translation, rotation and scale, with the exact forward flow, and write DIR/train, "
        "DIR/val (MDS) and DIR/manifest.json (kind flow).",
    )
    gen.add_argument("--train", type=int, required=True, help="training pairs")
    gen.add_argument("--val", type=int, required=True, help="validation pairs")
    gen.add_argument("--height", type=int, required=True)
    gen.add_argument("--width", type=int, required=True)
    gen.add_argument("--seed", type=int, default=0, help="dataset seed (0)")
    gen.add_argument("--max-flow", type=float, default=10.0, help="largest flow, pixels (10)")
    gen.add_argument(
        "--texture-scale",
        type=float,
        default=1.0,
        help="multiplies the texture cell sizes 24, 9, 4 px; below 1: finer textures (1)",
    )
    add_output_arguments(gen)
    gen.set_defaults(func=run_generate_flow)

    prep = subparsers.add_parser(
        "prepare-flow",
        help="convert Sintel, KITTI 2015 or FlyingChairs into flow shards",
        description="Read frame pairs and ground-truth flow in a dataset's own layout and write "
        "DIR/train, DIR/val (MDS) and DIR/manifest.json (kind flow). Unreadable or mismatched "
        "files are counted and named in the manifest and skipped.",
    )
    prep.add_argument("--format", required=True, choices=("sintel", "kitti", "chairs"))
    prep.add_argument("--input", required=True, metavar="ROOT", help="the dataset's root folder")
    prep.add_argument(
        "--pass",
        dest="render_pass",
        choices=("clean", "final"),
        default="clean",
        help="sintel: rendering pass (clean)",
    )
    prep.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="validation fraction by a hash of the sample's name (sintel: of the scene); "
        "default: the dataset's own split where it has one (FlyingChairs_train_val.txt), "
        "else 0.05 (0 keeps everything in train)",
    )
    add_output_arguments(prep)
    prep.set_defaults(func=run_prepare_flow)


def print_flow_summary(output: str, manifest: dict[str, Any]) -> None:
    """Prints what a flow build wrote (counts, sizes, rejections)."""
    splits = manifest["splits"]
    size = (
        f"{manifest['height']}x{manifest['width']}"
        if manifest["height"]
        else f"{len({s for v in manifest['sizes'].values() for s in v})} sizes"
    )
    reasons = ", ".join(f"{k}: {v}" for k, v in manifest["rejected_by_reason"].items())
    print(
        f"wrote {output}: {splits['train']['samples']} train / {splits['val']['samples']} val "
        f"pairs ({manifest['source']}, {size}); rejected {manifest['rejected_count']}"
        f"{f' ({reasons})' if reasons else ''}; {manifest['wall_time_s']:.1f} s"
    )
    print_rejections(output, manifest["rejected"], manifest["rejected_count"])


def run_generate_flow(args: argparse.Namespace) -> int:
    """Runs `perceiver data generate-flow`; returns the exit code."""
    from data_pipeline.flow.shards import generate_flow

    with building("generate-flow"):
        manifest = generate_flow(
            args.output,
            train=args.train,
            val=args.val,
            height=args.height,
            width=args.width,
            seed=args.seed,
            max_flow=args.max_flow,
            texture_scale=args.texture_scale,
            **build_options(args),
        )
    print_flow_summary(args.output, manifest)
    return 0


def run_prepare_flow(args: argparse.Namespace) -> int:
    """Runs `perceiver data prepare-flow`; returns the exit code."""
    from data_pipeline.flow.readers import prepare_flow

    with building("prepare-flow"):
        manifest = prepare_flow(
            args.format,
            args.input,
            args.output,
            render_pass=args.render_pass,
            val_fraction=args.val_fraction,
            **build_options(args),
        )
    print_flow_summary(args.output, manifest)
    return 0
