"""The shard contract: layout, the manifest (read, written, validated) and publishing a build.

Layout (the "Shards" contract of docs/design.md):

    DIR/manifest.json        what was built, from what, with which tokenizer; counts and sizes
    DIR/train/index.json     MDS index (zstd); text: column "tokens" (`manifest["columns"]`),
    DIR/train/shard.*.mds.zstd                    video: the columns of `video.shards`
    DIR/val/...

`manifest["kind"]` is "tokens" (absent in text manifests, written by `prepare.prepare`, the one
text writer), "video" (`video.shards.prepare_videos`), "image" (`images.prepare.prepare_images`)
or "flow" (`flow.shards.generate_flow`, `flow.readers.prepare_flow`; image and flow builds go
through `images.build.build_shards`). Every reader goes through
`read_manifest` and every check of shards against a model through `check_shards`, which
dispatches on the kind.

Crash safety: a build is written into a hidden sibling of `DIR` and renamed onto it
(`publish_dir`) only once both splits and the manifest are complete and flushed to disk
(`fsync_tree`). A crash leaves either the previous `DIR` or no `DIR`, never a half-written one;
`manifest.json` is the marker of a complete build.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.files import atomic_write_json
from data_pipeline.shards.packing import sample_len_for
from data_pipeline.shards.remote import check_location, fetch, is_url, join, manifest_bytes

__all__ = [
    "COMPRESSION",
    "DEFAULT_SIZE_LIMIT",
    "FORMAT_VERSION",
    "KINDS",
    "MANIFEST_NAME",
    "check_shards",
    "check_flow_manifest",
    "check_image_manifest",
    "check_target",
    "check_video_manifest",
    "dir_bytes",
    "fsync_tree",
    "is_complete",
    "iter_samples",
    "iter_stored_samples",
    "publish_dir",
    "read_manifest",
    "read_video_manifest",
    "tool_version",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
COMPRESSION = "zstd"
FORMAT_VERSION = 1
DEFAULT_SIZE_LIMIT = "64mb"
KINDS = {
    "tokens": "perceiver data prepare",
    "video": "perceiver data prepare-video",
    "image": "perceiver data prepare-images",
    "flow": "perceiver data prepare-flow (or generate-flow)",
}
"""Shard kinds (`manifest["kind"]`, "tokens" when absent) and the command that builds each."""


def tool_version() -> str:
    """The installed perceiver-pretrain version, for manifests."""
    try:
        return importlib_metadata.version("perceiver-pretrain")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown (not installed)"


def is_complete(data_dir: str | os.PathLike[str]) -> bool:
    """Whether the local `data_dir` holds a finished build (its manifest exists)."""
    return (Path(check_location(data_dir)) / MANIFEST_NAME).is_file()


def read_manifest(data_dir: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Reads `data_dir/manifest.json`.

    Args:
        data_dir: A shard directory, or the URL of one (`s3://...`).
        kind: The kind of shards required (`KINDS`); `None` takes any.

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: If there is no manifest (not a shard directory, or an unfinished one),
            or no such bucket.
        PermissionError, ConnectionError: For a URL without access (see `remote`).
        ValueError: If the manifest is not valid JSON, of an unknown format version, or not of
            `kind`.
    """
    data_dir = check_location(data_dir)
    path = join(data_dir, MANIFEST_NAME)
    if is_url(data_dir):
        text = manifest_bytes(data_dir).decode("utf-8")
    elif not Path(path).is_file():
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a complete shard directory "
            "(build one with `perceiver data prepare`)"
        )
    else:
        text = Path(path).read_text(encoding="utf-8")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    have = manifest.get("kind", "tokens")
    if kind is not None and have != kind:
        what = "text" if kind == "tokens" else kind
        raise ValueError(
            f"{data_dir}: not {what} shards (kind {have!r}); build them with `{KINDS[kind]}`"
        )
    return manifest


def write_manifest(build_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Writes `build_dir/manifest.json` atomically: the marker of a complete build."""
    return atomic_write_json(Path(build_dir) / MANIFEST_NAME, manifest)


def check_shards(
    data_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    kind: str | None = None,
    seq_len: int | None = None,
    max_seq_len: int | None = None,
    objective: str = "mlm",
    vocab_size: int | None = None,
    clip: Mapping[str, int] | None = None,
    num_classes: int | None = None,
    splits: Sequence[str] = (),
    model_key: str = "model",
) -> dict[str, Any]:
    """Checks that shard directories can be trained on together by a model; the one validator
    of the shard contract (the trainer calls it at start-up, before any worker starts).

    The datasets must be of one kind and agree with each other (text: one tokenizer and sample
    length; video: one clip geometry and class list); then the first is checked against the
    model, by kind. Only the facts given are checked.

    Args:
        data_dirs: A shard directory or URL, or several (a mixture).
        kind: The kind required (`KINDS`); `None` takes the first dataset's.
        seq_len: Text: samples must be exactly `sample_len_for(objective, seq_len)` long.
        max_seq_len: Text: the longest input the model takes; longer samples are refused (an
            AR sample may hold one token more, the last target).
        objective: `mlm` or `ar`.
        vocab_size: Text: the model's vocabulary size; refused if smaller than the tokenizer's.
        clip: Video: the model's `num_frames`, `height`, `width` and `samples_per_frame`.
        num_classes: Video, image: the model's classes; refused if the shards have more.
        splits: Splits that must hold samples.
        model_key: How the caller's config names the model section, for messages.

    Returns:
        The manifest of the first dataset.

    Raises:
        FileNotFoundError: If a directory is not a complete shard directory.
        ValueError: If the datasets disagree, or do not fit the model, naming both values.
    """
    if isinstance(data_dirs, (str, os.PathLike)):
        data_dirs = [data_dirs]
    if not data_dirs:
        raise ValueError("no datasets given")
    manifests = [(os.fspath(d), read_manifest(d, kind)) for d in data_dirs]
    first_dir, first = manifests[0]
    first_kind = first.get("kind", "tokens")
    for data_dir, manifest in manifests[1:]:
        if manifest.get("kind", "tokens") != first_kind:
            raise ValueError(
                f"{data_dir} holds {manifest.get('kind', 'tokens')} shards but {first_dir} "
                f"{first_kind} shards: a mixture needs one kind"
            )
    if first_kind in ("video", "image"):
        names = ("video", "audio", "classes") if first_kind == "video" else ("classes",)
        need = "clips needs one clip geometry and" if first_kind == "video" else "images needs"
        for data_dir, manifest in manifests[1:]:
            for name in names:
                if manifest[name] != first[name]:
                    raise ValueError(
                        f"{data_dir} has {name} {manifest[name]} but {first_dir} {first[name]}: "
                        f"a mixture of {need} one class list"
                    )
        if first_kind == "video":
            _check_video(first_dir, first, clip, num_classes)
        elif num_classes is not None and first["num_classes"] > num_classes:
            raise ValueError(
                f"{first_dir}: {first['num_classes']} classes, more than the model's "
                f"{model_key}.num_classes={num_classes}"
            )
    elif first_kind != "flow":
        _check_tokens(manifests, seq_len, max_seq_len, objective, vocab_size, model_key)
    for split in splits:
        if first["splits"][split]["samples"] == 0:
            what = {"video": "clips", "image": "images", "flow": "pairs"}.get(first_kind, "samples")
            raise ValueError(f"{join(first_dir, split)}: no {what}")
    return first


def _tokenizer_key(manifest: Mapping[str, Any]) -> tuple[Any, ...]:
    tok = manifest["tokenizer"]
    return (tok["name"], tok["vocab_size"], tok.get("model_sha256"))


def _check_tokens(
    manifests: Sequence[tuple[str, dict[str, Any]]],
    seq_len: int | None,
    max_seq_len: int | None,
    objective: str,
    vocab_size: int | None,
    model_key: str,
) -> None:
    first_dir, first = manifests[0]
    key = _tokenizer_key(first)
    for data_dir, manifest in manifests[1:]:
        if _tokenizer_key(manifest) != key:
            raise ValueError(
                f"{data_dir} was tokenized with {_tokenizer_key(manifest)} but {first_dir} with "
                f"{key}: a mixture needs one tokenizer"
            )
        if manifest["sample_len"] != first["sample_len"]:
            raise ValueError(
                f"{data_dir} holds samples of {manifest['sample_len']} tokens, {first_dir} of "
                f"{first['sample_len']}: a mixture needs one sample length"
            )
    if seq_len is not None and first["sample_len"] != sample_len_for(objective, seq_len):
        raise ValueError(
            f"{first_dir}: samples hold {first['sample_len']} tokens but {objective} with "
            f"seq_len={seq_len} needs {sample_len_for(objective, seq_len)}; re-run "
            f"`perceiver data prepare --seq-len {seq_len} --objective {objective}`"
        )
    if max_seq_len is not None:
        longest = sample_len_for(objective, max_seq_len)
        if first["sample_len"] > longest:
            raise ValueError(
                f"{first_dir}: samples hold {first['sample_len']} tokens, more than "
                f"{model_key}.max_seq_len={max_seq_len} allows for {objective} ({longest}); "
                f"re-run `perceiver data prepare --seq-len {max_seq_len}` or raise max_seq_len"
            )
    shard_vocab = first["tokenizer"]["vocab_size"]
    if vocab_size is not None and vocab_size < shard_vocab:
        raise ValueError(
            f"{model_key}.vocab_size={vocab_size} is smaller than the vocabulary of the shards in "
            f"{first_dir} (tokenizer {first['tokenizer']['name']!r}, {shard_vocab} ids): set "
            f"{model_key}.vocab_size={shard_vocab}"
        )


def _check_video(
    data_dir: str,
    manifest: Mapping[str, Any],
    clip: Mapping[str, int] | None,
    num_classes: int | None,
) -> None:
    video, audio = manifest["video"], manifest["audio"]
    have = {
        "num_frames": video["num_frames"],
        "height": video["height"],
        "width": video["width"],
        "samples_per_frame": audio["samples_per_frame"],
    }
    for key, value in (clip or {}).items():
        if have[key] != value:
            raise ValueError(
                f"{data_dir}: clips have {key}={have[key]} but the model needs {value}; re-run "
                "`perceiver data prepare-video` with matching --num-frames/--size/--fps/"
                "--sample-rate, or change the model"
            )
    if num_classes is not None and manifest["num_classes"] > num_classes:
        raise ValueError(
            f"{data_dir}: {manifest['num_classes']} classes, more than the model's "
            f"num_classes={num_classes}"
        )


def read_video_manifest(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a video shard directory (`read_manifest(data_dir, "video")`)."""
    return read_manifest(data_dir, "video")


def check_video_manifest(
    data_dir: str | os.PathLike[str],
    *,
    num_frames: int,
    height: int,
    width: int,
    samples_per_frame: int,
    num_classes: int,
    splits: Sequence[str] = ("train",),
) -> dict[str, Any]:
    """`check_shards` of one video directory against a model's input geometry and classes."""
    clip = {
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "samples_per_frame": samples_per_frame,
    }
    return check_shards(data_dir, kind="video", clip=clip, num_classes=num_classes, splits=splits)


def check_image_manifest(
    data_dir: str | os.PathLike[str],
    num_classes: int | None = None,
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`check_shards` of one image directory (kind "image") against a model's classes.

    Args:
        data_dir: The shard directory or its URL.
        num_classes: The model's classes; refused if the shards have more.
        splits: Splits that must hold images (default: train).
    """
    splits = ("train",) if splits is None else splits
    return check_shards(data_dir, kind="image", num_classes=num_classes, splits=splits)


def check_flow_manifest(
    data_dir: str | os.PathLike[str], splits: Sequence[str] | None = None
) -> dict[str, Any]:
    """`check_shards` of one flow directory (kind "flow"); `splits` must hold pairs (train)."""
    splits = ("train",) if splits is None else splits
    return check_shards(data_dir, kind="flow", splits=splits)


def iter_stored_samples(
    data_dir: str | os.PathLike[str], split: str, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Reads the samples (all columns) of one split in storage order, in memory, without
    touching the files.

    (`StreamingDataset` reading a local directory writes decompressed shard copies next to the
    compressed ones; this reader does not, so it is safe on read-only or shared directories.)

    Args:
        data_dir: A shard directory (text or video), or its URL (the shards read are
            downloaded once into a temporary mirror, `remote.fetch`).
        split: `"train"` or `"val"`.
        limit: Stop after this many samples.

    Yields:
        Samples as stored, one dict of columns each.
    """
    from streaming.base.compression import decompress
    from streaming.base.format import reader_from_json

    index = json.loads(fetch(data_dir, f"{split}/index.json").read_text(encoding="utf-8"))
    count = 0
    for info in index["shards"]:
        if limit is not None and count >= limit:
            return
        reader = reader_from_json(os.fspath(data_dir), split, info)
        zip_info = info.get("zip_data")
        if zip_info:
            stored = fetch(data_dir, f"{split}/{zip_info['basename']}").read_bytes()
            raw = decompress(info["compression"], stored)
        else:
            raw = fetch(data_dir, f"{split}/{info['raw_data']['basename']}").read_bytes()
        # MDS layout: uint32 sample count, uint32 offsets[count + 1], then the samples.
        offsets = np.frombuffer(raw, np.uint32, count=info["samples"] + 1, offset=4)
        for begin, end in zip(offsets[:-1], offsets[1:]):
            if limit is not None and count >= limit:
                return
            yield reader.decode_sample(raw[begin:end])
            count += 1


def iter_samples(
    data_dir: str | os.PathLike[str], split: str, limit: int | None = None
) -> Iterator[np.ndarray]:
    """The token arrays of one split in storage order (see `iter_stored_samples`).

    Yields:
        Arrays of `sample_len` ids.
    """
    for sample in iter_stored_samples(data_dir, split, limit):
        yield sample["tokens"]


def dir_bytes(path: Path) -> int:
    """Bytes of the files under `path` (a split's size on disk, for the manifest)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def fsync_tree(path: Path) -> None:
    """Flushes every file and directory under `path` to disk (so the rename publishes data)."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    """Flushes a directory's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_target(out: Path, overwrite: bool) -> None:
    """Refuses to replace complete shards without `overwrite`, or anything that is not shards.

    Raises:
        FileExistsError: Naming `out` and what to do.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if is_complete(out):
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds complete shards ({MANIFEST_NAME}); pass overwrite=True "
                "(--overwrite) to replace them"
            )
    elif any(out.iterdir()):  # never delete what we did not write, even with overwrite
        raise FileExistsError(
            f"{out} exists, is not empty and is not a shard directory (no {MANIFEST_NAME}); "
            "refusing to replace it: choose another output or delete it yourself"
        )


def publish_dir(tmp: Path, out: Path) -> None:
    """Renames the finished `tmp` onto `out`; an old `out` is moved aside first, then deleted."""
    old: Path | None = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        else:
            out.rmdir()
    os.rename(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
