"""What the shard-building subcommands share (`prepare-images`, `prepare-video`,
`generate-flow`, `prepare-flow`): their output arguments, the error exit and the list of rejects.

    add_output_arguments(parser)      # --output --workers --size-limit --overwrite --no-progress
    with building("prepare-images"):  # logging on; a refusal -> "perceiver data CMD: error: ..."
        manifest = prepare_images(args.input, args.output, ..., **build_options(args))
    print(headline)
    print_rejections(args.output, manifest["rejected"], manifest["rejected_count"])

The builders refuse an object-storage URL as output before reading any input, naming the URL
(`data_pipeline.shards.remote.check_local_output`); `building` turns that ValueError, like a missing
input (FileNotFoundError), a non-empty output without --overwrite (FileExistsError) or a bad value,
into `SystemExit("perceiver data CMD: error: ...")`: exit status 1, the message on stderr.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from data_pipeline.shards.manifest import DEFAULT_SIZE_LIMIT

__all__ = [
    "BUILD_ERRORS",
    "SHOWN_REJECTIONS",
    "add_output_arguments",
    "build_options",
    "building",
    "print_rejections",
]

SHOWN_REJECTIONS = 20  # rejects printed after the summary; the manifest names all of them
BUILD_ERRORS = (FileExistsError, FileNotFoundError, ValueError)


def add_output_arguments(
    parser: argparse.ArgumentParser, storage: argparse._ActionsContainer | None = None
) -> None:
    """Registers --output, --workers, --size-limit, --overwrite and --no-progress.

    Args:
        parser: The subcommand's parser (--output and --workers go there).
        storage: Where --size-limit, --overwrite and --no-progress go (an argument group of
            ``parser``; default: ``parser`` itself).
    """
    storage = parser if storage is None else storage
    parser.add_argument("--output", required=True, metavar="DIR", help="local shard directory")
    parser.add_argument("--workers", type=int, default=1, help="processes; same output for any (1)")
    storage.add_argument("--size-limit", default=DEFAULT_SIZE_LIMIT, help="shard size, e.g. 64mb")
    storage.add_argument("--overwrite", action="store_true", help="replace DIR if it holds shards")
    storage.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_options(args: argparse.Namespace) -> dict[str, Any]:
    """The builder keyword arguments of the parsed ``add_output_arguments`` options (``workers``,
    ``size_limit``, ``overwrite``, ``progress``; the output directory is the caller's to place)."""
    return dict(
        workers=args.workers,
        size_limit=args.size_limit,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


@contextmanager
def building(command: str) -> Iterator[None]:
    """Runs the build in its ``with`` block with INFO logging on; a refusal (``BUILD_ERRORS``)
    leaves as ``SystemExit("perceiver data <command>: error: <message>")``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        yield
    except BUILD_ERRORS as err:
        raise SystemExit(f"perceiver data {command}: error: {err}") from err


def print_rejections(output: str, rejected: Sequence[Mapping[str, Any]], count: int) -> None:
    """Prints the first ``SHOWN_REJECTIONS`` rejects of a manifest, one a line (``path (clip
    k): reason: detail``; the clip where a record has one), then how many more it names.

    Args:
        output: The shard directory (its manifest.json lists every reject).
        rejected: The manifest's ``rejected`` records (``path``, ``reason``, ``detail``, and
            ``clip`` for video).
        count: All rejects (the list may hold fewer).
    """
    for r in rejected[:SHOWN_REJECTIONS]:
        clip = "" if r.get("clip") is None else f" (clip {r['clip']})"
        print(f"  rejected: {r['path']}{clip}: {r['reason']}: {r['detail']}")
    if count > SHOWN_REJECTIONS:
        print(f"  ... {count - SHOWN_REJECTIONS} more in {output}/manifest.json")
