"""`perceiver data prepare|inspect` through the same functions the console script calls."""

import argparse
import json

import pytest

from data_pipeline.cli import add_data_subcommands, main, run_prepare
from data_pipeline.inspection import inspect_shards, run_inspect
from data_pipeline.shards.manifest import read_manifest


def test_subcommands_register_funcs():
    parser = argparse.ArgumentParser(prog="perceiver")
    data = parser.add_subparsers(dest="command").add_parser("data")  # as pretrain/cli.py does
    add_data_subcommands(data.add_subparsers(dest="data_command", required=True))
    args = parser.parse_args(["data", "inspect", "some/dir", "--samples", "1"])
    assert args.func is run_inspect and args.data_dir == "some/dir" and args.samples == 1
    args = parser.parse_args(
        [
            "data",
            "prepare",
            "--source",
            "jsonl",
            "--input",
            "a.jsonl",
            "b/",
            "--output",
            "o",
            "--seq-len",
            "128",
            "--objective",
            "ar",
            "--overwrite",
        ]
    )
    assert args.func is run_prepare and args.inputs == ["a.jsonl", "b/"] and args.overwrite
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "prepare", "--source", "wiki", "--output", "o"])


def test_prepare_demo_then_inspect(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "data",
        "prepare",
        "--source",
        "demo",
        "--output",
        str(out),
        "--seq-len",
        "63",
        "--objective",
        "ar",
        "--max-bytes",
        "20000",
        "--val-fraction",
        "0.5",
    ]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest["sample_len"] == 64
    assert manifest["metadata"] == {
        "objective": "ar",
        "seq_len": 63,
        "source": "demo",
        "inputs": [],
        "max_bytes": 20000,
    }
    assert manifest["val_fraction"] == 0.5

    with pytest.raises(SystemExit, match="already holds complete shards"):
        main(argv)
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()

    assert main(["data", "inspect", str(out), "--samples", "2", "--chars", "40"]) == 0
    text = capsys.readouterr().out
    assert "samples of 64 tokens" in text and "train sample 1" in text
    assert f"{manifest['splits']['train']['samples']:,} samples" in text

    assert main(["data", "inspect", str(out), "--json", "--samples", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["consistent_with_manifest"]
    assert summary["splits"]["train"]["samples"] == manifest["splits"]["train"]["samples"]
    assert summary["splits"]["train"]["compression_ratio"] > 1
    assert len(summary["samples"]) == 1 and len(summary["samples"][0]) <= 300


def test_inspect_shows_decoded_text(demo_shards):
    summary = inspect_shards(demo_shards, num_samples=3, max_chars=64)
    assert len(summary["samples"]) == 3
    assert all(len(s) <= 64 for s in summary["samples"])
    assert summary["samples"][0].isprintable() or "\n" in summary["samples"][0]
    assert summary["objective"] == "mlm" and summary["sample_len"] == 64


def test_prepare_jsonl_counts_broken_lines(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    good = [json.dumps({"body": f"document number {i} " * 8}) for i in range(20)]
    data.write_text("\n".join([*good[:10], "{oops", json.dumps({"text": 1}), *good[10:]]) + "\n")
    out = tmp_path / "out"
    argv = [
        "data",
        "prepare",
        "--source",
        "jsonl",
        "--input",
        str(data),
        "--output",
        str(out),
        "--seq-len",
        "32",
        "--objective",
        "mlm",
        "--text-field",
        "body",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "rejected 2" in printed and f"{data}:11: invalid JSON" in printed
    docs = read_manifest(out)["documents"]
    assert docs["kept"] == 20
    assert docs["rejected_by_reason"] == {"invalid_json": 1, "missing_field": 1}


def test_cli_errors_are_clean(tmp_path):
    with pytest.raises(SystemExit, match="drop --input"):
        main(
            [
                "data",
                "prepare",
                "--source",
                "demo",
                "--input",
                "x",
                "--output",
                str(tmp_path / "o"),
                "--seq-len",
                "8",
                "--objective",
                "mlm",
            ]
        )
    with pytest.raises(SystemExit, match="input not found"):
        main(
            [
                "data",
                "prepare",
                "--source",
                "text",
                "--input",
                str(tmp_path / "missing.txt"),
                "--output",
                str(tmp_path / "o"),
                "--seq-len",
                "8",
                "--objective",
                "mlm",
            ]
        )
    with pytest.raises(SystemExit, match="not a complete shard directory"):
        main(["data", "inspect", str(tmp_path)])
    assert not (tmp_path / "o").exists()


@pytest.mark.shared_data
def test_prepare_real_c4_sample(tmp_path, shared_data):
    out = tmp_path / "c4"
    argv = [
        "data",
        "prepare",
        "--source",
        "jsonl",
        "--input",
        str(shared_data / "c4"),
        "--output",
        str(out),
        "--seq-len",
        "256",
        "--objective",
        "mlm",
        "--val-fraction",
        "0.2",
    ]
    assert main(argv) == 0
    manifest = read_manifest(out)
    assert manifest["documents"]["kept"] == 30 and manifest["documents"]["rejected"] == 0
    assert manifest["splits"]["train"]["samples"] > 100
    assert inspect_shards(out)["consistent_with_manifest"]


def test_prepare_wikipedia_with_workers_then_inspect(tmp_path, capsys):
    from tests.data_pipeline.corpora import write_dump

    dump = write_dump(tmp_path / "enwiki-20240101-pages-articles.xml.bz2")
    out = tmp_path / "wiki"
    argv = ["data", "prepare", "--source", "wikipedia", "--input", str(dump), "--output",
            str(out), "--seq-len", "32", "--workers", "2", "--chunk-mb", "0.0005",
            "--val-fraction", "0.3", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "redirect: 1" in printed and "non_article: 2" in printed
    manifest = read_manifest(out)
    assert manifest["workers"] == 2 and len(manifest["parts"]) > 1
    assert manifest["metadata"]["source"] == "wikipedia"
    assert main(["data", "inspect", str(out), "--samples", "1"]) == 0
    text = capsys.readouterr().out
    assert "inputs: 1 files" in text and "e.g. redirect:" in text and "'Glimmer River'" in text


def test_prepare_strict_reports_file_and_line(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"text": "fine " * 20}) + "\n{oops\n")
    argv = ["data", "prepare", "--source", "jsonl", "--input", str(data), "--output",
            str(tmp_path / "out"), "--seq-len", "8", "--strict"]  # fmt: skip
    with pytest.raises(SystemExit, match=rf"{data}:2: invalid JSON.*--strict"):
        main(argv)
    assert not (tmp_path / "out").exists()


def test_inspect_names_an_empty_split(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": f"document {i} " * 8}) + "\n" for i in range(9)))
    out = tmp_path / "out"
    argv = ["data", "prepare", "--source", "jsonl", "--input", str(data), "--output", str(out),
            "--seq-len", "32", "--val-fraction", "0"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--samples", "0"]) == 0
    text = capsys.readouterr().out
    assert "val  : 0 samples, 0 shards (empty)" in text and "None" not in text
    assert inspect_shards(out)["splits"]["val"]["compression_ratio"] is None


def test_inspect_video_shards(tmp_path, capsys):
    from data_pipeline.video.decode import ClipSpec
    from data_pipeline.video.shards import prepare_videos
    from tests.data_pipeline.test_video import write_clip

    for cls, seed in (("archery", 0), ("zumba", 50)):
        for i in range(2):
            audio = None if cls == "zumba" else ("aac", 44_100, "stereo")
            write_clip(
                tmp_path / "in" / cls / f"v{i}.mp4", num_frames=8, seed=seed + i, audio=audio
            )
    (tmp_path / "in" / "zumba" / "broken.mp4").write_bytes(b"not a video" * 50)
    out = tmp_path / "shards"
    spec = ClipSpec(num_frames=4, height=16, width=24)
    manifest = prepare_videos(tmp_path / "in", out, spec, val_fraction=0.0, progress=False)

    assert main(["data", "inspect", str(out), "--samples", "2"]) == 0
    text = capsys.readouterr().out
    assert "clips of 4 frames at 25 fps (0.16 s), 16x24 RGB (jpeg q90)" in text
    assert "audio 7680 samples at 48000 Hz" in text
    assert "2 classes (labels from folders): archery, zumba" in text
    assert "clips: read 5, kept 4 (2 without audio), rejected 1 (corrupt: 1)" in text
    assert "e.g. zumba/broken.mp4: corrupt: cannot open" in text
    assert "train: 4 clips, 1 shards" in text and "2 classes, 2 to 2 clips each" in text
    assert "val  : 0 clips, 0 shards (empty)" in text and "None" not in text
    assert "train clip 1: archery: archery/v1.mp4 clip 0 from 0 s" in text

    assert main(["data", "inspect", str(out), "--json", "--samples", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "video" and summary["consistent_with_manifest"]
    assert summary["splits"]["train"]["samples"] == manifest["splits"]["train"]["samples"] == 4
    assert summary["video"]["num_frames"] == 4 and summary["classes"] == ["archery", "zumba"]
    assert summary["class_counts"]["train"] == {"archery": 2, "zumba": 2}
    assert summary["samples"] == [
        {"path": "archery/v0.mp4", "clip": 0, "start_s": 0.0, "label": "archery", "has_audio": True}
    ]
