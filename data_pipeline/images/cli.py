"""`perceiver data prepare-images`: labelled images -> image shards (MDS) + manifest.json.

    perceiver data prepare-images --input ILSVRC/Data/CLS-LOC --output DIR \\
        --val-labels LOC_val_solution.csv --synsets LOC_synset_mapping.txt --workers 16
    perceiver data prepare-images --input imagenet/train --layout imagenet-train --output DIR
    perceiver data prepare-images --input my_classes/ --output DIR --val-fraction 0.1

`data_pipeline/cli.py` registers it with `add_prepare_images_subcommand(subparsers)`.
"""

from __future__ import annotations

import argparse

from data_pipeline.build_cli import add_output_arguments, build_options, building, print_rejections
from data_pipeline.images.listing import LAYOUTS

__all__ = ["add_prepare_images_subcommand", "run_prepare_images"]


def add_prepare_images_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Registers `prepare-images` on the subparsers of the `perceiver data` command."""
    p = subparsers.add_parser(
        "prepare-images",
        help="check, convert and write labelled images (ImageNet, class folders) as shards",
        description="Fully decode every image, convert grayscale/CMYK/palette/alpha images to "
        "RGB, reject corrupt or truncated files (named in the manifest) and write DIR/train, "
        "DIR/val (MDS: image bytes as stored, label, path) and DIR/manifest.json (kind image).",
    )
    p.add_argument("--input", required=True, metavar="ROOT", help="the image tree")
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="auto: ROOT/train + ROOT/val, else imagenet-val with --val-labels, else "
        "imagenet-train when every folder is a synset, else folders (auto)",
    )
    p.add_argument(
        "--val-labels",
        metavar="FILE",
        help="LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt (with --synsets)",
    )
    p.add_argument(
        "--synsets",
        metavar="FILE",
        help="class order and names, one 'ID name' a line (LOC_synset_mapping.txt)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="validation fraction of a single tree, by path hash (0.05)",
    )
    add_output_arguments(p)
    p.set_defaults(func=run_prepare_images)


def run_prepare_images(args: argparse.Namespace) -> int:
    """Runs `perceiver data prepare-images`; returns the exit code."""
    from data_pipeline.images.prepare import prepare_images

    with building("prepare-images"):
        manifest = prepare_images(
            args.input,
            args.output,
            layout=args.layout,
            val_labels=args.val_labels,
            synsets=args.synsets,
            val_fraction=args.val_fraction,
            **build_options(args),
        )
    splits = manifest["splits"]
    conversions = ", ".join(f"{k}: {v}" for k, v in manifest["conversions"].items())
    reasons = ", ".join(f"{k}: {v}" for k, v in manifest["rejected_by_reason"].items())
    print(
        f"wrote {args.output}: {splits['train']['samples']} train / {splits['val']['samples']} "
        f"val images, {manifest['num_classes']} classes (layout {manifest['layout']}); "
        f"converted {sum(manifest['conversions'].values())}"
        f"{f' ({conversions})' if conversions else ''}, rejected {manifest['rejected_count']}"
        f"{f' ({reasons})' if reasons else ''}; {manifest['wall_time_s']:.1f} s"
    )
    print_rejections(args.output, manifest["rejected"], manifest["rejected_count"])
    return 0
