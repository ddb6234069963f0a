"""Shard directories in object storage: `s3://bucket/prefix` (and gs://, oci://, azure://, ...).

A shard directory is either a local path or a URL of a scheme mosaicml-streaming can read (and,
for `perceiver data prepare --output`, write). Every other `scheme://` is refused, as is a local
path that looks like a URL that lost a slash (`s3:/bucket`), so a URL never silently becomes a
local directory.

Writing (`publish`): the dataset is built complete in a local staging directory, then uploaded
with streaming's `CloudUploader`: shards first, then each split's `index.json`, then the
tokenizer model, and `manifest.json` last. A reader needs the manifest, so it never sees a
half-uploaded dataset; an interrupted upload is redone from the staging directory.

Reading: `read_manifest` and friends download single files with streaming's `CloudDownloader`;
training streams shards through `Stream(remote=..., local=<node-local cache>)`.

Credentials and endpoints come only from the environment each storage library reads: `AWS_*` and
`S3_ENDPOINT_URL` (MinIO, R2, Ceph, a local test server) for s3://, `GOOGLE_APPLICATION_CREDENTIALS`
or `GCS_KEY`/`GCS_SECRET` for gs://. Errors name the URL, never a credential.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from data_pipeline.files import atomic_write_bytes

__all__ = [
    "absolute",
    "check_location",
    "fetch",
    "is_url",
    "join",
    "local_mirror",
    "manifest_bytes",
    "publish",
    "read_bytes",
    "under",
    "writable_check",
]

MANIFEST_NAME = "manifest.json"
_MANGLED = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/[^/]")
_mirror_root: tempfile.TemporaryDirectory[str] | None = None


def _read_schemes() -> set[str]:
    from streaming.base.storage.download import DOWNLOADER_MAPPINGS

    return {s for s in DOWNLOADER_MAPPINGS if s and s != "dbfs-uc"}


def _write_schemes() -> set[str]:
    from streaming.base.storage.upload import UPLOADERS

    return {s for s in UPLOADERS if s and ":" not in s}


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a URL (`scheme://...`), not a local path."""
    return "://" in os.fspath(path)


def check_local_output(out_dir: str | os.PathLike[str], command: str) -> None:
    """Refuses an object-storage URL as output (before any input is listed or decoded).

    Raises:
        ValueError: Naming the URL and what to do instead.
    """
    if is_url(out_dir):
        raise ValueError(
            f"output: {command} writes a local directory, not {os.fspath(out_dir)}; build it "
            "locally, then upload it with manifest.json last (data_pipeline.shards.remote.publish)"
        )


def check_location(path: str | os.PathLike[str], *, write: bool = False, key: str = "") -> str:
    """Returns `path` as a string after refusing what streaming cannot read (or write).

    Args:
        path: A local path or a URL.
        write: The location will be written (`prepare --output`): the scheme needs an uploader.
        key: What names the location for the user (`--output`, `data.dir`), for messages.

    Raises:
        ValueError: For an unsupported scheme, a URL without bucket, or a mangled URL.
    """
    text = os.fspath(path)
    where = f"{key}: " if key else ""
    if not is_url(text):
        if _MANGLED.match(text):
            raise ValueError(
                f"{where}{text!r} looks like a URL missing a slash (write "
                f"{text.split(':', 1)[0]}://...); refusing to use it as a local path"
            )
        return text
    parsed = urlparse(text)
    schemes = _write_schemes() if write else _read_schemes()
    if parsed.scheme not in schemes:
        supported = ", ".join(f"{s}://" for s in sorted(schemes))
        verb = "written to" if write else "read from"
        raise ValueError(
            f"{where}unsupported URL {text!r}: shards can be {verb} local paths or {supported} "
            "(mosaicml-streaming's storage)"
        )
    if not parsed.netloc:
        raise ValueError(f"{where}{text!r} names no bucket ({parsed.scheme}://BUCKET/PREFIX)")
    return text.rstrip("/")


def absolute(path: str | os.PathLike[str], key: str = "") -> str:
    """A URL as it is (checked), a local path made absolute."""
    text = check_location(path, key=key)
    return text if is_url(text) else str(Path(text).absolute())


def under(root: str | os.PathLike[str], path: str) -> str:
    """`path` taken under `root` (a mixture dataset under `data.dir`): URLs and absolute paths
    stay as they are."""
    if is_url(path):
        return path
    return join(root, path) if is_url(root) else str(Path(root) / path)


def join(base: str | os.PathLike[str], *names: str) -> str:
    """`base/name/...` for a URL or a local path (never through `Path`, which eats `//`)."""
    text = os.fspath(base)
    if is_url(text):
        return "/".join([text.rstrip("/"), *names])
    return os.path.join(text, *names)


def _endpoint(url: str) -> str:
    endpoint = os.environ.get("S3_ENDPOINT_URL") if url.startswith("s3://") else None
    return f" (endpoint {endpoint})" if endpoint else ""


def _explain(err: BaseException, url: str, action: str) -> OSError:
    """A storage library's exception as an OSError naming the URL (and no credential)."""
    name = type(err).__name__
    code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
    where = _endpoint(url)
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"):
        return PermissionError(
            f"cannot {action} {url}: no credentials found; set them in the environment "
            "(s3://: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; gs://: "
            "GOOGLE_APPLICATION_CREDENTIALS, or GCS_KEY and GCS_SECRET)"
        )
    if code == "NoSuchBucket":
        return FileNotFoundError(
            f"cannot {action} {url}: bucket {urlparse(url).netloc!r} does not exist{where}"
        )
    if code in ("404", "NoSuchKey", "NotFound") or isinstance(err, FileNotFoundError):
        return FileNotFoundError(f"cannot {action} {url}: not found{where}")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return PermissionError(
            f"cannot {action} {url}: access denied ({code}){where}; check the credentials "
            "in the environment"
        )
    if "Connect" in name or "Timeout" in name or isinstance(err, ConnectionError | TimeoutError):
        return ConnectionError(f"cannot {action} {url}: storage unreachable{where}: {err}")
    return OSError(f"cannot {action} {url}: {name}: {err}")


def _uploader(url: str, local: str) -> Any:
    """Streaming's uploader for `url` (checks the bucket exists and credentials work)."""
    from streaming.base.storage import CloudUploader

    quiet = logging.getLogger("streaming.base.storage.upload")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warning that `local` is not empty: it is meant to hold data
    try:
        return CloudUploader.get((local, url), keep_local=True, exist_ok=True)
    except Exception as err:  # each storage library raises its own types
        explained = _explain(err, url, "open")
        if isinstance(explained, FileNotFoundError):  # head_bucket answers a bare 404
            explained = FileNotFoundError(
                f"bucket {urlparse(url).netloc!r} of {url} does not exist{_endpoint(url)}"
            )
        raise explained from err
    finally:
        quiet.setLevel(level)


def _download(url: str, dest: Path, timeout: float = 60.0) -> None:
    from streaming.base.storage import CloudDownloader

    dest.unlink(missing_ok=True)
    try:
        CloudDownloader.direct_download(url, str(dest), timeout)
    except Exception as err:
        explained = _explain(err, url, "read")
        if isinstance(explained, FileNotFoundError):
            with tempfile.TemporaryDirectory() as tmp:
                _uploader(url.rsplit("/", 1)[0], tmp)  # raises if the bucket is missing
        raise explained from err


def read_bytes(url: str) -> bytes:
    """Downloads one object.

    Raises:
        FileNotFoundError: If the bucket or object does not exist (the message says which).
        PermissionError: For missing or refused credentials.
        ConnectionError: If the endpoint cannot be reached.
    """
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "object"
        _download(url, dest)
        return dest.read_bytes()


def _mirror_dir(url: str) -> Path:
    global _mirror_root
    if _mirror_root is None:
        _mirror_root = tempfile.TemporaryDirectory(prefix="perceiver-remote-")
    digest = hashlib.blake2b(url.encode(), digest_size=8).hexdigest()
    return Path(_mirror_root.name) / digest


def manifest_bytes(url: str) -> bytes:
    """The `manifest.json` of the dataset at `url`, downloaded now.

    Raises:
        FileNotFoundError: If the bucket does not exist, or the prefix holds no manifest (not a
            dataset, or one whose upload has not finished).
        PermissionError, ConnectionError: As `read_bytes`.
    """
    try:
        return read_bytes(join(url, MANIFEST_NAME))
    except FileNotFoundError as err:
        if "bucket" in str(err):
            raise
        raise FileNotFoundError(
            f"{join(url, MANIFEST_NAME)} not found{_endpoint(url)}: {url} is not a complete shard "
            f"directory (build one with `perceiver data prepare --output {url}`)"
        ) from None


def fetch(data_dir: str | os.PathLike[str], name: str, *, fresh: bool = False) -> Path:
    """A local path of `data_dir/name`: the file itself, or a copy of the object downloaded into
    a temporary mirror (removed at exit) once per process, or again if `fresh`."""
    text = os.fspath(data_dir)
    if not is_url(text):
        return Path(text) / name
    dest = _mirror_dir(text.rstrip("/")) / name
    if fresh or not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        _download(join(text, name), tmp)
        tmp.replace(dest)
    return dest


def local_mirror(data_dir: str | os.PathLike[str], splits: tuple[str, ...] = ()) -> Path:
    """`data_dir` itself if local; for a URL a local mirror holding its manifest, the tokenizer
    model and each split's `index.json`, downloaded now (shards are fetched on demand)."""
    text = os.fspath(data_dir)
    if not is_url(text):
        return Path(text)
    root = _mirror_dir(text.rstrip("/"))
    root.mkdir(parents=True, exist_ok=True)
    raw = manifest_bytes(text)
    atomic_write_bytes(root / MANIFEST_NAME, raw)
    tokenizer = json.loads(raw).get("tokenizer", {})
    if tokenizer.get("name") == "spm":
        fetch(text, tokenizer.get("model_file", "tokenizer.model"), fresh=True)
    for split in splits:
        fetch(text, f"{split}/index.json", fresh=True)
    return root


def writable_check(url: str, *, overwrite: bool) -> None:
    """Refuses to publish onto `url` before any work: missing bucket or credentials, a complete
    dataset there (no remote overwrite), or objects that are not ours.

    Raises:
        FileExistsError: If `url` holds a manifest or foreign objects.
        FileNotFoundError, PermissionError, ConnectionError: As `read_bytes`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        uploader = _uploader(url, tmp)
        try:
            names = uploader.list_objects("") or []
        except Exception as err:
            raise _explain(err, url, "list") from err
    prefix = urlparse(url).path.strip("/")
    rel = [n[len(prefix) :].lstrip("/") if prefix else n for n in names]
    if MANIFEST_NAME in rel:
        raise FileExistsError(
            f"{url} already holds a complete dataset ({MANIFEST_NAME}); replacing one in object "
            "storage is not supported (readers may be streaming it): choose a new prefix, or "
            "delete the old one with your storage's tools first"
            + (" (--overwrite applies to local outputs only)" if overwrite else "")
        )
    foreign = [n for n in rel if n and not n.startswith(("train/", "val/", "tokenizer.model"))]
    if foreign:
        raise FileExistsError(
            f"{url} holds objects that are not shards ({', '.join(sorted(foreign)[:3])}, ...); "
            "refusing to write there: choose an empty prefix"
        )


def publish(local_dir: str | os.PathLike[str], url: str, *, threads: int = 8) -> None:
    """Uploads a complete local shard directory to `url`, `manifest.json` last.

    Raises:
        FileNotFoundError: If the local directory is not complete.
        OSError: If an upload fails after streaming's retries (naming the file).
    """
    root = Path(local_dir)
    if not (root / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"{root} is not a complete shard directory (no {MANIFEST_NAME})")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    indexes = [f for f in files if f.endswith("/index.json")]
    shards = [f for f in files if f not in indexes and f != MANIFEST_NAME]
    uploader = _uploader(url, str(root))

    def upload(name: str) -> None:
        try:
            uploader.upload_file(name)
        except Exception as err:
            raise _explain(err, join(url, name), "upload to") from err

    with cf.ThreadPoolExecutor(max(1, threads)) as pool:
        for batch in (shards, indexes):  # an index only once all its shards are there
            futures = [pool.submit(upload, name) for name in batch]
            try:
                for future in futures:
                    future.result()
            finally:
                for future in futures:  # fail fast: nothing more is started after an error
                    future.cancel()
    upload(MANIFEST_NAME)
