"""Shards in object storage, against a real S3 endpoint on 127.0.0.1 (moto's server): prepare to
s3://, inspect, stream (alone and mixed with a local dataset), and the errors users meet."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from data_pipeline.cli import main
from data_pipeline.inspection import inspect_shards
from data_pipeline.shards.manifest import read_manifest
from tests.conftest import S3Server


def _prepare(out: str | Path, staging: Path | None = None, *extra: str) -> None:
    argv = ["data", "prepare", "--source", "demo", "--output", str(out), "--seq-len", "64"]
    argv += ["--max-bytes", "60000", "--val-fraction", "0.3", "--size-limit", "4kb", *extra]
    if staging is not None:
        argv += ["--staging-dir", str(staging)]
    assert main(argv) == 0


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def local_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "demo"
    _prepare(out)
    return out


@pytest.fixture(scope="module")
def s3_demo(s3_server: S3Server, tmp_path_factory) -> str:
    url = s3_server.bucket("corpora") + "/demo"
    staging, cwd = tmp_path_factory.mktemp("staging"), tmp_path_factory.mktemp("cwd")
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        _prepare(url, staging)
    finally:
        os.chdir(previous)
    assert not any(staging.iterdir())  # the staging copy is deleted once uploaded
    assert not any(cwd.iterdir())  # and no local `s3:/corpora/demo` was written
    return url


def test_prepare_to_s3_uploads_the_bytes_of_a_local_conversion(s3_server, s3_demo, local_demo):
    remote, local = s3_server.objects(s3_demo), _local_files(local_demo)
    assert set(remote) == set(local) and len(remote) > 6  # several shards per split
    differ = [name for name in local if remote[name] != local[name]]
    assert differ == ["manifest.json"]  # creation time and wall time only
    a, b = read_manifest(s3_demo), read_manifest(local_demo)
    for manifest in (a, b):  # times differ
        for key in ("created_utc", "wall_time_s", "throughput"):
            manifest.pop(key)
        for part in manifest["parts"]:
            part.pop("wall_time_s")
    assert a == b


def test_inspect_a_url_equals_inspect_of_the_local_copy(s3_demo, local_demo, capsys):
    remote, local = inspect_shards(s3_demo, 2), inspect_shards(local_demo, 2)
    assert remote["data_dir"] == s3_demo and remote["consistent_with_manifest"]
    for key in ("splits", "samples", "documents", "tokens", "tokenizer"):
        assert remote[key] == local[key]
    assert main(["data", "inspect", s3_demo + "/", "--samples", "1"]) == 0
    assert s3_demo in capsys.readouterr().out


def test_streaming_from_s3_yields_the_batches_of_the_local_directory(s3_demo, local_demo, tmp_path):
    from data_pipeline.loading.dataset import build_dataloader

    def batches(data_dir, cache):
        loader = build_dataloader(data_dir, "train", 4, seed=3, cache_root=cache, cache_limit="1mb")
        return [b["tokens"].tolist() for b in loader]

    remote = batches(s3_demo, tmp_path / "cache_s3")
    assert remote == batches(local_demo, tmp_path / "cache_local") and len(remote) > 5
    cached = list((tmp_path / "cache_s3").rglob("shard.*"))
    assert cached and not (tmp_path / "s3:").exists()
    # A cache smaller than the split (val: 21 shards): shards are evicted, batches stay the same.
    index_file = local_demo / "val" / "index.json"
    sizes = [s["raw_data"]["bytes"] + s["zip_data"]["bytes"] for s in json.loads(
        index_file.read_text())["shards"]]  # fmt: skip
    # Above streaming's minimum (4 shards + the index): one full run hung in this test, and a
    # limit at the minimum is the suspect (streaming's eviction can wait on shards its own
    # prefetch holds, mosaicml/streaming#417).
    limit = 6 * max(sizes) + index_file.stat().st_size + 1
    assert limit < sum(sizes) / 2
    expected = [b["tokens"].tolist() for b in build_dataloader(local_demo, "val", 4, seed=3)]
    small = tmp_path / "small"
    loader = build_dataloader(s3_demo, "val", 4, seed=3, cache_root=small, cache_limit=limit)
    assert [b["tokens"].tolist() for b in loader] == expected
    used = sum(p.stat().st_size for p in small.rglob("*") if p.is_file())
    assert 0 < used <= limit
    with pytest.raises(ValueError, match="node-local cache"):
        build_dataloader(s3_demo, "train", 4)


def test_mixture_of_an_s3_and_a_local_dataset_resumes_exactly(
    s3_demo, local_demo, numbered, tmp_path
):
    """Mixed remote + local sources give the batches of the same mixture read locally, and a
    loader resumed from a mid-epoch state continues with exactly the remaining batches."""
    from data_pipeline.loading.mixtures import (
        MixtureSource,
        build_mixture_dataloader,
    )
    from data_pipeline.shards.manifest import check_shards

    with pytest.raises(ValueError, match="one sample length"):
        check_shards([s3_demo, numbered.root])

    other = tmp_path / "other"  # a second local dataset (a mixture reads each one once)
    shutil.copytree(local_demo, other)

    def loader(first: str | Path, cache: str):
        sources = [MixtureSource("demo", str(first), 0.7), MixtureSource("other", other, 0.3)]
        return build_mixture_dataloader(sources, "train", 4, seed=5, cache_root=tmp_path / cache)

    def take(dl):
        return [b["tokens"].tolist() for b in dl]

    full = take(loader(s3_demo, "a"))
    assert full == take(loader(local_demo, "b")) and len(full) > 5
    first = loader(s3_demo, "c")
    seen = []
    for batch in first:
        seen.append(batch["tokens"].tolist())
        if len(seen) == 3:
            state = first.state_dict()
            break
    resumed = loader(s3_demo, "d")
    resumed.load_state_dict(state)
    assert seen + take(resumed) == full


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("http://example.com/x", "unsupported URL 'http://example.com/x'"),
        ("ftp://host/x", "unsupported URL"),
        ("s3:/corpora/c4", "looks like a URL missing a slash"),
        ("s3:///c4", "names no bucket"),
    ],
)
def test_unsupported_outputs_are_refused_and_nothing_is_written(
    output, message, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        _prepare(output, tmp_path / "staging")
    assert list(tmp_path.iterdir()) == []


def test_prepare_video_refuses_a_url_output(tmp_path):
    argv = ["data", "prepare-video", "--input", str(tmp_path), "--output", "s3://bucket/clips"]
    with pytest.raises(SystemExit, match="prepare-video writes a local directory, not s3://"):
        main(argv)
    with pytest.raises(SystemExit, match="looks like a URL missing a slash"):
        main([*argv[:-1], "s3:/bucket/clips"])


@pytest.mark.parametrize("data_dir", ["http://example.com/x", "s3:/corpora/c4", "nfs://a/b"])
def test_unsupported_data_dirs_are_refused_by_inspect_and_config(data_dir):
    from pretrain.config import ConfigError, DataConfig

    with pytest.raises(SystemExit, match="unsupported URL|missing a slash"):
        main(["data", "inspect", data_dir])
    with pytest.raises(ConfigError, match="data.dir: .*(unsupported URL|missing a slash)"):
        DataConfig(dir=data_dir).validate()


def test_storage_errors_name_the_url_and_never_a_credential(s3_server, s3_demo, tmp_path):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    bucket = s3_server.bucket("errors")
    cases = [
        (["data", "inspect", "s3://no-such-bucket/x"], "bucket 'no-such-bucket'.*does not exist"),
        (["data", "inspect", bucket + "/empty"], "errors/empty/manifest.json not found"),
        (["data", "inspect", bucket], "errors/manifest.json not found"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message) as err:
            main(argv)
        assert s3_server.endpoint in str(err.value) and secret not in str(err.value)
    with pytest.raises(SystemExit, match="bucket 'no-such-bucket'.*does not exist"):
        _prepare("s3://no-such-bucket/demo", tmp_path)
    with pytest.raises(SystemExit, match="already holds a complete dataset"):
        _prepare(s3_demo, tmp_path)
    s3_server.client().put_object(Bucket="errors", Key="notes/readme.txt", Body=b"x")
    with pytest.raises(SystemExit, match="holds objects that are not shards"):
        _prepare(bucket + "/notes", tmp_path)


def test_missing_credentials_are_named(s3_server, monkeypatch, tmp_path):
    s3_server.bucket("private")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit, match="no credentials found; .*AWS_ACCESS_KEY_ID"):
        _prepare("s3://private/demo", tmp_path)


def test_an_interrupted_upload_is_invisible_and_resumed(s3_server, tmp_path, monkeypatch):
    """An upload that fails leaves no manifest, so readers refuse the prefix; re-running the same
    command uploads the finished conversion kept in the staging directory (not converted again).
    """
    url = s3_server.bucket("resume") + "/demo"
    staging = tmp_path / "staging"
    monkeypatch.setenv("S3_CANNED_ACL", "no-such-acl")  # sent by streaming; the server refuses
    with pytest.raises(SystemExit, match="cannot upload to s3://resume/demo/"):
        _prepare(url, staging)
    monkeypatch.delenv("S3_CANNED_ACL")
    assert "manifest.json" not in s3_server.objects(url)
    with pytest.raises(SystemExit, match="resume/demo/manifest.json not found.*not a complete"):
        main(["data", "inspect", url])
    (converted,) = staging.iterdir()
    manifest = (converted / "manifest.json").read_bytes()
    _prepare(url, staging)
    assert s3_server.objects(url)["manifest.json"] == manifest
    assert not any(staging.iterdir())


def test_a_shard_lost_mid_epoch_fails_the_epoch_naming_it(s3_server, tmp_path):
    """streaming 0.13 alone would end the epoch early without a word once a download fails."""
    from data_pipeline.loading.dataset import ShardFetchError, build_dataloader

    url = s3_server.bucket("lossy") + "/demo"
    _prepare(url, tmp_path / "staging")
    key = "demo/train/00000/shard.00002.mds.zstd"
    s3_server.client().delete_object(Bucket="lossy", Key=key)
    loader = build_dataloader(
        url, "train", 4, shuffle=False, cache_root=tmp_path / "cache", download_retry=1
    )
    with pytest.raises(ShardFetchError, match=f"s3://lossy/{key} not found"):
        for _ in loader:
            pass


def test_an_unreachable_endpoint_is_named(s3_demo, monkeypatch):
    from tests.conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    with pytest.raises(SystemExit, match=f"storage unreachable \\(endpoint {endpoint}\\)"):
        main(["data", "inspect", s3_demo])


def test_export_finds_the_tokenizer_of_a_run_whose_data_was_remote(s3_demo, local_demo):
    from pretrain.export import run_tokenizer

    expected = read_manifest(local_demo)["tokenizer"]  # no model section: no byte fallback
    assert run_tokenizer({"data": {"dir": s3_demo}}) == expected
    bucket, name = s3_demo.rsplit("/", 1)
    mixture = {"dir": bucket, "mixture": [{"name": "demo", "dir": name, "proportion": 1.0}]}
    assert run_tokenizer({"data": mixture}) == expected
