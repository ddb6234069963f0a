"""Labelled images -> image shards: layouts, conversions, rejections, workers, resume, inspect.

Every tree is written here with Pillow (tiny images: 8 to 20 pixels a side).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.cli import main
from data_pipeline.images.listing import list_images, read_synsets
from data_pipeline.images.prepare import convert_image, prepare_images
from data_pipeline.shards.manifest import check_image_manifest, iter_stored_samples

SYNSETS = ["n01440764", "n01443537", "n01484850"]
NAMES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark"]


def _rgb(seed: int, size: tuple[int, int] = (12, 16)) -> np.ndarray:
    h, w = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, 3)
    ramp = np.linspace(0, 50, w, dtype=np.int64)[None, :, None]
    return (np.broadcast_to(base, (h, w, 3)) + ramp).astype(np.uint8)


def _save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path, **kwargs)
    return path


def _write_train_tree(root: Path) -> None:
    """Three synset folders: good JPEGs and PNGs, grayscale, CMYK JPEG, palette and RGBA PNGs,
    a truncated JPEG, a text file named .JPEG, a README and an empty file."""
    for c, synset in enumerate(SYNSETS):
        for i in range(3):
            _save(root / synset / f"{synset}_{i}.JPEG", _rgb(10 * c + i), quality=90)
    _save(root / SYNSETS[0] / "grey.JPEG", _rgb(1)[..., 0])
    _save(root / SYNSETS[0] / "cmyk.JPEG", _rgb(2), mode="CMYK", quality=95)
    _save(root / SYNSETS[1] / "palette.png", _rgb(3), mode="P")
    _save(root / SYNSETS[1] / "alpha.png", np.dstack([_rgb(4), np.full((12, 16), 128, np.uint8)]))
    _save(root / SYNSETS[2] / "plain.png", _rgb(5, (20, 9)))
    good = _save(root / SYNSETS[2] / "cut_source.JPEG", _rgb(6), quality=90).read_bytes()
    (root / SYNSETS[2] / "cut_source.JPEG").unlink()
    (root / SYNSETS[2] / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (root / SYNSETS[2] / "fake.JPEG").write_text("this is not an image")
    (root / SYNSETS[2] / "empty.png").write_bytes(b"")
    (root / SYNSETS[0] / "README.txt").write_text("notes")


@pytest.fixture(scope="module")
def train_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet") / "train"
    _write_train_tree(root)
    return root


def test_convert_image_keeps_rgb_bytes_and_converts_the_rest(tmp_path):
    jpeg = _save(tmp_path / "a.jpg", _rgb(0), quality=90).read_bytes()
    assert convert_image(jpeg, "a.jpg") == (jpeg, None, "JPEG")
    for name, array, mode, kind, fmt in [
        ("g.jpg", _rgb(1)[..., 0], None, "grayscale", "JPEG"),
        ("c.jpg", _rgb(2), "CMYK", "cmyk", "JPEG"),
        ("p.png", _rgb(3), "P", "palette", "PNG"),
        ("a.png", np.dstack([_rgb(4), np.zeros((12, 16), np.uint8)]), None, "alpha", "PNG"),
        ("b.bmp", _rgb(5), None, "format", "BMP"),
    ]:
        stored, conversion, detected = convert_image(_save(tmp_path / name, array, mode)
                                                     .read_bytes(), name)  # fmt: skip
        assert (conversion, detected) == (kind, fmt), name
        image = Image.open(io.BytesIO(stored))
        assert image.mode == "RGB" and image.size == (16, 12)
        assert image.format == ("JPEG" if fmt == "JPEG" else "PNG")
    # a 16-bit RGB PNG (written by the KITTI flow writer) becomes 8-bit, high bytes kept
    from data_pipeline.flow.formats import write_kitti_flow

    sixteen = write_kitti_flow(tmp_path / "16.png", np.full((4, 5, 2), 2.0, np.float32))
    stored, conversion, fmt = convert_image(sixteen.read_bytes(), "16.png")
    assert (conversion, fmt) == ("bit_depth", "PNG")
    assert np.asarray(Image.open(io.BytesIO(stored)))[0, 0].tolist() == [
        (2 * 64 + 32768) >> 8, (2 * 64 + 32768) >> 8, 0
    ]  # fmt: skip
    from data_pipeline.loading.collators import decode_rgb

    assert str(decode_rgb(sixteen.read_bytes()).dtype) == "torch.uint8"
    assert decode_rgb(sixteen.read_bytes())[:, 0, 0].tolist() == [128, 128, 0]
    # fully transparent pixels become white; CMYK comes back close to the original colours
    alpha = Image.open(io.BytesIO(convert_image((tmp_path / "a.png").read_bytes(), "a")[0]))
    assert np.asarray(alpha).min() == 255
    cmyk = np.asarray(Image.open(io.BytesIO(convert_image((tmp_path / "c.jpg").read_bytes(),
                                                          "c")[0])), np.int64)  # fmt: skip
    assert np.abs(cmyk - _rgb(2)).mean() < 8


def test_listing_layouts_and_label_files(train_tree, tmp_path):
    synsets = tmp_path / "LOC_synset_mapping.txt"
    synsets.write_text("".join(f"{s} {n}\n" for s, n in zip(reversed(SYNSETS), reversed(NAMES))))
    assert read_synsets(synsets) == (SYNSETS[::-1], NAMES[::-1])
    listing = list_images(train_tree, synsets=synsets, val_fraction=0.0)
    assert listing.layout == "imagenet-train" and listing.classes == SYNSETS[::-1]
    assert listing.class_names == NAMES[::-1]
    assert {item.split for item in listing.items} == {"train"}
    label_of = {Path(item.rel).parent.name: item.label for item in listing.items}
    assert label_of == {SYNSETS[0]: 2, SYNSETS[1]: 1, SYNSETS[2]: 0}
    assert listing.ignored == [str(train_tree / SYNSETS[0] / "README.txt")]
    # a flat val folder labelled by LOC_val_solution.csv, or by the devkit's ground truth
    val = tmp_path / "val"
    for i in range(4):
        _save(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG", _rgb(50 + i))
    rows = [
        f"ILSVRC2012_val_{i + 1:08d},{SYNSETS[i % 3]} 1 2 3 4 {SYNSETS[0]} 5 6 7 8"
        for i in range(3)
    ]  # fmt: skip  (image 4 has no label)
    csv_file = tmp_path / "LOC_val_solution.csv"
    csv_file.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    by_csv = list_images(val, layout="imagenet-val", val_labels=csv_file, synsets=synsets)
    assert by_csv.labels_source == "loc_val_csv"
    assert [(Path(i.rel).name, i.label) for i in by_csv.items] == [
        ("ILSVRC2012_val_00000001.JPEG", 2),
        ("ILSVRC2012_val_00000002.JPEG", 1),
        ("ILSVRC2012_val_00000003.JPEG", 0),
    ]
    assert [(r.path, r.reason) for r in by_csv.rejections] == [
        ("ILSVRC2012_val_00000004.JPEG", "no_label")
    ]
    truth = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("3\n1\n2\n3\n")  # 1-based lines of the synsets file
    by_truth = list_images(val, layout="imagenet-val", val_labels=truth, synsets=synsets)
    assert [i.label for i in by_truth.items] == [2, 0, 1, 2]
    with pytest.raises(ValueError, match="needs --synsets"):
        list_images(val, layout="imagenet-val", val_labels=truth)
    truth.write_text("3\n1\n")
    with pytest.raises(ValueError, match="2 labels but 4 images"):
        list_images(val, layout="imagenet-val", val_labels=truth, synsets=synsets)
    truth.write_text("3\n1\n9\n1\n")
    with pytest.raises(ValueError, match=r"ground_truth.txt:3: '9' is not a class index"):
        list_images(val, layout="imagenet-val", val_labels=truth, synsets=synsets)
    with pytest.raises(ValueError, match="needs --val-labels"):
        list_images(val, layout="imagenet-val")
    # any class-folder tree; a file outside class folders is rejected, named
    _save(tmp_path / "pets" / "cat" / "deep" / "x.png", _rgb(7))
    _save(tmp_path / "pets" / "dog" / "y.png", _rgb(8))
    _save(tmp_path / "pets" / "loose.png", _rgb(9))
    pets = list_images(tmp_path / "pets", val_fraction=0.0)
    assert pets.layout == "folders" and pets.classes == ["cat", "dog"]
    assert [(i.rel, i.label) for i in pets.items] == [("cat/deep/x.png", 0), ("dog/y.png", 1)]
    assert [(r.path, r.reason) for r in pets.rejections] == [("loose.png", "no_label")]


def test_prepare_images_counts_conversions_and_rejections(train_tree, tmp_path, capsys):
    out = tmp_path / "shards"
    argv = ["data", "prepare-images", "--input", str(train_tree), "--output", str(out),
            "--val-fraction", "0.3", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    manifest = check_image_manifest(out, num_classes=3)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["kind"] == "image" and manifest["layout"] == "imagenet-train"
    assert manifest["classes"] == SYNSETS and manifest["num_classes"] == 3
    assert manifest["conversions"] == {"alpha": 1, "cmyk": 1, "grayscale": 1, "palette": 1}
    assert manifest["rejected_by_reason"] == {"corrupt": 1, "empty": 1, "not_an_image": 1}
    rejected = {r["path"]: r["reason"] for r in manifest["rejected"]}
    assert rejected == {
        f"{SYNSETS[2]}/truncated.JPEG": "corrupt",
        f"{SYNSETS[2]}/fake.JPEG": "not_an_image",
        f"{SYNSETS[2]}/empty.png": "empty",
    }
    kept = 9 + 5
    splits = manifest["splits"]
    assert splits["train"]["samples"] + splits["val"]["samples"] == kept
    assert splits["train"]["samples"] > 0 and splits["val"]["samples"] > 0
    counts = manifest["class_counts"]
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == kept
    assert counts["train"].get(SYNSETS[0], 0) + counts["val"].get(SYNSETS[0], 0) == 5
    assert manifest["files"]["ignored_non_image"] == 1
    # stored bytes: RGB JPEGs exactly as on disk, converted files re-encoded as RGB
    for split in ("train", "val"):
        for sample in iter_stored_samples(out, split):
            image = Image.open(io.BytesIO(sample["image"]))
            assert image.mode == "RGB"
            assert manifest["classes"][sample["label"]] == sample["path"].split("/")[0]
            name = Path(sample["path"]).name
            if name.startswith("n0"):
                assert sample["image"] == (train_tree / sample["path"]).read_bytes()
            if name in ("grey.JPEG", "cmyk.JPEG"):
                assert image.format == "JPEG"
            if name in ("palette.png", "alpha.png"):
                assert image.format == "PNG"
    with pytest.raises(ValueError, match="more than the model's"):
        check_image_manifest(out, num_classes=2)
    # perceiver data inspect
    from data_pipeline.inspection import inspect_shards

    summary = inspect_shards(out, num_samples=2)
    assert summary["kind"] == "image" and summary["consistent_with_manifest"]
    assert summary["rejected"] == {"count": 3, "by_reason": manifest["rejected_by_reason"]}
    assert summary["splits"]["train"]["samples"] == splits["train"]["samples"]
    assert len(summary["samples"]) == 2 and summary["samples"][0]["size"][0] in (12, 20)
    capsys.readouterr()
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 classes (layout imagenet-train" in text and "grayscale: 1" in text
    assert f"{SYNSETS[2]}/truncated.JPEG: corrupt" in text and "--- train image 0" in text
    with pytest.raises(SystemExit, match="already holds complete shards"):
        main(argv)


def test_workers_same_bytes_and_resume_after_a_crash(train_tree, tmp_path, monkeypatch):
    from data_pipeline.images import build as build_module

    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"
        }

    one = prepare_images(train_tree, tmp_path / "one", val_fraction=0.3, part_size=4,
                         progress=False)  # fmt: skip
    two = prepare_images(train_tree, tmp_path / "two", val_fraction=0.3, part_size=4,
                         workers=2, progress=False)  # fmt: skip
    assert files(tmp_path / "one") == files(tmp_path / "two")
    assert one["splits"]["train"]["shards"] >= 2
    for key in ("splits", "class_counts", "conversions", "rejected"):
        assert one[key] == two[key]
    # a crash in the third part: nothing that looks complete; the re-run resumes and matches
    real = build_module._run_part
    calls = []

    def crash_on_third(job):
        calls.append(job[2])
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(job)

    monkeypatch.setattr(build_module, "_run_part", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_images(train_tree, tmp_path / "three", val_fraction=0.3, part_size=4,
                       progress=False)  # fmt: skip
    assert not (tmp_path / "three").exists()
    assert len(list((tmp_path / ".three.build" / "parts").glob("*.json"))) == 2
    calls.clear()
    monkeypatch.setattr(build_module, "_run_part", lambda job: calls.append(job) or real(job))
    resumed = prepare_images(train_tree, tmp_path / "three", val_fraction=0.3, part_size=4,
                             progress=False)  # fmt: skip
    assert len(calls) == sum(one["parts"].values()) - 2  # only the missing parts ran
    assert files(tmp_path / "three") == files(tmp_path / "one")
    # a file changed after the crash: its finished part is redone, the others are kept
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(build_module, "_run_part", crash_on_third)
        prepare_images(train_tree, tmp_path / "five", val_fraction=0.3, part_size=4,
                       progress=False)  # fmt: skip
    assert (tmp_path / ".five.build" / "parts" / "train-00000.json").is_file()
    calls.clear()
    monkeypatch.setattr(build_module, "_run_part", lambda job: calls.append(job) or real(job))
    first = next(i for i in list_images(train_tree, val_fraction=0.3).items if i.split == "train")
    changed = Path(first.path)  # in train part 00000, finished before the crash
    original = changed.read_bytes()
    try:
        _save(changed, _rgb(99), quality=90)
        prepare_images(train_tree, tmp_path / "five", val_fraction=0.3, part_size=4,
                       progress=False)  # fmt: skip
    finally:
        changed.write_bytes(original)
    redone = {(job[1], job[2]) for job in calls}
    assert len(redone) == sum(one["parts"].values()) - 1  # the changed file's part was redone
    (sample,) = [s for s in iter_stored_samples(tmp_path / "five", "train")
                 if s["path"] == first.rel]  # fmt: skip
    assert sample["image"] != original
    assert resumed["splits"] == one["splits"] and not (tmp_path / ".three.build").exists()
    # an unfinished build with other settings is refused, not mixed
    monkeypatch.setattr(build_module, "_run_part", crash_on_third)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        prepare_images(train_tree, tmp_path / "four", val_fraction=0.3, part_size=4,
                       progress=False)  # fmt: skip
    with pytest.raises(FileExistsError, match="unfinished build with other settings"):
        prepare_images(train_tree, tmp_path / "four", val_fraction=0.5, part_size=4,
                       progress=False)  # fmt: skip


def test_prepare_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_images(tmp_path / "nowhere", tmp_path / "out", progress=False)
    _save(tmp_path / "in" / "a" / "bad.png", _rgb(0))
    (tmp_path / "in" / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="no training sample"):
        prepare_images(tmp_path / "in", tmp_path / "out", val_fraction=0.0, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="writes a local directory, not s3://"):
        main(
            [
                "data",
                "prepare-images",
                "--input",
                str(tmp_path / "missing"),
                "--output",
                "s3://bucket/images",
            ]
        )  # fmt: skip  (refused before the input is listed)
