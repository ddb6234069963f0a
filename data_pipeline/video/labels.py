"""Label sources for video clips: which files under a directory carry which class.

* A Kinetics-style CSV (``label,youtube_id,time_start,time_end[,split]``): clip files are named
  ``{youtube_id}_{time_start:06d}_{time_end:06d}.{ext}`` anywhere under the input directory (the
  layout of the Kinetics downloaders); class ids are the sorted labels of the CSV; the ``split``
  column sends rows to train (``train``) or val (``val``, ``validate``, ...), other splits (e.g.
  ``test``) are rejected as ``other_split``.
* One folder per class (``DIR/<class>/.../<file>``), with the sorted folder names as classes or a
  class list file (one name per line, in id order) fixing the ids; folders outside the list are
  ``unknown_label``. Train/val is decided by a hash of the relative path.

Files no label source names are ``no_label``; CSV rows without a file are ``missing_file``.
The result is in a fixed order (sorted relative paths), so a build does not depend on how the
filesystem lists directories.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.video.clips import VIDEO_EXTENSIONS, Rejection, VideoItem

__all__ = ["VideoListing", "assign_split", "kinetics_stem", "list_videos", "read_class_list"]

CSV_SPLITS = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
}


@dataclass
class VideoListing:
    """What `list_videos` found: labelled items in a fixed order, the classes, the rejections."""

    items: list[VideoItem]
    classes: list[str]
    rejections: list[Rejection] = field(default_factory=list)
    source: str = "folders"
    found: int = 0  # video files found under the input directory
    ignored_files: int = 0  # other files found there


def assign_split(key: str, val_fraction: float) -> str:
    """``"val"`` if blake2b-64(key) / 2**64 < val_fraction, else ``"train"`` (the text rule)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "big") / 2.0**64 < val_fraction else "train"


def _scan(root: Path) -> tuple[list[Path], int]:
    videos, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            if fn.lower().endswith(VIDEO_EXTENSIONS):
                videos.append(Path(dirpath) / fn)
            else:
                ignored += 1
    return sorted(videos, key=lambda p: p.relative_to(root).as_posix()), ignored


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line (blank lines and ``#`` comments skipped), in label-id order."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names repeat")
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def kinetics_stem(youtube_id: str, time_start: str, time_end: str) -> str:
    """The file stem of a Kinetics clip: ``{id}_{start:06d}_{end:06d}``."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def list_videos(
    input_dir: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
) -> VideoListing:
    """Finds the labelled videos under ``input_dir``.

    Args:
        input_dir: Directory searched recursively for ``.mp4 .avi .webm .mkv`` files.
        labels: ``*.csv``: a Kinetics-style CSV (columns ``label,youtube_id,time_start,time_end``
            and optionally ``split``); class ids are the sorted CSV labels. Any other file: a
            class list (one name per line, in id order) for the folder-per-class layout;
            folders not in it are ``unknown_label``. None: folder-per-class with the sorted
            folder names as classes.
        val_fraction: Fraction of videos sent to ``val`` by a hash of their relative path (the
            folder layout, and CSVs without a ``split`` column).

    Returns:
        The items (sorted by relative path), classes and pre-decoding rejections.

    Raises:
        FileNotFoundError: If ``input_dir`` or ``labels`` does not exist.
        ValueError: For a malformed labels file (naming it).
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input directory not found")
    if labels is not None and not Path(labels).is_file():
        raise FileNotFoundError(f"{labels}: labels file not found")
    videos, ignored = _scan(root)
    if labels is not None and str(labels).lower().endswith(".csv"):
        listing = _from_csv(root, videos, Path(labels), val_fraction)
    else:
        listing = _from_folders(root, videos, labels, val_fraction)
    listing.found, listing.ignored_files = len(videos), ignored
    return listing


def _from_folders(
    root: Path, videos: list[Path], labels: str | os.PathLike[str] | None, val_fraction: float
) -> VideoListing:
    rels = [v.relative_to(root).as_posix() for v in videos]
    if labels is not None:
        classes = read_class_list(labels)
    else:
        classes = sorted({r.split("/")[0] for r in rels if "/" in r})
    ids = {c: i for i, c in enumerate(classes)}
    listing = VideoListing([], classes, source="folders")
    for path, rel in zip(videos, rels):
        if "/" not in rel:
            listing.rejections.append(Rejection(rel, "no_label", "not inside a class folder"))
        elif rel.split("/")[0] not in ids:
            folder = rel.split("/")[0]
            listing.rejections.append(
                Rejection(rel, "unknown_label", f"class {folder!r} is not in {labels}")
            )
        else:
            label = ids[rel.split("/")[0]]
            listing.items.append(VideoItem(str(path), rel, label, assign_split(rel, val_fraction)))
    return listing


def _from_csv(root: Path, videos: list[Path], csv_path: Path, val_fraction: float) -> VideoListing:
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        needed = {"label", "youtube_id", "time_start", "time_end"}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{csv_path}: missing columns {sorted(missing)}; a Kinetics CSV has "
                "label,youtube_id,time_start,time_end,split"
            )
        rows = list(reader)
    by_stem: dict[str, Path] = {}
    for v in videos:
        by_stem.setdefault(v.stem, v)
    classes = sorted({r["label"].strip() for r in rows if r["label"] and r["label"].strip()})
    ids = {c: i for i, c in enumerate(classes)}
    listing = VideoListing([], classes, source="kinetics_csv")
    listed: set[str] = set()
    for line, row in enumerate(rows, start=2):
        try:
            stem = kinetics_stem(row["youtube_id"], row["time_start"], row["time_end"])
        except (TypeError, ValueError):
            raise ValueError(f"{csv_path}:{line}: bad time_start/time_end {row}") from None
        listed.add(stem)
        split_name = (row.get("split") or "").strip().lower()
        if split_name and split_name not in CSV_SPLITS:
            listing.rejections.append(Rejection(stem, "other_split", f"split {split_name!r}"))
            continue
        label = (row["label"] or "").strip()
        if stem not in by_stem:
            listing.rejections.append(
                Rejection(stem, "missing_file", f"{csv_path.name}:{line} names no file here")
            )
        elif label not in ids:
            rel = by_stem[stem].relative_to(root).as_posix()
            listing.rejections.append(Rejection(rel, "unknown_label", f"label {label!r}"))
        else:
            path = by_stem[stem]
            rel = path.relative_to(root).as_posix()
            split = CSV_SPLITS[split_name] if split_name else assign_split(rel, val_fraction)
            listing.items.append(VideoItem(str(path), rel, ids[label], split))
    for v in videos:
        if v.stem not in listed:
            rel = v.relative_to(root).as_posix()
            listing.rejections.append(Rejection(rel, "no_label", f"not in {csv_path.name}"))
    listing.items.sort(key=lambda item: item.rel)
    return listing
