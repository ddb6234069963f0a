"""`perceiver data ...` subcommands: build shards from a corpus, and look inside them.

    perceiver data prepare --source demo --output DIR --seq-len 512 --objective mlm
    perceiver data prepare --source c4 --input 'c4/en/c4-train.*.json.gz' --output DIR \
        --tokenizer bytes --seq-len 2048 --workers 16
    perceiver data prepare --source wikipedia --input enwiki-pages-articles.xml.bz2 ...
    perceiver data train-spm --source c4 --input c4/en/ --output spm/c4_32k.model
    perceiver data prepare ... --tokenizer spm:spm/c4_32k.model
    perceiver data inspect DIR [--samples 3] [--json]     # text, video, image or flow shards
    perceiver data prepare-video ...                       # video/cli.py
    perceiver data prepare-images --input ROOT --output DIR # images/cli.py
    perceiver data generate-flow|prepare-flow ...          # flow/cli.py

The console script (`perceiver_cli.py`, through `pretrain/cli.py`) registers these on its `data`
command with `add_data_subcommands(subparsers)`; each subcommand sets `func`, a function of the
parsed arguments returning an exit code. `main(argv)` runs them in-process without the rest of
the project (tests use it). The work is done elsewhere: `shards.prepare`,
`tokenization.spm_train`, `inspection`, `video.cli`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from data_pipeline.flow.cli import add_flow_subcommands
from data_pipeline.images.cli import add_prepare_images_subcommand
from data_pipeline.inspection import rejected_reasons, run_inspect
from data_pipeline.shards.manifest import DEFAULT_SIZE_LIMIT
from data_pipeline.shards.packing import OBJECTIVES
from data_pipeline.shards.prepare import prepare_corpus, prepare_demo_corpus
from data_pipeline.sources.records import DEFAULT_MAX_DOC_BYTES, SOURCES, CorpusError
from data_pipeline.tokenization.tokenizer import available_tokenizers
from data_pipeline.video.cli import add_prepare_video_subcommand

__all__ = [
    "add_data_subcommands",
    "build_parser",
    "main",
    "prepare_demo_corpus",  # from shards.prepare (the demo and tests import it from here)
    "run_inspect",
    "run_prepare",
    "run_train_spm",
]

DEFAULT_VAL_FRACTION = {"demo": 0.05, "wikipedia": 0.005, "wikiextractor": 0.005}
"""Default `--val-fraction` by source (0.01 for the others)."""


def add_data_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Registers `prepare` and `inspect` on the subparsers of the `perceiver data` command.

    `pretrain/cli.py` does::

        data = sub.add_parser("data", help="build and inspect datasets")
        add_data_subcommands(data.add_subparsers(dest="data_command", required=True))

    Args:
        subparsers: The result of `add_subparsers()` on the `data` parser.
    """
    prepare = subparsers.add_parser(
        "prepare",
        help="read a corpus, tokenize, pack and write MDS shards + manifest.json",
        description="Read documents, byte-tokenize them, pack them into fixed-length samples "
        "and write DIR/train, DIR/val (MDS, zstd) and DIR/manifest.json.",
    )
    prepare.add_argument(
        "--source",
        choices=SOURCES,
        required=True,
        help="wikipedia: MediaWiki XML dumps (.xml/.xml.bz2); wikiextractor: its JSON or <doc> "
        "output; c4: c4-*.json.gz; jsonl, text, parquet: generic; demo: stdlib docstrings",
    )
    prepare.add_argument(
        "--input",
        dest="inputs",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files, globs, directories or s3:// / gs:// URLs (not for --source demo)",
    )
    prepare.add_argument(
        "--output",
        required=True,
        metavar="DIR|URL",
        help="local directory, or s3://bucket/prefix (gs://, ...: built in --staging-dir, then "
        "uploaded with manifest.json last)",
    )
    prepare.add_argument(
        "--staging-dir",
        metavar="DIR",
        help="local directory a URL output is built in first (default: $TMPDIR/perceiver-staging)",
    )
    prepare.add_argument(
        "--seq-len",
        type=int,
        required=True,
        help="model input length (AR samples store seq_len + 1 tokens)",
    )
    prepare.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="mlm",
        help="mlm: samples of seq-len tokens; ar: seq-len + 1 (default: mlm)",
    )
    prepare.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help=f"fraction of documents for validation (default: {DEFAULT_VAL_FRACTION})",
    )
    prepare.add_argument(
        "--max-bytes",
        type=int,
        default=None,
        help="take about this many bytes of text from each input (default: all)",
    )
    prepare.add_argument(
        "--text-field", default="text", help="JSON field or Parquet column of the text"
    )
    prepare.add_argument("--id-field", default=None, help="JSON field of a document id")
    prepare.add_argument(
        "--tokenizer",
        default="byte",
        metavar="{bytes,spm:MODEL}",
        help=f"{' or '.join(available_tokenizers())}, or spm:PATH to a SentencePiece model from "
        "`perceiver data train-spm` (copied beside the shards)",
    )
    prepare.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes; the output is the same for any number (default: 1)",
    )
    prepare.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first bad record (invalid UTF-8 or JSON, truncated or empty compressed "
        "file, directory that cannot be listed, empty or too large document); redirects and "
        "non-article pages are still only counted",
    )
    prepare.add_argument(
        "--max-doc-bytes",
        type=int,
        default=DEFAULT_MAX_DOC_BYTES,
        help="documents above this size are rejected (default: 64 MiB)",
    )
    prepare.add_argument(
        "--chunk-mb",
        type=float,
        default=None,
        help="wikipedia: MB of XML per parallel part (default: 32)",
    )
    prepare.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar with MB/s and docs/s (default: when stderr is a terminal)",
    )
    prepare.add_argument(
        "--paragraphs",
        action="store_true",
        help="text: one document per blank-line-separated paragraph",
    )
    prepare.add_argument(
        "--size-limit", default=DEFAULT_SIZE_LIMIT, help="shard size before compression, e.g. 64mb"
    )
    prepare.add_argument(
        "--compression",
        default="zstd:1",
        help="shard compression, zstd:LEVEL (default zstd:1: 7%% larger than zstd:3, 2x faster)",
    )
    prepare.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it already holds shards"
    )
    prepare.set_defaults(func=run_prepare)

    inspect = subparsers.add_parser(
        "inspect", help="summarise a shard directory (text or video: counts, sizes, samples)"
    )
    inspect.add_argument("data_dir", metavar="DIR|URL")
    inspect.add_argument("--samples", type=int, default=3, help="decoded samples to show")
    inspect.add_argument("--chars", type=int, default=300, help="characters per shown sample")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=run_inspect)

    add_train_spm_subcommand(subparsers)
    add_prepare_video_subcommand(subparsers)
    add_prepare_images_subcommand(subparsers)
    add_flow_subcommands(subparsers)


def add_train_spm_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Registers `perceiver data train-spm`."""
    train = subparsers.add_parser(
        "train-spm",
        help="train a SentencePiece model on a sample of a corpus",
        description="Train a SentencePiece model (unigram, byte fallback, the byte tokenizer's "
        "special ids) on the first --sample-mb of documents spread over the inputs.",
    )
    train.add_argument("--source", choices=[s for s in SOURCES if s != "demo"], required=True)
    train.add_argument("--input", dest="inputs", nargs="+", required=True, metavar="PATH")
    train.add_argument("--output", required=True, type=Path, metavar="MODEL")
    train.add_argument("--vocab-size", type=int, default=32000)
    train.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    train.add_argument("--sample-mb", type=float, default=200.0, help="text sampled (MB)")
    train.add_argument("--character-coverage", type=float, default=0.9995)
    train.add_argument("--text-field", default="text")
    train.add_argument("--workers", type=int, default=1)
    train.set_defaults(func=run_train_spm)


def _fail(command: str, err: BaseException) -> SystemExit:
    return SystemExit(f"perceiver data {command}: error: {err}")


def run_prepare(args: argparse.Namespace) -> int:
    """Runs `perceiver data prepare` with parsed arguments; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    val_fraction = args.val_fraction
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION.get(args.source, 0.01)
    try:
        if args.source == "demo" and args.inputs:
            raise ValueError("--source demo reads the Python standard library; drop --input")
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        manifest = prepare_corpus(
            args.source,
            args.inputs,
            args.output,
            args.seq_len,
            args.objective,
            val_fraction=val_fraction,
            max_bytes=args.max_bytes,
            text_field=args.text_field,
            split_paragraphs=args.paragraphs,
            tokenizer=args.tokenizer,
            size_limit=args.size_limit,
            overwrite=args.overwrite,
            workers=args.workers,
            strict=args.strict,
            max_doc_bytes=args.max_doc_bytes,
            id_field=args.id_field,
            chunk_bytes=int(args.chunk_mb * 1e6) if args.chunk_mb else None,
            progress=progress,
            compression=args.compression,
            staging_dir=args.staging_dir,
        )
    except (OSError, CorpusError, ValueError) as err:
        raise _fail("prepare", err) from err
    docs = manifest["documents"]
    print(
        f"wrote {args.output}: {manifest['splits']['train']['samples']} train / "
        f"{manifest['splits']['val']['samples']} val samples of {manifest['sample_len']} tokens; "
        f"documents read {docs['read']}, kept {docs['kept']}, rejected {docs['rejected']}"
        f"{rejected_reasons(docs)}; {manifest['wall_time_s']:.1f} s"
    )
    for example in docs["rejected_examples"][:5]:
        print(f"  rejected: {example}")
    return 0


def run_train_spm(args: argparse.Namespace) -> int:
    """Runs `perceiver data train-spm` with parsed arguments; returns the exit code."""
    from data_pipeline.sources.kinds import SourceOptions
    from data_pipeline.tokenization.spm_train import train_spm

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = train_spm(
            args.source,
            args.inputs,
            args.output,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            sample_bytes=int(args.sample_mb * 1e6),
            character_coverage=args.character_coverage,
            options=SourceOptions(text_field=args.text_field),
            workers=args.workers,
        )
    except (FileNotFoundError, CorpusError, ValueError, RuntimeError) as err:
        raise _fail("train-spm", err) from err
    short = summary["vocab_size"] < summary["vocab_size_requested"]
    asked = f" (of {summary['vocab_size_requested']} asked for)" if short else ""
    print(
        f"wrote {summary['model']}: {summary['vocab_size']} pieces{asked}, trained on "
        f"{summary['sample_bytes'] / 1e6:.1f} MB of text in {summary['wall_time_s']:.0f} s; use "
        f"--tokenizer spm:{summary['model']}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A standalone `perceiver`-like parser holding only the `data` subcommands."""
    parser = argparse.ArgumentParser(prog="perceiver", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{data}")
    data = commands.add_parser("data", help="build and inspect token shards")
    add_data_subcommands(data.add_subparsers(dest="data_command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` and runs the chosen subcommand."""
    args = build_parser().parse_args(argv)
    return args.func(args)
