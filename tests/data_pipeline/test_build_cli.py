"""The pieces the shard-building subcommands share (`data_pipeline.build_cli`)."""

from __future__ import annotations

import argparse

import pytest

from data_pipeline.build_cli import (
    SHOWN_REJECTIONS,
    add_output_arguments,
    build_options,
    building,
    print_rejections,
)
from data_pipeline.shards.manifest import DEFAULT_SIZE_LIMIT


def test_output_arguments_and_build_options():
    parser = argparse.ArgumentParser()
    storage = parser.add_argument_group("storage")
    add_output_arguments(parser, storage=storage)
    assert [a.dest for a in storage._group_actions] == ["size_limit", "overwrite", "no_progress"]
    args = parser.parse_args(["--output", "out"])
    assert args.output == "out"
    assert build_options(args) == dict(
        workers=1, size_limit=DEFAULT_SIZE_LIMIT, overwrite=False, progress=True
    )
    args = parser.parse_args(
        ["--output", "o", "--workers", "3", "--size-limit", "1mb", "--overwrite", "--no-progress"]
    )
    assert build_options(args) == dict(workers=3, size_limit="1mb", overwrite=True, progress=False)
    with pytest.raises(SystemExit):  # --output is required
        parser.parse_args([])


def test_building_turns_refusals_into_the_command_error():
    for err in (ValueError("output: not s3://b/x"), FileNotFoundError("in"), FileExistsError("o")):
        with pytest.raises(SystemExit) as exit_info, building("prepare-flow"):
            raise err
        assert exit_info.value.code == f"perceiver data prepare-flow: error: {err}"
    with pytest.raises(KeyError), building("prepare-flow"):  # a bug is not a refusal
        raise KeyError("x")


def test_print_rejections(capsys):
    rejected = [
        {"path": f"v{i}.mp4", "reason": "decode", "detail": "eof", "clip": i % 2 or None}
        for i in range(SHOWN_REJECTIONS + 1)
    ]
    print_rejections("out", rejected, count=SHOWN_REJECTIONS + 5)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "  rejected: v0.mp4: decode: eof",
        "  rejected: v1.mp4 (clip 1): decode: eof",
    ]
    assert len(lines) == SHOWN_REJECTIONS + 1
    assert lines[-1] == "  ... 5 more in out/manifest.json"
    print_rejections("out", [{"path": "a.png", "reason": "corrupt", "detail": "x"}], count=1)
    assert capsys.readouterr().out == "  rejected: a.png: corrupt: x\n"
