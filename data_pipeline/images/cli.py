"""`perceiver data prepare-images`: labelled images -> image shards (MDS) + manifest.json.

    perceiver data prepare-images --input ILSVRC/Data/CLS-LOC --output DIR \\
        --val-labels LOC_val_solution.csv --synsets LOC_synset_mapping.txt --workers 16
    perceiver data prepare-images --input imagenet/train --layout imagenet-train --output DIR
    perceiver data prepare-images --input my_classes/ --output DIR --val-fraction 0.1

`data_pipeline/cli.py` registers it with `add_prepare_images_subcommand(subparsers)`.
"""

from __future__ import annotations

import argparse
import logging

from data_pipeline.images.listing import LAYOUTS
from data_pipeline.shards.manifest import DEFAULT_SIZE_LIMIT

__all__ = ["add_prepare_images_subcommand", "run_prepare_images"]

SHOWN_REJECTIONS = 20


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
    p.add_argument("--output", required=True, metavar="DIR", help="local shard directory")
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
    p.add_argument("--workers", type=int, default=1, help="processes; same output for any (1)")
    p.add_argument("--size-limit", default=DEFAULT_SIZE_LIMIT, help="shard size, e.g. 64mb")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds shards")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare_images)


def run_prepare_images(args: argparse.Namespace) -> int:
    """Runs `perceiver data prepare-images`; returns the exit code."""
    from data_pipeline.images.prepare import prepare_images

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = prepare_images(
            args.input,
            args.output,
            layout=args.layout,
            val_labels=args.val_labels,
            synsets=args.synsets,
            val_fraction=args.val_fraction,
            workers=args.workers,
            size_limit=args.size_limit,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"perceiver data prepare-images: error: {err}") from err
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
    for r in manifest["rejected"][:SHOWN_REJECTIONS]:
        print(f"  rejected: {r['path']}: {r['reason']}: {r['detail']}")
    if manifest["rejected_count"] > SHOWN_REJECTIONS:
        more = manifest["rejected_count"] - SHOWN_REJECTIONS
        print(f"  ... {more} more in {args.output}/manifest.json")
    return 0
