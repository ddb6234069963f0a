"""Procedural optical-flow pairs, AutoFlow-style (Sun et al. 2021): layered textured shapes.

A pair is a stack of layers: a background covering the plane, then `num_shapes` shapes drawn on
top of it in order (a later layer occludes an earlier one). Each layer has

- a texture: a continuous function of the layer's own coordinates ``p`` (a base colour plus
  bilinearly interpolated random colour grids at three scales, so frames have detail at every
  scale from the cell size up and can be sampled anywhere, which keeps warping exact);
- a shape (not for the background): a rotated superellipse ``|a|^n + |b|^n <= 1`` (n from 1, a
  diamond, through 2, an ellipse, to about 6, a rounded rectangle);
- a motion: in frame 1 the layer's coordinates are the image coordinates relative to its centre
  ``c`` (``x = c + p``); in frame 2 the layer is translated by ``t``, rotated by ``theta`` and
  scaled by ``s`` about its centre (``x' = c + t + s R(theta) p``).

Frame k at pixel ``x`` shows the top layer whose shape covers ``x`` in frame k, its texture at
``p``. The forward flow at ``x`` is that of the top layer of frame 1 there,
``t + (s R(theta) - I)(x - c)``, exact for every pixel (also for the pixels that are hidden in
frame 2, or leave it). Motions are shrunk until no pixel of any layer moves more than
`max_flow`. Everything is vectorised numpy and depends only on the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FlowScene",
    "Layer",
    "generate_pair",
    "make_scene",
    "render",
    "top_layer",
    "visible_in_frame2",
]

_OCTAVES = ((24.0, 0.55), (9.0, 0.3), (4.0, 0.15))
"""Texture grids: (cell size in pixels, share of the texture's contrast)."""


@dataclass(frozen=True)
class Layer:
    """One layer of a scene (see the module docstring).

    Attributes:
        center: ``c``, (x, y) in pixels.
        translation: ``t``, (x, y) in pixels.
        theta: Rotation from frame 1 to frame 2, radians.
        scale: Scale from frame 1 to frame 2.
        axes: Semi-axes (a, b) of the shape in pixels; ``None``: the whole plane (background).
        orientation: The shape's rotation in frame 1, radians.
        exponent: The superellipse exponent ``n``.
        base: Base colour, float [3].
        grids: Colour grids, one float [gh, gw, 3] per octave of `_OCTAVES`.
        extent: Half-size (x, y) of the coordinate box the grids cover, pixels.
        cells: Cell size of each grid in pixels (`_OCTAVES`' times the scene's texture scale).
    """

    center: np.ndarray
    translation: np.ndarray
    theta: float
    scale: float
    axes: tuple[float, float] | None
    orientation: float
    exponent: float
    base: np.ndarray
    grids: tuple[np.ndarray, ...]
    extent: tuple[float, float]
    cells: tuple[float, ...] = tuple(cell for cell, _ in _OCTAVES)

    def to_frame2(self, p_n2: np.ndarray) -> np.ndarray:
        """Image coordinates in frame 2 of layer coordinates ``p`` (float [N, 2])."""
        return self.center + self.translation + self.scale * (p_n2 @ _rotation(self.theta).T)

    def from_frame2(self, x_n2: np.ndarray) -> np.ndarray:
        """Layer coordinates of frame-2 image coordinates ``x`` (float [N, 2])."""
        return ((x_n2 - self.center - self.translation) / self.scale) @ _rotation(self.theta)

    def covers(self, p_n2: np.ndarray) -> np.ndarray:
        """Whether the shape covers layer coordinates ``p``: bool [N]."""
        if self.axes is None:
            return np.ones(len(p_n2), bool)
        q = p_n2 @ _rotation(self.orientation)  # into the shape's own axes
        a, b = self.axes
        return np.abs(q[:, 0] / a) ** self.exponent + np.abs(q[:, 1] / b) ** self.exponent <= 1

    def texture(self, p_n2: np.ndarray) -> np.ndarray:
        """The layer's colour at layer coordinates ``p``: float [N, 3] (unclipped)."""
        colour = np.broadcast_to(self.base, (len(p_n2), 3)).copy()
        for cell, grid in zip(self.cells, self.grids):
            colour += _bilinear(
                grid, (p_n2[:, 0] + self.extent[0]) / cell, (p_n2[:, 1] + self.extent[1]) / cell
            )
        return colour


@dataclass(frozen=True)
class FlowScene:
    """A scene: image size and layers, bottom (background) first."""

    height: int
    width: int
    layers: tuple[Layer, ...]


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _bilinear(grid_hwc: np.ndarray, u_n: np.ndarray, v_n: np.ndarray) -> np.ndarray:
    """``grid`` at fractional (column u, row v), clamped at the borders: float [N, C]."""
    gh, gw = grid_hwc.shape[:2]
    u = np.clip(u_n, 0, gw - 1)
    v = np.clip(v_n, 0, gh - 1)
    u0 = np.minimum(np.floor(u).astype(np.int64), gw - 2)
    v0 = np.minimum(np.floor(v).astype(np.int64), gh - 2)
    fu = (u - u0)[:, None]
    fv = (v - v0)[:, None]
    top = grid_hwc[v0, u0] * (1 - fu) + grid_hwc[v0, u0 + 1] * fu
    bottom = grid_hwc[v0 + 1, u0] * (1 - fu) + grid_hwc[v0 + 1, u0 + 1] * fu
    return top * (1 - fv) + bottom * fv


def _pixel_grid(height: int, width: int) -> np.ndarray:
    """Pixel centres (x, y) row-major: float [H*W, 2]."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)


def _layer_flow(layer: Layer, x_n2: np.ndarray) -> np.ndarray:
    """Forward flow of `layer` at frame-1 image coordinates: float [N, 2]."""
    p = x_n2 - layer.center
    return layer.to_frame2(p) - x_n2


def _random_layer(
    rng: np.random.Generator,
    height: int,
    width: int,
    background: bool,
    max_flow: float,
    corners_n2: np.ndarray,
    texture_scale: float,
) -> Layer:
    size = min(height, width)
    if background:
        center = np.array([(width - 1) / 2, (height - 1) / 2])
        axes = None
        extent = (width * 1.0, height * 1.0)
    else:
        center = rng.uniform([0, 0], [width - 1, height - 1])
        axes = tuple(rng.uniform(0.08, 0.35, 2) * size)
        extent = (max(axes) * 1.5 + 2, max(axes) * 1.5 + 2)
    translation = rng.normal(0, max_flow / 3, 2)
    theta = float(rng.normal(0, 0.05 if background else 0.15))
    log_scale = float(rng.normal(0, 0.03 if background else 0.08))
    contrast = rng.uniform(30, 110)
    grids = []
    cells = tuple(cell * texture_scale for cell, _ in _OCTAVES)
    for cell, (_, share) in zip(cells, _OCTAVES):
        gw = int(np.ceil(2 * extent[0] / cell)) + 2
        gh = int(np.ceil(2 * extent[1] / cell)) + 2
        grids.append(rng.normal(0, contrast * share, (gh, gw, 3)))
    layer = Layer(
        center=center,
        translation=translation,
        theta=theta,
        scale=float(np.exp(log_scale)),
        axes=axes,
        orientation=float(rng.uniform(0, np.pi)),
        exponent=float(rng.uniform(1.0, 6.0)),
        base=rng.uniform(40, 215, 3),
        grids=tuple(grids),
        extent=extent,
        cells=cells,
    )
    # Shrink the motion until no pixel of the image moves further than max_flow with it (the
    # flow is affine in x, so its largest magnitude over the image is at a corner).
    for _ in range(50):
        largest = float(np.sqrt((_layer_flow(layer, corners_n2) ** 2).sum(axis=1)).max())
        if largest <= max_flow:
            return layer
        k = 0.95 * max_flow / largest
        layer = Layer(
            **{
                **layer.__dict__,
                "translation": layer.translation * k,
                "theta": layer.theta * k,
                "scale": float(np.exp(np.log(layer.scale) * k)),
            }
        )
    return Layer(**{**layer.__dict__, "translation": np.zeros(2), "theta": 0.0, "scale": 1.0})


def make_scene(
    seed: int,
    height: int,
    width: int,
    *,
    max_flow: float = 10.0,
    num_shapes: tuple[int, int] = (2, 6),
    texture_scale: float = 1.0,
) -> FlowScene:
    """The random scene of `seed` (see the module docstring).

    Args:
        seed: Any non-negative integer; the scene depends on it alone.
        height: Image height in pixels.
        width: Image width in pixels.
        max_flow: The largest flow magnitude, pixels.
        num_shapes: Inclusive range of the number of shapes above the background.
        texture_scale: Multiplies the texture cell sizes of `_OCTAVES` (24, 9, 4 px): below 1,
            finer textures (more gradient at every pixel, which small motions need to be seen).

    Raises:
        ValueError: For a non-positive size, max_flow or texture_scale, or a bad `num_shapes`.
    """
    if height < 2 or width < 2:
        raise ValueError(f"height and width must be at least 2, got {height} x {width}")
    if max_flow <= 0:
        raise ValueError(f"max_flow must be positive, got {max_flow}")
    if not texture_scale > 0:
        raise ValueError(f"texture_scale must be positive, got {texture_scale}")
    if not 0 <= num_shapes[0] <= num_shapes[1]:
        raise ValueError(f"num_shapes must be (low, high) with 0 <= low <= high, got {num_shapes}")
    rng = np.random.default_rng(seed)
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], float)
    count = int(rng.integers(num_shapes[0], num_shapes[1] + 1))
    layers = [_random_layer(rng, height, width, True, max_flow, corners, texture_scale)]
    layers += [
        _random_layer(rng, height, width, False, max_flow, corners, texture_scale)
        for _ in range(count)
    ]
    return FlowScene(height, width, tuple(layers))


def top_layer(scene: FlowScene, x_n2: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of the top layer at image coordinates in frame 1 or 2, and those layer coordinates:
    (int [N], float [N, 2])."""
    top = np.zeros(len(x_n2), np.int64)
    coords = np.zeros_like(x_n2)
    for i, layer in enumerate(scene.layers):
        p = x_n2 - layer.center if frame == 1 else layer.from_frame2(x_n2)
        hit = layer.covers(p)
        top[hit] = i
        coords[hit] = p[hit]
    return top, coords


def render(scene: FlowScene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders a scene's frames and its forward flow.

    Returns:
        ``(frame1 uint8 [H, W, 3], frame2 uint8 [H, W, 3], flow float32 [H, W, 2])``.
    """
    h, w = scene.height, scene.width
    pixels = _pixel_grid(h, w)
    frames = []
    for frame in (1, 2):
        top, coords = top_layer(scene, pixels, frame)
        colour = np.zeros((len(pixels), 3))
        for i, layer in enumerate(scene.layers):
            at = top == i
            if at.any():
                colour[at] = layer.texture(coords[at])
        frames.append(np.clip(np.rint(colour), 0, 255).astype(np.uint8).reshape(h, w, 3))
        if frame == 1:
            flow = np.zeros((len(pixels), 2))
            for i, layer in enumerate(scene.layers):
                at = top == i
                flow[at] = _layer_flow(layer, pixels[at])
    return frames[0], frames[1], flow.reshape(h, w, 2).astype(np.float32)


def visible_in_frame2(scene: FlowScene, flow_hw2: np.ndarray) -> np.ndarray:
    """Pixels of frame 1 still visible in frame 2: their destination is inside the image and
    shows the same layer there (not occluded by a layer above). bool [H, W]."""
    h, w = scene.height, scene.width
    pixels = _pixel_grid(h, w)
    top1, _ = top_layer(scene, pixels, 1)
    dest = pixels + flow_hw2.reshape(-1, 2).astype(np.float64)
    top2, _ = top_layer(scene, dest, 2)
    inside = (dest[:, 0] >= 0) & (dest[:, 0] <= w - 1) & (dest[:, 1] >= 0) & (dest[:, 1] <= h - 1)
    return (inside & (top1 == top2)).reshape(h, w)


def generate_pair(
    seed: int, height: int, width: int, *, max_flow: float = 10.0, texture_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random textured frame pair and its exact forward flow (``render(make_scene(...))``).

    Args:
        seed: The pair depends on it alone.
        height: Image height.
        width: Image width.
        max_flow: The largest flow magnitude in pixels.
        texture_scale: Multiplies the texture cell sizes (below 1: finer textures).

    Returns:
        ``(frame1 uint8 [H, W, 3], frame2 uint8 [H, W, 3], flow float32 [H, W, 2])``, flow in
        pixels (x, y) from frame 1 to frame 2: ``frame1[y, x] ~ frame2[y + fy, x + fx]``.
    """
    return render(make_scene(seed, height, width, max_flow=max_flow, texture_scale=texture_scale))
