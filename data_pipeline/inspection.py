"""`perceiver data inspect`: what a shard directory (text or video) holds, re-read from disk.

    perceiver data inspect DIR|URL [--samples 3] [--chars 300] [--json]

`inspect_shards` summarises the manifest, re-counts every split from its `index.json` (a
mismatch makes `consistent_with_manifest` False and the command exit 1) and decodes the first
training samples; video shards get `inspect_video_shards`' summary, image and flow shards
`inspect_vision_shards`'.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from data_pipeline.shards.manifest import iter_samples, read_manifest
from data_pipeline.shards.packing import SPLITS
from data_pipeline.shards.remote import check_location, is_url, local_mirror
from data_pipeline.tokenization.tokenizer import tokenizer_from_manifest

__all__ = [
    "inspect_shards",
    "inspect_video_shards",
    "inspect_vision_shards",
    "rejected_reasons",
    "run_inspect",
]


def rejected_reasons(docs: dict[str, Any]) -> str:
    """The rejection counts of `documents` or `clips`, " (reason: count, ...)", or "" if none."""
    reasons = docs["rejected_by_reason"]
    return " (" + ", ".join(f"{k}: {v}" for k, v in reasons.items()) + ")" if reasons else ""


def _split_sizes(root: Path, split: str) -> dict[str, Any]:
    """Counts and sizes of one split, re-read from its `index.json`."""
    shards = json.loads((root / split / "index.json").read_text(encoding="utf-8"))["shards"]
    raw = sum(shard["raw_data"]["bytes"] for shard in shards)
    stored = sum((shard.get("zip_data") or shard["raw_data"])["bytes"] for shard in shards)
    return {
        "samples": sum(shard["samples"] for shard in shards),
        "shards": len(shards),
        "raw_bytes": raw,
        "stored_bytes": stored,
        "compression_ratio": round(raw / stored, 2) if stored else None,
    }


def inspect_shards(
    data_dir: str | os.PathLike[str], num_samples: int = 3, max_chars: int = 300
) -> dict[str, Any]:
    """Summarises a shard directory: manifest, per-split counts and sizes, decoded samples.

    Counts are re-read from each split's `index.json`; `consistent` is False if they disagree
    with the manifest. Video shards (`kind` "video") get `inspect_video_shards`' summary.

    Args:
        data_dir: A shard directory.
        num_samples: Number of leading train samples to decode.
        max_chars: Characters kept of each decoded sample.

    Returns:
        A JSON-able summary.

    Raises:
        FileNotFoundError: If `data_dir` is not a complete shard directory.
    """
    root = local_mirror(check_location(data_dir), SPLITS)  # a URL's manifest and indexes
    manifest = read_manifest(root)
    if manifest.get("kind") == "video":
        return inspect_video_shards(root, manifest, num_samples)
    if manifest.get("kind") in ("image", "flow"):
        return inspect_vision_shards(root, manifest, num_samples)
    tokenizer = tokenizer_from_manifest(root, manifest)
    splits: dict[str, Any] = {}
    consistent = True
    for split in SPLITS:
        sizes = _split_sizes(root, split)
        consistent &= sizes["samples"] == manifest["splits"][split]["samples"]
        splits[split] = {**sizes, "tokens": sizes["samples"] * manifest["sample_len"]}
    decoded = [
        tokenizer.decode(tokens)[:max_chars]
        for tokens in iter_samples(data_dir, "train", limit=max(num_samples, 0))
    ]
    docs = manifest["documents"]
    return {
        "data_dir": str(data_dir) if is_url(data_dir) else str(root),
        "kind": "tokens",
        "consistent_with_manifest": consistent,
        "tokenizer": manifest["tokenizer"]["name"],
        "vocab_size": manifest["tokenizer"]["vocab_size"],
        "sample_len": manifest["sample_len"],
        "objective": manifest["metadata"].get("objective"),
        "seq_len": manifest["metadata"].get("seq_len"),
        "source": manifest["metadata"].get("source"),
        "documents": {k: docs[k] for k in ("read", "kept", "rejected", "rejected_by_reason")},
        "bytes_in": manifest["bytes_in"],
        "tokens": manifest["tokens"],
        "splits": splits,
        "created_utc": manifest["created_utc"],
        "tool_version": manifest["tool_version"],
        "samples": decoded,
        "inputs": {
            "files": len(manifest.get("inputs", [])),
            "bytes": sum(max(i["size"], 0) for i in manifest.get("inputs", [])),
        },
        "parts": len(manifest.get("parts", [])),
        "rejected_examples": docs.get("examples_by_reason", {}),
        "workers": manifest.get("workers"),
        "wall_time_s": manifest.get("wall_time_s"),
        "throughput": manifest.get("throughput"),
    }


def inspect_video_shards(
    root: Path, manifest: dict[str, Any], num_samples: int = 3
) -> dict[str, Any]:
    """The `inspect_shards` summary of video shards: clip geometry, classes, counts, first clips.

    Args:
        root: A video shard directory (`perceiver data prepare-video`).
        manifest: Its manifest.
        num_samples: Number of leading train clips described (source file, clip, label).
    """
    from data_pipeline.video.shards import iter_video_samples

    splits: dict[str, Any] = {}
    consistent = True
    for split in SPLITS:
        splits[split] = _split_sizes(root, split)
        consistent &= splits[split]["samples"] == manifest["splits"][split]["samples"]
    classes = manifest["classes"]
    clips = [
        {
            "path": sample["path"],
            "clip": int(sample["clip"]),
            "start_s": float(sample["start_s"]),
            "label": classes[int(sample["label"])],
            "has_audio": bool(sample["has_audio"]),
        }
        for sample in iter_video_samples(root, "train", limit=max(num_samples, 0))
    ]
    return {
        "data_dir": str(root),
        "kind": "video",
        "consistent_with_manifest": consistent,
        "video": manifest["video"],
        "audio": manifest["audio"],
        "classes": classes,
        "num_classes": manifest["num_classes"],
        "class_counts": manifest["class_counts"],
        "labels": manifest["labels"],
        "files": manifest["files"],
        "clips": manifest["clips"],
        "rejected_examples": manifest["rejected"][:5],
        "splits": splits,
        "val_fraction": manifest.get("val_fraction"),
        "created_utc": manifest["created_utc"],
        "tool_version": manifest["tool_version"],
        "wall_time_s": manifest.get("wall_time_s"),
        "samples": clips,
    }


def _describe_vision_sample(kind: str, sample: dict[str, Any], classes: list[str]) -> dict:
    import io

    import numpy as np
    from PIL import Image

    if kind == "image":
        with Image.open(io.BytesIO(sample["image"])) as image:
            size, fmt = [image.height, image.width], image.format
        label = int(sample["label"])
        return {"path": sample["path"], "label": classes[label], "size": size, "format": fmt}
    flow, valid = np.asarray(sample["flow"]), np.asarray(sample["valid"]).astype(bool)
    magnitude = np.sqrt((flow.astype(np.float64) ** 2).sum(-1))[valid]
    return {
        "path": sample["path"],
        "size": list(flow.shape[:2]),
        "valid_fraction": round(float(valid.mean()), 4),
        "flow_mean": round(float(magnitude.mean()), 3) if magnitude.size else None,
        "flow_max": round(float(magnitude.max()), 3) if magnitude.size else None,
    }


def inspect_vision_shards(
    root: Path, manifest: dict[str, Any], num_samples: int = 3
) -> dict[str, Any]:
    """The `inspect_shards` summary of image or flow shards (`prepare-images`, `prepare-flow`,
    `generate-flow`): counts re-read from the indexes, classes or sizes, conversions, rejections
    and the first training samples described."""
    from data_pipeline.shards.manifest import iter_stored_samples

    kind = manifest["kind"]
    splits: dict[str, Any] = {}
    consistent = True
    for split in SPLITS:
        splits[split] = _split_sizes(root, split)
        consistent &= splits[split]["samples"] == manifest["splits"][split]["samples"]
    classes = manifest.get("classes", [])
    samples = [
        _describe_vision_sample(kind, sample, classes)
        for sample in iter_stored_samples(root, "train", limit=max(num_samples, 0))
    ]
    keys = ("classes", "class_names", "num_classes", "class_counts", "layout", "labels",
            "conversions", "formats", "files", "source", "height", "width", "sizes", "pass",
            "generator", "split_rule")  # fmt: skip
    return {
        "data_dir": str(root),
        "kind": kind,
        "consistent_with_manifest": consistent,
        **{key: manifest[key] for key in keys if key in manifest},
        "rejected": {
            "count": manifest["rejected_count"],
            "by_reason": manifest["rejected_by_reason"],
        },
        "rejected_examples": manifest["rejected"][:5],
        "splits": splits,
        "created_utc": manifest["created_utc"],
        "tool_version": manifest["tool_version"],
        "wall_time_s": manifest.get("wall_time_s"),
        "samples": samples,
    }


def _print_vision_summary(summary: dict[str, Any]) -> None:
    kind = summary["kind"]
    what = "images" if kind == "image" else "frame pairs + flow"
    print(f"{summary['data_dir']}  ({what}, built {summary['created_utc']}, "
          f"{summary['tool_version']})")  # fmt: skip
    if kind == "image":
        names = summary["classes"]
        shown = ", ".join(names[:10]) + (
            f", ... ({len(names) - 10} more)" if len(names) > 10 else ""
        )
        print(f"  {summary['num_classes']} classes (layout {summary['layout']}, labels from "
              f"{summary['labels']['source']}): {shown}")  # fmt: skip
        conversions = ", ".join(f"{k}: {v}" for k, v in summary["conversions"].items()) or "none"
        formats = ", ".join(f"{k}: {v}" for k, v in summary["formats"].items())
        print(f"  formats: {formats}; converted to RGB: {conversions}; "
              f"{summary['files']['ignored_non_image']} non-image files ignored")  # fmt: skip
    else:
        size = (f"{summary['height']}x{summary['width']}" if summary["height"]
                else f"{len({s for v in summary['sizes'].values() for s in v})} sizes")  # fmt: skip
        rule = summary.get("split_rule", "generated per split")
        print(f"  source {summary['source']}, frames {size}, split: {rule}")
    rejected = summary["rejected"]
    reasons = rejected_reasons({"rejected_by_reason": rejected["by_reason"]})
    print(f"  rejected {rejected['count']}{reasons}")
    for r in summary["rejected_examples"]:
        print(f"    e.g. {r['path']}: {r['reason']}: {r['detail']}")
    unit = "images" if kind == "image" else "pairs"
    for split, info in summary["splits"].items():
        spread = ""
        if kind == "image" and summary["class_counts"][split]:
            counts = sorted(summary["class_counts"][split].values())
            spread = f"; {len(counts)} classes, {counts[0]} to {counts[-1]} images each"
        print(_split_line(split, info, unit) + spread)
    for i, sample in enumerate(summary["samples"]):
        h, w = sample["size"]
        if kind == "image":
            print(f"  --- train image {i}: {sample['label']}: {sample['path']} ({h}x{w} "
                  f"{sample['format']})")  # fmt: skip
        else:
            print(f"  --- train pair {i}: {sample['path']} ({h}x{w}), flow mean "
                  f"{sample['flow_mean']} max {sample['flow_max']} px, "
                  f"{sample['valid_fraction']:.0%} valid")  # fmt: skip


def _split_line(split: str, info: dict[str, Any], unit: str) -> str:
    line = f"  {split:5s}: {info['samples']:,} {unit}, {info['shards']} shards"
    if not info["shards"]:
        return f"{line} (empty)"
    return f"{line}, {info['stored_bytes']:,} bytes stored (x{info['compression_ratio']} zstd)"


def _print_video_summary(summary: dict[str, Any]) -> None:
    video, audio, clips = summary["video"], summary["audio"], summary["clips"]
    print(
        f"{summary['data_dir']}  (video clips, built {summary['created_utc']}, "
        f"{summary['tool_version']})"
    )
    quality = f" q{video['jpeg_quality']}" if video.get("jpeg_quality") else ""
    print(
        f"  clips of {video['num_frames']} frames at {video['fps']:g} fps "
        f"({video['duration_s']:g} s), {video['height']}x{video['width']} RGB "
        f"({video['frames_format']}{quality}), {video['clips_per_video']} per video from "
        f"{video['start_s']:g} s; audio {audio['num_samples']} samples at "
        f"{audio['sample_rate']} Hz mono ({audio['dtype']}, missing: {audio['missing_audio']})"
    )
    names = summary["classes"]
    shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")
    print(
        f"  {summary['num_classes']} classes (labels from {summary['labels']['source']}): {shown}"
    )
    files = summary["files"]
    print(
        f"  files: {files['videos']} videos found, {files['labelled']} labelled, "
        f"{files['ignored_non_video']} other files ignored"
    )
    print(
        f"  clips: read {clips['read']}, kept {clips['kept']} ({clips['without_audio']} without "
        f"audio), rejected {clips['rejected']}{rejected_reasons(clips)}"
    )
    for r in summary["rejected_examples"]:
        where = r["path"] if r["clip"] is None else f"{r['path']} (clip {r['clip']})"
        print(f"    e.g. {where}: {r['reason']}: {r['detail']}")
    for split, info in summary["splits"].items():
        counts = sorted(summary["class_counts"][split].values())
        spread = (
            f"; {len(counts)} classes, {counts[0]} to {counts[-1]} clips each" if counts else ""
        )
        print(_split_line(split, info, "clips") + spread)
    for i, clip in enumerate(summary["samples"]):
        audio_note = "" if clip["has_audio"] else ", no audio"
        print(
            f"  --- train clip {i}: {clip['label']}: {clip['path']} clip {clip['clip']} from "
            f"{clip['start_s']:g} s{audio_note}"
        )


def run_inspect(args: argparse.Namespace) -> int:
    """Runs `perceiver data inspect` with parsed arguments; returns the exit code."""
    try:
        summary = inspect_shards(args.data_dir, args.samples, args.chars)
    except (OSError, ValueError) as err:
        raise SystemExit(f"perceiver data inspect: error: {err}") from err
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0 if summary["consistent_with_manifest"] else 1
    printers = {"video": _print_video_summary, "image": _print_vision_summary,
                "flow": _print_vision_summary}  # fmt: skip
    printers.get(summary["kind"], _print_token_summary)(summary)
    if not summary["consistent_with_manifest"]:
        print("  WARNING: index.json sample counts differ from manifest.json")
    return 0 if summary["consistent_with_manifest"] else 1


def _print_token_summary(summary: dict[str, Any]) -> None:
    docs = summary["documents"]
    print(f"{summary['data_dir']}  (built {summary['created_utc']}, {summary['tool_version']})")
    print(
        f"  tokenizer {summary['tokenizer']} ({summary['vocab_size']} ids), samples of "
        f"{summary['sample_len']} tokens, objective {summary['objective']}, "
        f"seq_len {summary['seq_len']}, source {summary['source']}"
    )
    print(
        f"  documents: read {docs['read']}, kept {docs['kept']}, rejected {docs['rejected']}"
        f"{rejected_reasons(docs)}"
    )
    for reason, examples in summary["rejected_examples"].items():
        print(f"    e.g. {reason}: {examples[0]}")
    if summary["inputs"]["files"]:
        throughput = summary["throughput"] or {}
        print(
            f"  inputs: {summary['inputs']['files']} files, {summary['inputs']['bytes']:,} bytes, "
            f"{summary['parts']} parts; built by {summary['workers']} workers in "
            f"{summary['wall_time_s']:.1f} s ({throughput.get('input_mb_per_s', '?')} MB/s)"
        )
    tokens = summary["tokens"]
    print(
        f"  {summary['bytes_in']:,} bytes in -> {tokens['written']:,} tokens written "
        f"({tokens['dropped']:,} dropped as partial samples)"
    )
    for split, info in summary["splits"].items():
        print(_split_line(split, info, "samples"))
    for i, text in enumerate(summary["samples"]):
        print(f"  --- train sample {i} ---\n{text!r}")
