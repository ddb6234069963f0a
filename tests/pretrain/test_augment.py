"""On-device augmentation (pretrain.objectives.augment): exact geometry, determinism per key."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.objectives.augment.flow import (
    FlowAugment,
    augment_flow_train,
    crop_flow_batch,
    flow_eval_batch,
)
from pretrain.objectives.augment.geometry import centre_boxes, random_resized_boxes
from pretrain.objectives.augment.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_train,
    crop_resize,
    eval_crops,
    mix_batch,
    normalize,
)
from pretrain.objectives.augment.randaugment import OPS, apply_op, rand_augment


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _padded(b: int = 3, hp: int = 20, wp: int = 24, seed: int = 0):
    """Random uint8 images of different sizes, top-left in a zero-padded batch."""
    g = _gen(seed)
    sizes = torch.tensor([[hp, wp], [16, 12], [10, 20]][:b])
    images = torch.zeros(b, 3, hp, wp, dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes.tolist()):
        images[i, :, :h, :w] = torch.randint(1, 256, (3, h, w), generator=g, dtype=torch.uint8)
    return images, sizes


def test_identity_crop_reproduces_the_image_and_flip_mirrors_it():
    images, sizes = _padded(1, 16, 16)
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = crop_resize(images, sizes, box, 16)
    torch.testing.assert_close(out, images.float() / 255, atol=1e-5, rtol=0)
    flipped = crop_resize(images, sizes, box, 16, torch.tensor([True]))
    torch.testing.assert_close(flipped, images.float().flip(-1) / 255, atol=1e-5, rtol=0)


def test_sub_box_at_native_scale_is_an_exact_slice_and_padding_is_never_read():
    images, sizes = _padded()
    # image 1 (16 x 12): its bottom-right 8 x 8 at scale 1 is a slice
    boxes = torch.tensor([[0, 0, 8, 8], [8.0, 4.0, 8.0, 8.0], [2, 12, 8, 8]]).float()
    out = crop_resize(images, sizes, boxes, 8)
    torch.testing.assert_close(out[1], images[1, :, 8:16, 4:12].float() / 255, atol=1e-5, rtol=0)
    # upsampling the whole of image 2 (10 x 20): no zero pixel from the padding ever appears
    up = crop_resize(images, sizes, torch.tensor([[0.0, 0.0, 10.0, 20.0]] * 3), 40)
    assert (up[2] > 0).all()


def test_random_resized_boxes_stay_inside_and_follow_scale_and_ratio():
    sizes = torch.tensor([[100, 80], [40, 200], [64, 64]]).repeat(50, 1)
    boxes = random_resized_boxes(sizes, _gen(1))
    y0, x0, h, w = boxes.unbind(-1)
    assert (y0 >= 0).all() and (x0 >= 0).all()
    assert (y0 + h <= sizes[:, 0]).all() and (x0 + w <= sizes[:, 1]).all()
    frac = h * w / (sizes[:, 0] * sizes[:, 1])
    assert frac.min() > 0.05 and frac.max() <= 1.0 + 1e-6
    assert frac.std() > 0.1  # really random
    # a 1 x 50 strip fits no box of ratio 3/4..4/3 in 10 draws: the clamped central crop
    fb = random_resized_boxes(torch.tensor([[4, 200]]), _gen(0))
    assert fb.tolist() == [[0.0, 97.0, 4.0, 5.0]]  # w = round(4 * 4/3) = 5, centred


def test_centre_crop_box_and_eval_crops():
    boxes = centre_boxes(torch.tensor([[64, 128]]), 0.875)
    assert boxes.tolist() == [[4.0, 36.0, 56.0, 56.0]]
    images, sizes = _padded(1, 16, 16)
    out = eval_crops(images, sizes, 14, crop_ratio=0.875)  # 14 x 14 centre, native scale
    torch.testing.assert_close(out[0], images[0, :, 1:15, 1:15].float() / 255, atol=1e-5, rtol=0)


def test_normalize_uses_imagenet_statistics():
    x = torch.tensor(IMAGENET_MEAN)[None, :, None, None].expand(1, 3, 2, 2)
    assert normalize(x).abs().max() < 1e-6
    one = normalize(torch.ones(1, 3, 1, 1))[0, :, 0, 0]
    want = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(one, torch.tensor(want))


def test_train_augmentation_is_a_function_of_the_key():
    images, sizes = _padded()
    kw = dict(randaugment_ops=2, randaugment_magnitude=9)
    a = augment_train(images, sizes, _gen(5), 16, **kw)
    b = augment_train(images, sizes, _gen(5), 16, **kw)
    c = augment_train(images, sizes, _gen(6), 16, **kw)
    assert a.shape == (3, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", OPS)
def test_each_randaugment_op_changes_images_and_level_zero_keeps_them(name):
    x = torch.rand(2, 3, 12, 12, generator=_gen(0)) * 0.8 + 0.1
    sign, axis = torch.tensor([1.0, -1.0]), torch.tensor([0, 1])
    assert not torch.allclose(apply_op(name, x, 0.9, sign, axis), x, atol=1e-3)
    if name not in ("posterize", "solarize"):
        torch.testing.assert_close(apply_op(name, x, 0.0, sign, axis), x, atol=1e-5, rtol=0)
    out = rand_augment(x, _gen(1), 3, 10)
    assert out.min() >= 0 and out.max() <= 1


def test_mixup_and_cutmix_targets():
    x = torch.stack([torch.full((3, 10, 10), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 2, 3])
    m = mix_batch(x, labels, _gen(0), mixup_alpha=0.8)
    lam = float(m.lam_b[0])
    assert 0 < lam < 1 and torch.equal(m.labels_b, labels.flip(0))
    torch.testing.assert_close(m.images[0], lam * x[0] + (1 - lam) * x[3])
    c = mix_batch(x, labels, _gen(0), cutmix_alpha=1.0)
    pasted = (c.images[0] == 3.0).float().mean().item()  # pixels of image 0 from image 3
    assert math.isclose(1 - pasted, float(c.lam_b[0]), abs_tol=1e-6)
    off = mix_batch(x, labels, _gen(0), mixup_alpha=0.8, prob=0.0)
    assert torch.equal(off.images, x) and torch.equal(off.lam_b, torch.ones(4))


def _translation_pair(h: int, w: int, dx: float, dy: float) -> dict[str, torch.Tensor]:
    """A smooth texture and the same texture moved by (dx, dy): frame0[y, x] = frame1[y + dy,
    x + dx], so the flow is (dx, dy) everywhere."""
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")

    def tex(x, y):
        return torch.stack(
            [128 + 60 * torch.sin(x / 6 + c) + 50 * torch.cos(y / 7 - c) for c in (0.0, 1.0, 2.0)]
        )

    f0, f1 = tex(xx, yy), tex(xx - dx, yy - dy)
    return {
        "frames": torch.stack([f0, f1])[None].round().clamp(0, 255).to(torch.uint8),
        "flow": torch.tensor([dx, dy]).expand(1, h, w, 2).clone(),
        "valid": torch.ones(1, h, w, dtype=torch.bool),
        "sizes": torch.tensor([[h, w]]),
    }


def _warp_error(frames: torch.Tensor, flow: torch.Tensor, margin: int) -> float:
    """Mean |frame0 - frame1 warped back by the flow| inside a margin (frames [1, 2, 3, H, W])."""
    _, _, _, h, w = frames.shape
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    gx = (2 * (xx + flow[0, ..., 0]) + 1) / w - 1
    gy = (2 * (yy + flow[0, ..., 1]) + 1) / h - 1
    grid = torch.stack([gx, gy], -1)[None]
    warped = torch.nn.functional.grid_sample(frames[:, 1], grid, align_corners=False)
    m = margin
    return (warped - frames[:, 0])[..., m:-m, m:-m].abs().mean().item()


@pytest.mark.parametrize("flip", [False, True])
def test_flow_scaling_and_flip_keep_a_translation_consistent(flip):
    raw = _translation_pair(48, 64, dx=3.0, dy=-2.0)
    s = 1.5
    box = torch.tensor([[5.0, 7.0, 24 / s, 32 / s]])
    out = crop_flow_batch(raw, box, torch.tensor([s]), torch.tensor([flip]), (24, 32))
    want = torch.tensor([-3.0 * s if flip else 3.0 * s, -2.0 * s])
    torch.testing.assert_close(out["flow"], want.expand(1, 24, 32, 2), atol=1e-4, rtol=0)
    assert out["valid"].all()
    assert _warp_error(out["frames"], out["flow"], margin=6) < 2.0  # of 255: bilinear error
    wrong = out["flow"].clone()
    wrong[..., 0] = -wrong[..., 0]  # the flow not negated on flip (or negated without one)
    assert _warp_error(out["frames"], wrong, margin=6) > 10.0


def test_flow_augmentation_random_scale_is_applied_to_the_vectors():
    raw = _translation_pair(40, 48, dx=2.0, dy=1.0)
    aug = FlowAugment(brightness=0, contrast=0, saturation=0, hflip=False)
    out = augment_flow_train(raw, _gen(3), (16, 24), aug)
    s = out["flow"][0, 0, 0, 0].item() / 2.0
    assert 2**aug.min_log2_scale - 1e-4 <= s <= 2**aug.max_log2_scale + 1e-4
    torch.testing.assert_close(out["flow"][..., 1], torch.full((1, 16, 24), s), atol=1e-4, rtol=0)
    frames255 = (out["frames"] + 1) / 2 * 255
    assert _warp_error(frames255, out["flow"], margin=4) < 2.0
    assert out["frames"].min() >= -1 and out["frames"].max() <= 1


def test_flow_augmentation_stays_in_the_valid_region_and_is_deterministic():
    raw = _translation_pair(30, 40, dx=1.0, dy=0.0)
    raw["valid"][:, :, 30:] = False  # pretend columns >= 30 are padding
    raw["frames"][..., 30:] = 0
    raw["sizes"] = torch.tensor([[30, 30]])
    aug = FlowAugment()
    a = augment_flow_train(raw, _gen(7), (20, 20), aug)
    b = augment_flow_train(raw, _gen(7), (20, 20), aug)
    c = augment_flow_train(raw, _gen(8), (20, 20), aug)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["frames"], c["frames"])
    assert a["valid"].all()  # never sampled from the padding
    ev = flow_eval_batch(raw, (20, 20))
    want = raw["frames"][0, 0, :, 5:25, 5:25].float() / 255 * 2 - 1
    torch.testing.assert_close(ev["frames"][0, 0], want, atol=1e-5, rtol=0)
