"""`SyntheticStreets`: an offline street-scene segmentation benchmark, generated procedurally.

One scene grammar, three renderers. Every image is a street seen from a pinhole camera over a
ground plane: a road of random width with lane markings, sidewalks, a strip of terrain, facades
along both sides in depth segments (buildings with windows, tree lines or gaps), and objects
placed in the world and drawn through a z-buffer (cars in lanes, people on the sidewalks, poles
with traffic signs at the kerb). Ten classes with a long-tailed pixel share (road, building and
sky dominate; pole, sign and person are rare):

    road, sidewalk, building, vegetation, terrain, sky, pole, traffic_sign, person, car

The three environments differ as the usual segmentation domains do:

* `game` (GTA5-like): saturated warm palette, strong directional sun (a brightness ramp across
  the image and bright ground), crisp high-contrast textures, camera at 1.4-1.9 m with a wide
  field of view, many cars, few people.
* `real` (Cityscapes-like): muted, slightly blue-grey colours, overcast low-contrast lighting,
  sensor noise and a blur, camera at 1.1-1.4 m with a narrower field of view, the ego car's
  hood at the bottom of the frame labelled 255 (as Cityscapes' "ego vehicle"), more vegetation
  and people.
* `virtual` (SYNTHIA-like): flat pastel shading, elevated camera (3-7 m) with the horizon high in
  the frame, many people, poles and signs, and no terrain class (SYNTHIA has none): the ground
  beyond the kerb is pavement.

Images are 3x64x128 uint8, `N_PER_DOMAIN` = 600 per domain (1,800 images). Generation is vectorised over
images with numpy (one pass per object slot, not per pixel), deterministic from
`GENERATION_SEED`, and cached in `shiftbench.paths.cache_dir()` (atomic write) under a key made
of the generation version, seed, size and count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shiftbench.datasets.base import register_dataset
from shiftbench.datasets.segmentation import IGNORE_INDEX, LabelMapDomain, SegmentationDataset
from shiftbench.datasets.streets_cache import build_cached
from shiftbench.errors import ShiftbenchError
from shiftbench.paths import cache_dir

GENERATION_VERSION = 1
GENERATION_SEED = 0
HEIGHT, WIDTH = 64, 128
N_PER_DOMAIN = 600
CHUNK = 200
CLASSES = ("road", "sidewalk", "building", "vegetation", "terrain", "sky", "pole",
           "traffic_sign", "person", "car")
ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, POLE, SIGN, PERSON, CAR = range(10)
ENVIRONMENTS = ("game", "real", "virtual")


@dataclass(frozen=True)
class Style:
    """What one domain's renderer draws and how (ranges are sampled per image)."""

    palette: dict[int, tuple[float, float, float]]  # base RGB in [0, 1] per class
    saturation: float        # 1 = palette as is, < 1 greyer
    contrast: float          # texture amplitude
    noise: float             # per-pixel sensor noise (std)
    blur: bool
    sun: float               # strength of the left-right brightness ramp
    brightness: tuple[float, float]
    cam_height: tuple[float, float]
    focal: tuple[float, float]
    horizon: tuple[float, float]  # as a fraction of the image height
    p_car: float
    p_person: float
    p_pole: float
    p_sign: float
    side_kinds: tuple[float, float, float]  # P(gap), P(building), P(vegetation) per facade segment
    terrain: bool
    hood: bool


STYLES = {
    "game": Style(
        palette={ROAD: (0.33, 0.30, 0.28), SIDEWALK: (0.62, 0.55, 0.47), BUILDING: (0.70, 0.45, 0.30),
                 VEGETATION: (0.20, 0.55, 0.12), TERRAIN: (0.55, 0.50, 0.20), SKY: (0.35, 0.60, 0.95),
                 POLE: (0.45, 0.45, 0.40), SIGN: (0.90, 0.75, 0.10), PERSON: (0.75, 0.30, 0.25),
                 CAR: (0.80, 0.15, 0.15)},
        saturation=1.25, contrast=0.22, noise=0.01, blur=False, sun=0.35, brightness=(0.95, 1.2),
        cam_height=(1.4, 1.9), focal=(52, 66), horizon=(0.38, 0.50), p_car=0.6, p_person=0.15,
        p_pole=0.45, p_sign=0.5, side_kinds=(0.10, 0.70, 0.20), terrain=True, hood=False),
    "real": Style(
        palette={ROAD: (0.40, 0.41, 0.44), SIDEWALK: (0.55, 0.53, 0.55), BUILDING: (0.50, 0.49, 0.48),
                 VEGETATION: (0.30, 0.38, 0.22), TERRAIN: (0.45, 0.46, 0.32), SKY: (0.72, 0.76, 0.82),
                 POLE: (0.35, 0.36, 0.38), SIGN: (0.65, 0.62, 0.30), PERSON: (0.35, 0.30, 0.35),
                 CAR: (0.38, 0.40, 0.48)},
        saturation=0.6, contrast=0.08, noise=0.035, blur=True, sun=0.05, brightness=(0.75, 1.0),
        cam_height=(1.1, 1.4), focal=(70, 90), horizon=(0.36, 0.46), p_car=0.45, p_person=0.35,
        p_pole=0.5, p_sign=0.45, side_kinds=(0.10, 0.55, 0.35), terrain=True, hood=True),
    "virtual": Style(
        palette={ROAD: (0.52, 0.50, 0.55), SIDEWALK: (0.78, 0.72, 0.70), BUILDING: (0.80, 0.72, 0.60),
                 VEGETATION: (0.45, 0.70, 0.40), TERRAIN: (0.70, 0.70, 0.50), SKY: (0.80, 0.88, 0.98),
                 POLE: (0.60, 0.60, 0.65), SIGN: (0.30, 0.45, 0.85), PERSON: (0.85, 0.55, 0.60),
                 CAR: (0.55, 0.65, 0.85)},
        saturation=0.9, contrast=0.04, noise=0.0, blur=False, sun=0.0, brightness=(1.0, 1.1),
        cam_height=(3.0, 7.0), focal=(50, 64), horizon=(0.18, 0.32), p_car=0.35, p_person=0.6,
        p_pole=0.65, p_sign=0.7, side_kinds=(0.15, 0.65, 0.20), terrain=False, hood=False),
}

N_SEGMENTS = 16
CAR_SLOTS, PERSON_SLOTS, POLE_SLOTS = 6, 8, 4


def _u(rng: np.random.Generator, lo_hi: tuple[float, float], n: int) -> np.ndarray:
    return rng.uniform(lo_hi[0], lo_hi[1], n)


def _col(v: np.ndarray) -> np.ndarray:
    """Per-image values broadcast over (H, W)."""
    return v[:, None, None]


class _Canvas:
    """Label map, colour and z-buffer of a chunk of images, drawn painter-free via the z-buffer."""

    def __init__(self, n: int):
        self.label = np.full((n, HEIGHT, WIDTH), SKY, np.uint8)
        self.rgb = np.zeros((n, HEIGHT, WIDTH, 3), np.float32)
        self.z = np.full((n, HEIGHT, WIDTH), np.inf, np.float32)

    def draw(self, mask: np.ndarray, depth: np.ndarray, label: int | np.ndarray, rgb: np.ndarray):
        """Write where `mask` holds and `depth` is nearer than what is there."""
        mask = np.broadcast_to(mask, self.z.shape)
        depth = np.broadcast_to(depth, mask.shape)
        hit = mask & (depth < self.z)
        self.z[hit] = depth[hit]
        self.label[hit] = label if np.isscalar(label) else np.broadcast_to(label, mask.shape)[hit]
        self.rgb[hit] = np.broadcast_to(rgb, (*mask.shape, 3))[hit]


def render(style: Style, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` images of one style: uint8 RGB `[n, 3, H, W]` and uint8 label maps `[n, H, W]`."""
    v = (np.arange(HEIGHT, dtype=np.float32) + 0.5)[None, :, None]
    u = (np.arange(WIDTH, dtype=np.float32) + 0.5)[None, None, :]
    pal = {k: np.asarray(c, np.float32) for k, c in style.palette.items()}
    # camera
    cam_h = _col(_u(rng, style.cam_height, n))
    f = _col(_u(rng, style.focal, n))
    hz = _col(_u(rng, style.horizon, n) * HEIGHT)
    cx = _col(WIDTH / 2 + rng.uniform(-10, 10, n))
    # street layout (metres)
    wr = _col(rng.uniform(3.0, 6.0, n))          # road half width
    ws = _col(rng.uniform(1.5, 3.5, n))          # sidewalk width
    canvas = _Canvas(n)
    tint = rng.uniform(0.85, 1.15, (n, 1, 1, 3)).astype(np.float32)

    # sky: vertical gradient
    sky = pal[SKY] * (0.8 + 0.4 * (v / HEIGHT))[..., None]
    canvas.rgb[:] = np.broadcast_to(sky, canvas.rgb.shape)
    # ground plane
    below = v > hz + 0.5
    zg = np.where(below, f * cam_h / np.maximum(v - hz, 1e-3), np.float32(1e6))
    xg = (u - cx) * zg / f
    ground = np.where(np.abs(xg) < wr, ROAD, np.where(np.abs(xg) < wr + ws, SIDEWALK,
                                                       TERRAIN if style.terrain else SIDEWALK))
    ground_rgb = np.stack([pal[ROAD], pal[SIDEWALK], pal[TERRAIN]])[
        np.where(ground == ROAD, 0, np.where(ground == SIDEWALK, 1, 2))]
    marking = (np.abs(xg) < 0.12) & (np.mod(zg, 6.0) < 3.0) & (ground == ROAD)
    ground_rgb = np.where(marking[..., None], np.float32(0.92), ground_rgb)
    tiles = (np.mod(xg, 1.0) < 0.08) | (np.mod(zg, 1.0) < 0.08)
    ground_rgb = ground_rgb * np.where((tiles & (ground == SIDEWALK))[..., None], 1 - style.contrast, 1)
    canvas.draw(below, zg, ground.astype(np.uint8), ground_rgb)

    # facades: one plane per side, cut into depth segments of random kind and height
    for side in (-1.0, 1.0):
        xf = wr + ws + _col(rng.uniform(0.0, 2.5, n))
        seg_len = _col(rng.uniform(6.0, 16.0, n))
        z_off = _col(rng.uniform(0.0, 10.0, n))
        zmax = _col(rng.uniform(50.0, 120.0, n))
        kinds = rng.choice(3, size=(n, N_SEGMENTS), p=list(style.side_kinds))
        heights = np.where(kinds == 1, rng.uniform(6.0, 28.0, (n, N_SEGMENTS)),
                           rng.uniform(4.0, 9.0, (n, N_SEGMENTS)))
        colours = pal[BUILDING] * rng.uniform(0.7, 1.3, (n, N_SEGMENTS, 3)).astype(np.float32)
        du = side * (u - cx)
        zf = np.where(du > 0.5, f * xf / np.maximum(du, 1e-3), np.float32(1e6))
        seg = np.clip(((zf + z_off) / seg_len).astype(np.int64), 0, N_SEGMENTS - 1)
        seg = np.broadcast_to(seg, (n, 1, WIDTH))[:, 0, :]
        kind = np.take_along_axis(kinds, seg, 1)[:, None, :]
        height = np.take_along_axis(heights, seg, 1)[:, None, :]
        phase = np.sin(zf * 1.7 + seg[:, None, :]) * 0.15
        height = np.where(kind == 2, height * (0.85 + phase), height)
        top = hz - f * (height - cam_h) / zf
        bottom = hz + f * cam_h / zf
        inside = (v >= top) & (v <= bottom) & (zf < zmax) & (kind > 0)
        world_h = cam_h - (v - hz) * zf / f
        windows = (np.mod(zf + z_off, 2.5) < 1.3) & (np.mod(world_h, 3.0) > 1.2) & (world_h > 2.0)
        brgb = np.take_along_axis(colours, seg[..., None], 1)[:, None, :, :]
        brgb = brgb * np.where(windows[..., None], 1 - 2.5 * style.contrast, 1.0)
        leaves = pal[VEGETATION] * (1 + style.contrast * 2 * np.sin(v * 2.1 + zf * 3.3)[..., None])
        label = np.where(kind == 2, VEGETATION, BUILDING).astype(np.uint8)
        canvas.draw(inside, zf, label, np.where((kind == 2)[..., None], leaves, brgb))

    def box(x_c, width, z, y0, y1):
        """Image-space mask of a world rectangle facing the camera at depth z, x_c +- width/2,
        from height y0 to y1 above the ground; plus its normalised coordinates."""
        left = cx + f * (x_c - width / 2) / z
        right = cx + f * (x_c + width / 2) / z
        top = hz + f * (cam_h - y1) / z
        bottom = hz + f * (cam_h - y0) / z
        # a thin object still covers the pixel column it falls in
        left, right = np.minimum(left, (left + right) / 2 - 0.5), np.maximum(right, (left + right) / 2 + 0.5)
        su = (u - left) / np.maximum(right - left, 1e-3)
        sv = (v - top) / np.maximum(bottom - top, 1e-3)
        return (su >= 0) & (su <= 1) & (sv >= 0) & (sv <= 1), su, sv

    # cars in the lanes
    for _ in range(CAR_SLOTS):
        present = _col(rng.random(n) < style.p_car)
        z = _col(rng.uniform(4.0, 45.0, n))
        lane = _col(rng.choice([-0.5, 0.5], n)) * wr + _col(rng.uniform(-0.4, 0.4, n))
        mask, su, sv = box(lane, 1.8, z, 0.0, 1.5)
        cabin = (sv < 0.45) & (su > 0.18) & (su < 0.82)
        mask = mask & (cabin | (sv >= 0.45)) & present
        colour = pal[CAR] * rng.uniform(0.5, 1.5, (n, 1, 1, 3)).astype(np.float32)
        colour = np.where((cabin & (sv > 0.1))[..., None], colour * 0.35, colour)
        canvas.draw(mask, z, CAR, colour)
    # people on the sidewalks
    for _ in range(PERSON_SLOTS):
        present = _col(rng.random(n) < style.p_person)
        z = _col(rng.uniform(3.0, 35.0, n))
        side = _col(rng.choice([-1.0, 1.0], n))
        x = side * (wr + _col(rng.uniform(0.3, 1.0, n)) * (ws - 0.3))
        mask, su, sv = box(x, 0.55, z, 0.0, 1.75)
        head = ((su - 0.5) / 0.3) ** 2 + ((sv - 0.09) / 0.09) ** 2 <= 1
        body = ((su - 0.5) / 0.5) ** 2 + ((sv - 0.58) / 0.42) ** 2 <= 1
        colour = pal[PERSON] * rng.uniform(0.6, 1.4, (n, 1, 1, 3)).astype(np.float32)
        canvas.draw(mask & (head | body) & present, z, PERSON, colour)
    # poles at the kerb, some carrying a sign
    for _ in range(POLE_SLOTS):
        present = _col(rng.random(n) < style.p_pole)
        z = _col(rng.uniform(4.0, 50.0, n))
        side = _col(rng.choice([-1.0, 1.0], n))
        x = side * (wr + ws * _col(rng.uniform(0.6, 0.9, n)))
        pole_h = _col(rng.uniform(4.5, 8.0, n))
        mask, _, _ = box(x, 0.18, z, 0.0, pole_h)
        canvas.draw(mask & present, z, POLE, pal[POLE])
        sign = present & _col(rng.random(n) < style.p_sign)
        y1 = pole_h - _col(rng.uniform(0.3, 1.2, n))
        mask, su, sv = box(x - side * 0.4, 1.0, z - 0.05, y1 - 0.9, y1)
        round_ = _col(rng.random(n) < 0.5)
        shape = np.where(round_, (su - 0.5) ** 2 + (sv - 0.5) ** 2 <= 0.25, True)
        canvas.draw(mask & shape & sign, z - 0.05, SIGN,
                    pal[SIGN] * rng.uniform(0.7, 1.3, (n, 1, 1, 3)).astype(np.float32))
    return finish(canvas, style, tint, u, v, cx, rng)


def finish(canvas: _Canvas, look, tint: np.ndarray, u: np.ndarray, v: np.ndarray, cx: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The ego car's hood (ignored in evaluation, as in Cityscapes), then lighting, colour
    statistics, texture and the sensor model of a rendered chunk: (images uint8 NCHW, labels).
    `look` is a v1 `Style` or a v2 `World` (the same appearance attributes)."""
    n = canvas.z.shape[0]
    # the ego car's hood (ignored in evaluation, as in Cityscapes)
    if look.hood:
        hood_h = _col(rng.uniform(3.0, 7.0, n))
        mask = v > HEIGHT - hood_h * (1 - ((u - cx) / (0.75 * WIDTH)) ** 2)
        canvas.draw(mask, np.zeros((n, 1, 1), np.float32), IGNORE_INDEX, np.float32(0.12))

    # lighting, colour statistics, texture and sensor model
    rgb = canvas.rgb * tint
    grey = rgb.mean(axis=-1, keepdims=True)
    rgb = grey + look.saturation * (rgb - grey)
    ramp = 1 + look.sun * _col(rng.choice([-1.0, 1.0], n)) * (u / WIDTH - 0.5)
    rgb = rgb * (ramp * _col(_u(rng, look.brightness, n)))[..., None]
    rgb = rgb * (1 + 0.4 * look.contrast * rng.standard_normal((n, HEIGHT, WIDTH, 1)).astype(np.float32))
    if look.blur:
        padded = np.pad(rgb, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        rgb = sum(padded[:, i:i + HEIGHT, j:j + WIDTH] for i in range(3) for j in range(3)) / 9
    if look.noise:
        rgb = rgb + look.noise * rng.standard_normal(rgb.shape).astype(np.float32)
    image = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(image), canvas.label


def render_chunks(render_chunk, look, n: int, seed_key: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """`n` images of `look`, rendered CHUNK at a time, chunk k from the generator seeded
    [*seed_key, k] (so the images do not depend on how many are asked for)."""
    xs, ys = [], []
    for k, start in enumerate(range(0, n, CHUNK)):
        x, y = render_chunk(look, min(CHUNK, n - start), np.random.default_rng([*seed_key, k]))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def generate(env: str, n: int = N_PER_DOMAIN, seed: int = GENERATION_SEED
             ) -> tuple[np.ndarray, np.ndarray]:
    """One environment, deterministic from (seed, environment), rendered in chunks."""
    if env not in STYLES:
        raise ShiftbenchError(f"unknown SyntheticStreets environment {env!r}; valid: "
                              + ", ".join(ENVIRONMENTS))
    return render_chunks(render, STYLES[env], n, [seed, ENVIRONMENTS.index(env)])


def cache_path(n: int, seed: int) -> Path:
    return cache_dir() / f"SyntheticStreets-v{GENERATION_VERSION}-s{seed}-n{n}-{HEIGHT}x{WIDTH}.pt"


def build_streets(n: int = N_PER_DOMAIN, seed: int = GENERATION_SEED, use_cache: bool = True
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every environment as {name: (uint8 [n, 3, H, W], uint8 [n, H, W])}, cached on disk."""
    return build_cached(cache_path(n, seed).name, lambda env: generate(env, n, seed), ENVIRONMENTS,
                        use_cache)


@register_dataset
class SyntheticStreets(SegmentationDataset):
    """Street scenes in three rendering domains: game (GTA5-like), real (Cityscapes-like),
    virtual (SYNTHIA-like); 3x64x128 images, 10 classes, ignore index 255."""

    ENVIRONMENTS = ENVIRONMENTS
    INPUT_SHAPE = (3, HEIGHT, WIDTH)
    NUM_CLASSES = len(CLASSES)
    CLASSES = CLASSES
    N_STEPS = 601
    CHECKPOINT_FREQ = 300
    SOURCE = "generated offline (numpy scene grammar, 600 images per domain)"

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        envs = build_streets()
        self.datasets = [LabelMapDomain(*envs[name], name=name) for name in ENVIRONMENTS]
