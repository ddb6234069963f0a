"""`perceiver data prepare-images`: labelled images -> image shards (kind "image").

Layout (the "image" shard contract of docs/vision_data.md):

    DIR/manifest.json    kind "image": classes (and names), per-split and per-class counts,
                         conversions by kind, formats, rejected files by reason with names
    DIR/{train,val}/     MDS, columns `IMAGE_COLUMNS`:
        image            bytes: the JPEG or PNG file as stored, re-encoded only when converted
        label            int: index into manifest["classes"]
        path             str: the file, relative to the input root

Every file is fully decoded (Pillow) before it is kept, so truncated or corrupt files are
rejected here, never in a training run. Images that are not 8-bit RGB are converted to RGB and
re-encoded: grayscale, CMYK, palette, with alpha (composited on white), 16-bit or of other
modes, each counted by kind; JPEG inputs are re-encoded as JPEG quality 95, everything else as
PNG. RGB files in other formats than JPEG and PNG (BMP, GIF, TIFF, WebP, PPM) are re-encoded as PNG
(counted as ``format``). The build is parallel, the same bytes for any worker count, and
resumable (`images.build`).
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Any

from data_pipeline.images.build import (
    PART_SIZE,
    Rejection,
    TaskResult,
    build_shards,
    check_local_output,
)
from data_pipeline.images.listing import list_images
from data_pipeline.shards.manifest import DEFAULT_SIZE_LIMIT

__all__ = [
    "CONVERSIONS",
    "IMAGE_COLUMNS",
    "KIND",
    "ImageError",
    "convert_image",
    "prepare_images",
]

KIND = "image"
IMAGE_COLUMNS = {"image": "bytes", "label": "int", "path": "str"}
CONVERSIONS = ("grayscale", "cmyk", "palette", "alpha", "other_mode", "bit_depth", "format")
"""Conversion kinds counted in the manifest."""
JPEG_QUALITY = 95
_GRAY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageError(ValueError):
    """A file that is not a usable image; `reason` is the manifest's rejection reason."""

    def __init__(self, reason: str, what: str, detail: str) -> None:
        super().__init__(f"{what}: {reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _conversion(mode: str, fmt: str | None, info: dict[str, Any], data: bytes) -> str | None:
    if mode == "RGB":
        if fmt == "PNG" and data[24:25] == b"\x10":  # IHDR bit depth 16 (Pillow reads 8 bits)
            return "bit_depth"
        return None if fmt in ("JPEG", "PNG") else "format"
    if mode in _GRAY_MODES:
        return "grayscale"
    if mode == "CMYK":
        return "cmyk"
    if mode == "P":
        return "alpha" if "transparency" in info else "palette"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return "alpha"
    return "other_mode"


def convert_image(data: bytes, what: str) -> tuple[bytes, str | None, str]:
    """Fully decodes an encoded image and, when it is not a JPEG/PNG in 8-bit RGB, re-encodes
    it as RGB.

    Args:
        data: The file's bytes.
        what: The file's name, for messages.

    Returns:
        (bytes to store, conversion kind or None, the detected format).

    Raises:
        ImageError: Reason ``not_an_image`` or ``corrupt`` (truncated data included), naming
            `what`.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        raise ImageError("not_an_image", what, "not a known image format") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # a header cut short
        raise ImageError("corrupt", what, str(err) or type(err).__name__) from err
    fmt = image.format
    try:
        with image:
            image.load()  # decodes every pixel: truncated and corrupt data raise here
            conversion = _conversion(image.mode, fmt, image.info, data)
            if conversion is None:
                return data, None, fmt or "unknown"
            if conversion == "grayscale" and image.mode not in ("1", "L"):
                grey = np.asarray(image, dtype=np.float64)  # 16-bit or float: scale to 8 bits
                scale = 257.0 if image.mode.startswith("I;16") else max(grey.max(), 1.0) / 255
                image = Image.fromarray(np.clip(np.rint(grey / scale), 0, 255).astype(np.uint8))
            if conversion == "alpha":
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                rgb = Image.alpha_composite(white, rgba).convert("RGB")
            else:
                rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError("corrupt", what, str(err) or type(err).__name__) from err
    buffer = io.BytesIO()
    if fmt == "JPEG":
        rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        rgb.save(buffer, format="PNG")
    return buffer.getvalue(), conversion, fmt or "unknown"


def _image_task(task: tuple[str, str, int, str]) -> TaskResult:
    path, rel, label, _ = task  # the stamp only tells a resumed build what changed
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return TaskResult(rejection=Rejection(rel, "unreadable", str(err)))
    if not data:
        return TaskResult(rejection=Rejection(rel, "empty", "0 bytes"))
    try:
        stored, conversion, fmt = convert_image(data, rel)
    except ImageError as err:
        return TaskResult(rejection=Rejection(rel, err.reason, err.detail))
    counts = [f"class:{label}", f"format:{fmt}"]
    if conversion is not None:
        counts.append(f"conversion:{conversion}")
    return TaskResult(sample={"image": stored, "label": label, "path": rel}, counts=counts)


def _prefixed(counter: Counter[str], prefix: str) -> dict[str, int]:
    return {k.removeprefix(prefix): v for k, v in sorted(counter.items()) if k.startswith(prefix)}


def prepare_images(
    input_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    layout: str = "auto",
    val_labels: str | os.PathLike[str] | None = None,
    synsets: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.05,
    workers: int = 1,
    part_size: int = PART_SIZE,
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Builds image shards from a labelled image tree; what `perceiver data prepare-images` runs.

    Args:
        input_dir: The input root (see `images.listing` for the layouts).
        out_dir: The local output directory.
        layout: ``auto``, ``imagenet-train``, ``imagenet-val`` or ``folders``.
        val_labels: The val label file (``LOC_val_solution.csv`` or the devkit's
            ``ILSVRC2012_validation_ground_truth.txt``).
        synsets: Class order and names (``LOC_synset_mapping.txt`` style).
        val_fraction: Validation fraction of a single tree (ignored for ROOT/train + ROOT/val).
        workers: Decoding processes (spawned: scripts need the ``__main__`` guard); the output
            does not depend on it.
        part_size: Images per part (the unit of parallel work and resume).
        size_limit: Shard size limit before compression.
        overwrite: Replace existing shards (or discard an unfinished build with other
            settings).
        progress: Progress bar on stderr.

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: If the input or a given file does not exist.
        ValueError: For bad arguments or label files, or when no training image is left.
    """
    check_local_output(out_dir, "prepare-images")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    listing = list_images(
        input_dir, layout=layout, val_labels=val_labels, synsets=synsets, val_fraction=val_fraction
    )
    tasks = {
        split: [
            (item.path, item.rel, item.label, item.stamp)
            for item in listing.items
            if item.split == split
        ]
        for split in ("train", "val")
    }
    classes = listing.classes

    def describe(counts: dict[str, Counter[str]], rejections: list[dict[str, str]]) -> dict:
        everything: Counter[str] = Counter()
        for counter in counts.values():
            everything.update(counter)
        class_counts = {
            split: {classes[int(k)]: v for k, v in _prefixed(c, "class:").items()}
            for split, c in counts.items()
        }
        return {
            "source": "images",
            "layout": listing.layout,
            "labels": {
                "source": listing.labels_source,
                "val_labels": str(val_labels) if val_labels else None,
                "synsets": str(synsets) if synsets else None,
            },
            "classes": classes,
            "class_names": listing.class_names,
            "num_classes": len(classes),
            "class_counts": class_counts,
            "conversions": _prefixed(everything, "conversion:"),
            "formats": _prefixed(everything, "format:"),
            "files": {
                "images_found": listing.found,
                "labelled": len(listing.items),
                "ignored_non_image": len(listing.ignored),
                "ignored_examples": listing.ignored[:20],
            },
            "val_fraction": val_fraction,
            "split_rule": "ROOT/train and ROOT/val, else blake2b-64(relative path) / 2**64 < "
            "val_fraction",
            "input": str(input_dir),
        }

    return build_shards(
        out_dir,
        kind=KIND,
        command="prepare-images",
        columns=IMAGE_COLUMNS,
        tasks=tasks,
        fn=_image_task,
        settings={
            "input": os.path.abspath(input_dir),
            "layout": listing.layout,
            "classes": classes,
            "val_fraction": val_fraction,
            "jpeg_quality": JPEG_QUALITY,
        },
        describe=describe,
        workers=workers,
        part_size=part_size,
        size_limit=size_limit,
        overwrite=overwrite,
        progress=progress,
        pre_rejections=listing.rejections,
    )
