"""`make demo-vision`: image classification and optical flow end to end on CPU (a few minutes).

1. Images: draws a small labelled set procedurally (:func:`draw_shapes`: six classes, each a
   shape (disc, square, triangle) in its own colour family, at random sizes, places and shades on
   random noisy backgrounds, images of 40 to 64 pixels a side) as PNG class folders, runs
   `perceiver data prepare-images` on it, trains `configs/tiny_image.yaml` and prints validation
   top-1 against chance.
2. Flow: `perceiver data generate-flow` (procedural AutoFlow-style pairs: 2 px motions, textures
   at half the default scale), trains `configs/tiny_flow.yaml`, prints the validation
   end-point error beside the zero-flow baseline's (and their ratio), and runs `perceiver flow`
   on two real Sintel frames (../shared/data/flow_frames) writing OUT/flow.png and OUT/flow.flo.

    python tools/demo_vision.py [--out demo_out] [--image-steps N] [--flow-steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO.parent / "shared" / "data" / "flow_frames"
# Per colour family, the (low, high) range of each RGB channel of the shape's fill.
COLOURS = {
    "red": ((200, 255), (0, 70), (0, 70)),
    "green": ((0, 70), (170, 255), (0, 70)),
    "blue": ((0, 70), (0, 70), (170, 255)),
    "yellow": ((200, 255), (200, 255), (0, 70)),
    "cyan": ((0, 70), (170, 255), (170, 255)),
    "magenta": ((170, 255), (0, 70), (170, 255)),
}
CLASSES = [
    "red_disc", "green_square", "blue_triangle", "yellow_disc", "cyan_square", "magenta_triangle",
]  # fmt: skip


def draw_shape(cls: str, rng: np.random.Generator, min_size: int = 40, max_size: int = 64):
    """One RGB image (PIL) of class ``cls`` (``<colour>_<shape>``)."""
    from PIL import Image, ImageDraw

    colour, shape = cls.split("_")
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    background = tuple(int(v) for v in rng.integers(60, 196, 3))
    image = Image.new("RGB", (w, h), background)
    noise = rng.integers(-20, 21, (h, w, 3))
    image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
    fill = tuple(int(rng.integers(lo, hi + 1)) for lo, hi in COLOURS[colour])
    side = int(rng.uniform(0.45, 0.8) * min(h, w))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    draw = ImageDraw.Draw(image)
    if shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0 + side // 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)],
                     fill=fill)  # fmt: skip
    return image


def draw_shapes(root: Path, per_class: int, seed: int = 0) -> list[str]:
    """``root/<class>/<i>.png`` for every class of :data:`CLASSES`; returns the classes."""
    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(cls, rng).save(root / cls / f"{i:04d}.png")
    return list(CLASSES)


def perceiver(*args: str) -> None:
    """``python -m perceiver_cli ARGS`` in this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    subprocess.run([sys.executable, "-m", "perceiver_cli", *args], check=True, cwd=REPO, env=env)


def train(config: str, data: Path, run: Path, steps: int | None) -> dict:
    """Trains ``configs/<config>`` on ``data`` from scratch; returns ``summary.json``."""
    extra = [f"trainer.max_steps={steps}", f"trainer.val_every={steps}"] if steps else []
    perceiver(
        "train", str(REPO / "configs" / config), f"data.dir={data}", f"trainer.run_dir={run}",
        "checkpoint.resume=none", "logging.progress_bar=false", *extra,
    )  # fmt: skip
    return json.loads((run / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo_out")
    parser.add_argument("--per-class", type=int, default=100, help="images drawn per class")
    parser.add_argument("--image-steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--flow-steps", type=int, default=None, help="default: the preset's")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    t0 = time.perf_counter()

    root, images = out / "vision" / "shapes", out / "data" / "shapes"
    classes = draw_shapes(root, args.per_class)
    print(f"[demo-vision] drew {args.per_class} images x {len(classes)} classes in {root}")
    perceiver("data", "prepare-images", "--input", str(root), "--output", str(images),
              "--val-fraction", "0.2", "--overwrite")  # fmt: skip
    summary = train("tiny_image.yaml", images, out / "runs" / "tiny_image", args.image_steps)
    top1 = summary["val_metrics"].get("val/top1", float("nan"))
    print(
        f"[demo-vision] image classifier: {summary['state']['step']} steps, val top-1 "
        f"{top1:.3f} vs chance {1 / len(classes):.3f} ({time.perf_counter() - t0:.0f} s so far)",
        flush=True,
    )

    pairs = out / "data" / "flow_pairs"
    perceiver("data", "generate-flow", "--output", str(pairs), "--train", "256", "--val", "64",
              "--height", "36", "--width", "52", "--max-flow", "2", "--texture-scale", "0.5",
              "--seed", "0", "--workers", "2", "--overwrite")  # fmt: skip
    run = out / "runs" / "tiny_flow"
    t_flow = time.perf_counter()
    summary = train("tiny_flow.yaml", pairs, run, args.flow_steps)
    val = summary["val_metrics"]
    epe, zero = val.get("val/epe", float("nan")), val.get("val/zero_flow_epe", float("nan"))
    print(
        f"[demo-vision] flow model: {summary['state']['step']} steps "
        f"({time.perf_counter() - t_flow:.0f} s), val EPE {epe:.3f} px vs zero-flow baseline "
        f"{zero:.3f} px: {epe / zero:.2f} of it "
        f"({'learned' if epe < 0.9 * zero else 'NOT below the baseline'})",
        flush=True,
    )
    if (FRAMES / "frame_0016.png").is_file():
        perceiver("flow", str(FRAMES / "frame_0016.png"), str(FRAMES / "frame_0017.png"),
                  "--checkpoint", str(run), "--output", str(out / "flow.png"),
                  "--flo", str(out / "flow.flo"), "--batch-size", "64")  # fmt: skip
    else:
        print(f"[demo-vision] {FRAMES}: no Sintel frames, skipping `perceiver flow`")
    print(
        f"[demo-vision] done in {time.perf_counter() - t0:.0f} s; "
        f"tensorboard --logdir {out / 'runs'}  (IMAGES: val/flow)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
