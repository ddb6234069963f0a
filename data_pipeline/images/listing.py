"""Labelled image trees -> (file, label, split) listings: ImageNet's layouts and class folders.

Layouts (`list_images(root, layout=...)`):

- ``folders``: any class-folder tree, ``ROOT/CLASS/**/IMAGE``; classes are the folder names,
  sorted, or the order of a synsets/class file.
- ``imagenet-train``: the same, with folders named by WordNet synset (``n01440764``); a synsets
  file in the style of ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca`` a line) gives
  the class order and names.
- ``imagenet-val``: a flat folder of images plus a label file (``--val-labels``), either
  ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the synset first in the prediction
  string) or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one 1-based class index a
  line, for the images in sorted file order; index k is line k of the synsets file, so for the
  official devkit that file must list the synsets in the devkit's ILSVRC2012_ID order).
- ``auto``: ``ROOT/train`` + ``ROOT/val`` -> each listed by its own layout into its own split
  (val as ``imagenet-val`` when ``--val-labels`` is given, else as class folders); otherwise
  ``imagenet-val`` with ``--val-labels``, ``imagenet-train`` when every folder is a synset, else
  ``folders``.

A single tree is split by ``--val-fraction`` (a hash of each relative path, as text and video
shards do). Files without an image suffix are ignored (counted); images that cannot be labelled
are rejected (named).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.images.build import Rejection
from data_pipeline.shards.packing import assign_split

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "ImageItem",
    "ImageListing",
    "list_images",
    "read_synsets",
]

LAYOUTS = ("auto", "imagenet-train", "imagenet-val", "folders")
IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm".split()
)
_SYNSET = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ImageItem:
    """One labelled image: absolute path, path relative to the input root, label, split, and
    ``"size:mtime_ns"`` (a resumed build redoes the part of a changed file)."""

    path: str
    rel: str
    label: int
    split: str
    stamp: str = ""


def _item(path: Path, rel: str, label: int, split: str) -> ImageItem:
    stat = path.stat()
    return ImageItem(str(path), rel, label, split, f"{stat.st_size}:{stat.st_mtime_ns}")


@dataclass
class ImageListing:
    """What `list_images` found."""

    layout: str
    classes: list[str]
    class_names: list[str] | None
    items: list[ImageItem] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    found: int = 0
    ignored: list[str] = field(default_factory=list)
    labels_source: str = "folders"


def read_synsets(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Reads a synsets/class file: one class a line, ``ID[ name...]``.

    Returns:
        (ids, names) in file order (a name defaults to the id).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: For an empty file or a repeated id (naming the file and line).
    """
    ids, names = [], []
    seen: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if parts[0] in seen:
            raise ValueError(f"{path}:{number}: class {parts[0]!r} repeats line {seen[parts[0]]}")
        seen[parts[0]] = number
        ids.append(parts[0])
        names.append(parts[1] if len(parts) > 1 else parts[0])
    if not ids:
        raise ValueError(f"{path}: no classes")
    return ids, names


def _image_files(root: Path, listing: ImageListing) -> list[Path]:
    """Files under `root` with an image suffix, sorted; others are counted as ignored."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        else:
            listing.ignored.append(str(path))
    listing.found += len(files)
    return files


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_folders(
    root: Path, base: Path, listing: ImageListing, split: str | None, val_fraction: float
) -> None:
    index = {name: i for i, name in enumerate(listing.classes)}
    for path in _image_files(root, listing):
        rel = path.relative_to(base).as_posix()
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            listing.rejections.append(Rejection(rel, "no_label", "not inside a class folder"))
        elif parts[0] not in index:
            listing.rejections.append(
                Rejection(rel, "unknown_class", f"folder {parts[0]!r} is not in the class list")
            )
        else:
            chosen = split or assign_split(rel, val_fraction)
            listing.items.append(_item(path, rel, index[parts[0]], chosen))


def _val_labels(
    files: list[Path], labels: Path, synsets: list[str] | None
) -> tuple[dict[str, str], str]:
    """Synset of each file name, from a LOC CSV or the devkit's ground-truth file."""
    text = labels.read_text(encoding="utf-8")
    first = text.lstrip().split("\n", 1)[0]
    if first.startswith("ImageId"):
        by_stem = {}
        for number, row in enumerate(csv.DictReader(text.splitlines()), 2):
            prediction = (row.get("PredictionString") or "").split()
            if not row.get("ImageId") or not prediction:
                raise ValueError(f"{labels}:{number}: expected ImageId,PredictionString")
            by_stem[row["ImageId"]] = prediction[0]
        return {f.name: by_stem[f.stem] for f in files if f.stem in by_stem}, "loc_val_csv"
    if synsets is None:
        raise ValueError(
            f"{labels}: a ground-truth file of class indices needs --synsets (line k of it is "
            "class index k)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != len(files):
        raise ValueError(
            f"{labels}: {len(lines)} labels but {len(files)} images in the val folder; the "
            "ground-truth file labels the images in sorted file order, one a line"
        )
    out = {}
    for number, (line, path) in enumerate(zip(lines, files), 1):
        if not line.isdigit() or not 1 <= int(line) <= len(synsets):
            raise ValueError(
                f"{labels}:{number}: {line!r} is not a class index in 1..{len(synsets)}"
            )
        out[path.name] = synsets[int(line) - 1]
    return out, "devkit_ground_truth"


def _list_val(
    root: Path,
    base: Path,
    labels: Path,
    listing: ImageListing,
    synsets: list[str] | None,
    split: str | None,
    val_fraction: float,
) -> None:
    files = _image_files(root, listing)
    by_name, listing.labels_source = _val_labels(files, labels, synsets)
    if not listing.classes:
        listing.classes = sorted(set(by_name.values()))
    index = {name: i for i, name in enumerate(listing.classes)}
    for path in files:
        rel = path.relative_to(base).as_posix()
        synset = by_name.get(path.name)
        if synset is None:
            listing.rejections.append(Rejection(rel, "no_label", f"not in {labels.name}"))
        elif synset not in index:
            listing.rejections.append(
                Rejection(rel, "unknown_class", f"{synset!r} is not in the class list")
            )
        else:
            chosen = split or assign_split(rel, val_fraction)
            listing.items.append(_item(path, rel, index[synset], chosen))


def list_images(
    root: str | os.PathLike[str],
    *,
    layout: str = "auto",
    val_labels: str | os.PathLike[str] | None = None,
    synsets: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.05,
) -> ImageListing:
    """Lists the labelled images of `root` (see the module docstring).

    Args:
        root: The input directory.
        layout: One of `LAYOUTS`.
        val_labels: The val label file (``imagenet-val``, or ``ROOT/val`` under ``auto``).
        synsets: A synsets/class file giving class order and names.
        val_fraction: Validation fraction of a single tree (hash of the relative path).

    Returns:
        The listing, items in sorted path order (train tree first).

    Raises:
        FileNotFoundError: If `root` or a given file does not exist.
        ValueError: For an unknown layout, missing or bad label files, or no class.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input directory not found")
    for given in (val_labels, synsets):
        if given is not None and not Path(given).is_file():
            raise FileNotFoundError(f"{given}: file not found")
    ids, names = read_synsets(synsets) if synsets is not None else (None, None)
    labels = Path(val_labels) if val_labels is not None else None
    split_dirs = (root / "train").is_dir() and (root / "val").is_dir()
    if layout == "auto":
        if split_dirs:
            layout = "train+val"
        elif labels is not None:
            layout = "imagenet-val"
        else:
            folders = _class_folders(root)
            synset_folders = folders and all(_SYNSET.match(f) for f in folders)
            layout = "imagenet-train" if synset_folders else "folders"
    if layout == "imagenet-val" and labels is None:
        raise ValueError(f"{root}: layout imagenet-val needs --val-labels")
    listing = ImageListing(layout, list(ids or []), names, labels_source="folders")
    if layout == "train+val":
        if not listing.classes:
            listing.classes = _class_folders(root / "train")
        _list_folders(root / "train", root, listing, "train", 0.0)
        if labels is not None:
            _list_val(root / "val", root, labels, listing, ids, "val", 0.0)
        else:
            _list_folders(root / "val", root, listing, "val", 0.0)
    elif layout == "imagenet-val":
        _list_val(root, root, labels, listing, ids, None, val_fraction)
    else:
        if not listing.classes:
            listing.classes = _class_folders(root)
        _list_folders(root, root, listing, None, val_fraction)
    if not listing.classes:
        raise ValueError(f"{root}: no class found (layout {layout})")
    return listing
