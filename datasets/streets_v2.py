"""`SyntheticStreetsV2`: street scenes whose domains differ in structure as well as appearance.

`SyntheticStreets` (v1, kept unchanged so its records stay meaningful) draws every domain from
one geometry and texture set and changes colours and image quality; BatchNorm re-estimation
alone recovers much of its gap, and pole, sign and person are too thin to be learned at 64x128.
V2 keeps the ten classes, the three domains and the 64x128 size, and makes each domain its own
world:

* `game` (GTA5-like): camera 1.6-2.2 m with a wide field of view (f 48-60 px); wide straight
  streets (road half width 5-8 m); tall towers at the kerb, few trees; big boxy cars (2.1 m wide,
  2.3 m tall) in the lanes; people small in the wide view; square signs; brick courses, striped
  foliage, clean asphalt with a double centre line; saturated warm colours and a sun ramp.
* `real` (Cityscapes-like): camera 1.1-1.4 m with a narrow field of view (f 74-92 px); narrow
  curving streets (2.5-4 m); low houses set back and many trees; sedans parked at both kerbs;
  many people along the sidewalks; round signs; window grids, speckled foliage, patched asphalt,
  clouds; muted grey-blue colours, sensor noise and blur, the ego hood labelled 255.
* `virtual` (SYNTHIA-like): camera 4-8 m looking down (horizon at 8-22% of the height); plazas
  (sidewalks 3-6 m), mid-rise blocks with gaps; few small cars, many people; triangular signs;
  flat panels, flat foliage, crosswalks; pastel flat shading; no terrain class.

Objects are world-sized so that the rare classes cover several pixels (poles 0.35-0.5 m, signs
1.4-2.0 m, people 0.6-0.8 m wide, placed from 3 m on) and every class is learnable at 64x128.
Deterministic from `GENERATION_SEED`, vectorised over images (numpy), 600 images per domain,
cached atomically under `shiftbench.paths.cache_dir()` with the generation version in the key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shiftbench.datasets.base import register_dataset
from shiftbench.datasets.segmentation import LabelMapDomain, SegmentationDataset
from shiftbench.datasets.streets import (
    BUILDING,
    CAR,
    CLASSES,
    ENVIRONMENTS,
    HEIGHT,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    VEGETATION,
    WIDTH,
    _Canvas,
    _col,
    _u,
    finish,
    render_chunks,
)
from shiftbench.datasets.streets_cache import build_cached
from shiftbench.errors import ShiftbenchError

GENERATION_VERSION = 2
GENERATION_SEED = 0
N_PER_DOMAIN = 600
CHUNK = 200
N_SEGMENTS = 16


@dataclass(frozen=True)
class World:
    """One domain: camera, layout, object and texture statistics, and the image model."""

    cam_height: tuple[float, float]
    focal: tuple[float, float]
    horizon: tuple[float, float]      # fraction of the image height
    road: tuple[float, float]         # half width (m)
    sidewalk: tuple[float, float]     # width (m)
    curve: float                      # max lateral bend coefficient (1/m)
    setback: tuple[float, float]      # facade distance behind the sidewalk (m)
    side_kinds: tuple[float, float, float]  # P(gap), P(building), P(vegetation)
    building_height: tuple[float, float]
    car_slots: int
    p_car: float
    car_size: tuple[float, float, float]  # width, height, cabin share
    parked: bool                      # cars at the kerbs instead of in the lanes
    person_slots: int
    p_person: float
    person_scale: tuple[float, float]
    pole_slots: int
    p_pole: float
    p_sign: float
    sign_shape: str                   # square | round | triangle
    building_texture: str             # bricks | windows | panels
    vegetation_texture: str           # stripes | speckle | flat
    road_texture: str                 # clean | patched | crosswalk
    clouds: bool
    terrain: bool
    hood: bool
    palette: dict[int, tuple[float, float, float]]
    saturation: float
    contrast: float
    noise: float
    blur: bool
    sun: float
    brightness: tuple[float, float]


WORLDS = {
    "game": World(
        cam_height=(1.6, 2.2), focal=(48, 60), horizon=(0.40, 0.50), road=(5.0, 8.0),
        sidewalk=(1.5, 3.0), curve=0.0, setback=(0.0, 1.0), side_kinds=(0.08, 0.80, 0.12),
        building_height=(14.0, 40.0), car_slots=6, p_car=0.6, car_size=(2.1, 2.3, 0.55),
        parked=False, person_slots=8, p_person=0.55, person_scale=(1.0, 1.2), pole_slots=4,
        p_pole=0.7, p_sign=0.7, sign_shape="square", building_texture="bricks",
        vegetation_texture="stripes", road_texture="clean", clouds=False, terrain=True, hood=False,
        palette={ROAD: (0.33, 0.30, 0.28), SIDEWALK: (0.62, 0.55, 0.47), BUILDING: (0.64, 0.50, 0.40),
                 VEGETATION: (0.20, 0.55, 0.12), TERRAIN: (0.55, 0.50, 0.20), SKY: (0.35, 0.60, 0.95),
                 POLE: (0.50, 0.50, 0.45), SIGN: (0.90, 0.75, 0.10), PERSON: (0.80, 0.30, 0.25),
                 CAR: (0.80, 0.15, 0.15)},
        saturation=1.1, contrast=0.20, noise=0.01, blur=False, sun=0.35, brightness=(0.95, 1.2)),
    "real": World(
        cam_height=(1.1, 1.4), focal=(74, 92), horizon=(0.36, 0.46), road=(2.5, 4.0),
        sidewalk=(1.5, 3.0), curve=0.004, setback=(1.0, 4.0), side_kinds=(0.10, 0.50, 0.40),
        building_height=(6.0, 14.0), car_slots=8, p_car=0.55, car_size=(1.75, 1.45, 0.45),
        parked=True, person_slots=8, p_person=0.5, person_scale=(0.95, 1.1), pole_slots=5,
        p_pole=0.6, p_sign=0.75, sign_shape="round", building_texture="windows",
        vegetation_texture="speckle", road_texture="patched", clouds=True, terrain=True, hood=True,
        palette={ROAD: (0.40, 0.41, 0.44), SIDEWALK: (0.56, 0.54, 0.56), BUILDING: (0.52, 0.50, 0.48),
                 VEGETATION: (0.30, 0.40, 0.22), TERRAIN: (0.47, 0.47, 0.32), SKY: (0.72, 0.76, 0.82),
                 POLE: (0.32, 0.33, 0.36), SIGN: (0.70, 0.62, 0.30), PERSON: (0.36, 0.30, 0.36),
                 CAR: (0.38, 0.40, 0.50)},
        saturation=0.6, contrast=0.10, noise=0.03, blur=True, sun=0.05, brightness=(0.75, 1.0)),
    "virtual": World(
        cam_height=(4.0, 8.0), focal=(50, 62), horizon=(0.08, 0.22), road=(3.5, 6.0),
        sidewalk=(3.0, 6.0), curve=0.002, setback=(0.0, 3.0), side_kinds=(0.25, 0.60, 0.15),
        building_height=(8.0, 22.0), car_slots=4, p_car=0.4, car_size=(1.6, 1.35, 0.5),
        parked=False, person_slots=10, p_person=0.5, person_scale=(1.0, 1.25), pole_slots=5,
        p_pole=0.6, p_sign=0.7, sign_shape="triangle", building_texture="panels",
        vegetation_texture="flat", road_texture="crosswalk", clouds=False, terrain=False, hood=False,
        palette={ROAD: (0.52, 0.50, 0.55), SIDEWALK: (0.78, 0.72, 0.70), BUILDING: (0.80, 0.72, 0.60),
                 VEGETATION: (0.45, 0.70, 0.40), TERRAIN: (0.70, 0.70, 0.50), SKY: (0.80, 0.88, 0.98),
                 POLE: (0.55, 0.55, 0.62), SIGN: (0.30, 0.45, 0.85), PERSON: (0.85, 0.55, 0.60),
                 CAR: (0.55, 0.65, 0.85)},
        saturation=0.9, contrast=0.06, noise=0.0, blur=False, sun=0.0, brightness=(1.0, 1.1)),
}


def _blotches(rng: np.random.Generator, n: int, cell: int) -> np.ndarray:
    """Per-image blotch noise in [0, 1): a random grid of `cell`-pixel cells, nearest-upsampled."""
    grid = rng.random((n, HEIGHT // cell + 1, WIDTH // cell + 1)).astype(np.float32)
    return grid.repeat(cell, 1).repeat(cell, 2)[:, :HEIGHT, :WIDTH]


def render(world: World, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` images of one world: uint8 RGB `[n, 3, H, W]` and uint8 label maps `[n, H, W]`."""
    v = (np.arange(HEIGHT, dtype=np.float32) + 0.5)[None, :, None]
    u = (np.arange(WIDTH, dtype=np.float32) + 0.5)[None, None, :]
    pal = {k: np.asarray(c, np.float32) for k, c in world.palette.items()}
    cam_h, f = _col(_u(rng, world.cam_height, n)), _col(_u(rng, world.focal, n))
    hz = _col(_u(rng, world.horizon, n) * HEIGHT)
    cx = _col(WIDTH / 2 + rng.uniform(-8, 8, n))
    wr, ws = _col(_u(rng, world.road, n)), _col(_u(rng, world.sidewalk, n))
    bend = _col(rng.uniform(-world.curve, world.curve, n))
    canvas = _Canvas(n)
    tint = rng.uniform(0.88, 1.12, (n, 1, 1, 3)).astype(np.float32)

    def centre(z):  # lateral position of the street's centre line at depth z
        return bend * z * z

    sky = pal[SKY] * (0.8 + 0.4 * (v / HEIGHT))[..., None]
    if world.clouds:
        sky = sky * (0.9 + 0.2 * _blotches(rng, n, 8))[..., None]
    canvas.rgb[:] = np.broadcast_to(sky, canvas.rgb.shape)
    # ground plane
    below = v > hz + 0.5
    zg = np.where(below, f * cam_h / np.maximum(v - hz, 1e-3), np.float32(1e6))
    xg = (u - cx) * zg / f - centre(zg)
    ground = np.where(np.abs(xg) < wr, ROAD, np.where(np.abs(xg) < wr + ws, SIDEWALK,
                                                       TERRAIN if world.terrain else SIDEWALK))
    ground_rgb = np.stack([pal[ROAD], pal[SIDEWALK], pal[TERRAIN]])[
        np.where(ground == ROAD, 0, np.where(ground == SIDEWALK, 1, 2))]
    on_road = ground == ROAD
    if world.road_texture == "clean":
        paint = (np.abs(np.abs(xg) - 0.2) < 0.1) & on_road  # a solid double centre line
    elif world.road_texture == "patched":
        paint = (np.abs(xg) < 0.1) & (np.mod(zg, 9.0) < 2.0) & on_road
        patches = _blotches(rng, n, 4) < 0.3
        ground_rgb = ground_rgb * np.where((patches & on_road)[..., None], 0.8, 1.0)
    else:  # crosswalk stripes across the road at one depth
        zc = _col(rng.uniform(8.0, 20.0, n))
        paint = on_road & (np.abs(zg - zc) < 2.0) & (np.mod(xg, 1.2) < 0.6)
    ground_rgb = np.where(paint[..., None], np.float32(0.92), ground_rgb)
    tiles = (np.mod(xg, 1.0) < 0.1) | (np.mod(zg, 1.0) < 0.1)
    ground_rgb = ground_rgb * np.where((tiles & (ground == SIDEWALK))[..., None], 1 - world.contrast, 1)
    canvas.draw(below, zg, ground.astype(np.uint8), ground_rgb)

    # facades: one plane per side at a lateral offset that follows the street's bend
    for side in (-1.0, 1.0):
        xf = wr + ws + _col(_u(rng, world.setback, n))
        seg_len = _col(rng.uniform(6.0, 14.0, n))
        z_off = _col(rng.uniform(0.0, 10.0, n))
        zmax = _col(rng.uniform(50.0, 110.0, n))
        kinds = rng.choice(3, size=(n, N_SEGMENTS), p=list(world.side_kinds))
        heights = np.where(kinds == 1, rng.uniform(*world.building_height, (n, N_SEGMENTS)),
                           rng.uniform(4.0, 9.0, (n, N_SEGMENTS)))
        colours = pal[BUILDING] * rng.uniform(0.75, 1.25, (n, N_SEGMENTS, 3)).astype(np.float32)
        # depth of the facade column: solve side*(u - cx) z / f = xf + side * centre(z) by iteration
        du = side * (u - cx)
        zf = np.where(du > 0.5, f * xf / np.maximum(du, 1e-3), np.float32(1e6))
        for _ in range(3):
            zf = np.where(du > 0.5, f * (xf + side * centre(np.minimum(zf, 200))) / np.maximum(du, 1e-3),
                          np.float32(1e6))
        zf = np.where(zf > 0, zf, np.float32(1e6))
        seg = np.clip(((zf + z_off) / seg_len).astype(np.int64), 0, N_SEGMENTS - 1)
        seg = np.broadcast_to(seg, (n, 1, WIDTH))[:, 0, :]
        kind = np.take_along_axis(kinds, seg, 1)[:, None, :]
        height = np.take_along_axis(heights, seg, 1)[:, None, :]
        crown = np.sin(zf * 1.3 + seg[:, None, :]) * 0.2
        height = np.where(kind == 2, height * (0.8 + crown), height)
        top = hz - f * (height - cam_h) / zf
        bottom = hz + f * cam_h / zf
        inside = (v >= top) & (v <= bottom) & (zf < zmax) & (kind > 0)
        world_h = cam_h - (v - hz) * zf / f
        along = zf + z_off
        if world.building_texture == "bricks":
            mark = (np.mod(world_h, 0.8) < 0.2) | ((np.mod(along, 6.0) < 0.8) & (np.mod(world_h, 3.2) > 2.0))
        elif world.building_texture == "windows":
            mark = (np.mod(along, 2.2) < 1.2) & (np.mod(world_h, 3.0) > 1.0) & (world_h > 1.5)
        else:
            mark = np.mod(along, 5.0) < 0.35
        brgb = np.take_along_axis(colours, seg[..., None], 1)[:, None, :, :]
        brgb = brgb * np.where(mark[..., None], 1 - 2.5 * world.contrast, 1.0)
        if world.vegetation_texture == "stripes":
            shade = 1 + world.contrast * 2 * np.sin(v * 2.1 + zf * 3.3)
        elif world.vegetation_texture == "speckle":
            shade = 1 + world.contrast * 4 * (_blotches(rng, n, 2) - 0.5)
        else:
            shade = np.ones_like(zf)
        leaves = pal[VEGETATION] * shade[..., None]
        label = np.where(kind == 2, VEGETATION, BUILDING).astype(np.uint8)
        canvas.draw(inside, zf, label, np.where((kind == 2)[..., None], leaves, brgb))

    def box(x_c, width, z, y0, y1):
        """Mask of a camera-facing world rectangle at depth z (x_c +- width/2, heights y0-y1
        above the ground) and its normalised image coordinates."""
        x_c = x_c + centre(z)
        left, right = cx + f * (x_c - width / 2) / z, cx + f * (x_c + width / 2) / z
        top, bottom = hz + f * (cam_h - y1) / z, hz + f * (cam_h - y0) / z
        mid = (left + right) / 2
        left, right = np.minimum(left, mid - 0.5), np.maximum(right, mid + 0.5)
        su = (u - left) / np.maximum(right - left, 1e-3)
        sv = (v - top) / np.maximum(bottom - top, 1e-3)
        return (su >= 0) & (su <= 1) & (sv >= 0) & (sv <= 1), su, sv

    car_w, car_h, cabin_share = world.car_size
    for _ in range(world.car_slots):
        present = _col(rng.random(n) < world.p_car)
        z = _col(rng.uniform(4.0, 40.0, n))
        side = _col(rng.choice([-1.0, 1.0], n))
        if world.parked:
            x = side * (wr - car_w / 2 - _col(rng.uniform(0.0, 0.3, n)))
        else:
            x = side * wr * 0.5 + _col(rng.uniform(-0.4, 0.4, n))
        mask, su, sv = box(x, car_w, z, 0.0, car_h)
        cabin = (sv < cabin_share) & (su > 0.15) & (su < 0.85)
        mask = mask & (cabin | (sv >= cabin_share)) & present
        colour = pal[CAR] * rng.uniform(0.55, 1.45, (n, 1, 1, 3)).astype(np.float32)
        colour = np.where((cabin & (sv > 0.08))[..., None], colour * 0.35, colour)
        colour = np.where((sv > 0.9)[..., None], np.float32(0.08), colour)  # wheels / shadow
        canvas.draw(mask, z, CAR, colour)
    for _ in range(world.person_slots):
        present = _col(rng.random(n) < world.p_person)
        z = _col(rng.uniform(3.0, 25.0, n))
        side = _col(rng.choice([-1.0, 1.0], n))
        scale = _col(_u(rng, world.person_scale, n))
        x = side * (wr + _col(rng.uniform(0.3, 0.9, n)) * ws)
        mask, su, sv = box(x, 0.7 * scale, z, 0.0, 1.75 * scale)
        head = ((su - 0.5) / 0.3) ** 2 + ((sv - 0.09) / 0.09) ** 2 <= 1
        body = ((su - 0.5) / 0.5) ** 2 + ((sv - 0.45) / 0.3) ** 2 <= 1
        legs = (sv > 0.6) & (np.abs(su - 0.5) > 0.08) & (np.abs(su - 0.5) < 0.38)
        colour = pal[PERSON] * rng.uniform(0.6, 1.4, (n, 1, 1, 3)).astype(np.float32)
        canvas.draw(mask & (head | body | legs) & present, z, PERSON, colour)
    for _ in range(world.pole_slots):
        present = _col(rng.random(n) < world.p_pole)
        z = _col(rng.uniform(3.0, 30.0, n))
        side = _col(rng.choice([-1.0, 1.0], n))
        x = side * (wr + ws * _col(rng.uniform(0.1, 0.3, n)))
        pole_h = _col(rng.uniform(4.0, 7.0, n))
        mask, _, _ = box(x, _col(rng.uniform(0.35, 0.5, n)), z, 0.0, pole_h)
        canvas.draw(mask & present, z, POLE, pal[POLE] * (1 - 0.3 * (v > hz)[..., None]))
        sign = present & _col(rng.random(n) < world.p_sign)
        size = _col(rng.uniform(1.4, 2.0, n))
        mask, su, sv = box(x - side * 0.3, size, z - 0.05, pole_h - size - 0.1, pole_h - 0.1)
        if world.sign_shape == "round":
            shape = (su - 0.5) ** 2 + (sv - 0.5) ** 2 <= 0.25
        elif world.sign_shape == "triangle":
            shape = np.abs(su - 0.5) <= 0.5 * sv
        else:
            shape = np.ones_like(mask)
        border = (su < 0.12) | (su > 0.88) | (sv < 0.12) | (sv > 0.88)
        srgb = pal[SIGN] * rng.uniform(0.75, 1.25, (n, 1, 1, 3)).astype(np.float32)
        canvas.draw(mask & shape & sign, z - 0.05, SIGN, np.where(border[..., None], srgb * 0.5, srgb))
    return finish(canvas, world, tint, u, v, cx, rng)


def generate(env: str, n: int = N_PER_DOMAIN, seed: int = GENERATION_SEED
             ) -> tuple[np.ndarray, np.ndarray]:
    """One environment, deterministic from (seed, environment), rendered in chunks."""
    if env not in WORLDS:
        raise ShiftbenchError(f"unknown SyntheticStreetsV2 environment {env!r}; valid: "
                              + ", ".join(ENVIRONMENTS))
    return render_chunks(render, WORLDS[env], n,
                         [seed, GENERATION_VERSION, ENVIRONMENTS.index(env)])


def build_streets_v2(n: int = N_PER_DOMAIN, seed: int = GENERATION_SEED, use_cache: bool = True):
    """Every environment as {name: (uint8 [n, 3, H, W], uint8 [n, H, W])}, cached on disk."""
    return build_cached(f"SyntheticStreets-v{GENERATION_VERSION}-s{seed}-n{n}-{HEIGHT}x{WIDTH}.pt",
                        lambda env: generate(env, n, seed), ENVIRONMENTS, use_cache)


@register_dataset
class SyntheticStreetsV2(SegmentationDataset):
    """Street scenes in three worlds that differ in camera, layout, objects, textures and image
    statistics: game (GTA5-like), real (Cityscapes-like), virtual (SYNTHIA-like); 3x64x128,
    10 classes, ignore index 255."""

    ENVIRONMENTS = ENVIRONMENTS
    INPUT_SHAPE = (3, HEIGHT, WIDTH)
    NUM_CLASSES = len(CLASSES)
    CLASSES = CLASSES
    N_STEPS = 601
    CHECKPOINT_FREQ = 300
    SOURCE = "generated offline (numpy scene grammar v2, 600 images per domain)"

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        envs = build_streets_v2()
        self.datasets = [LabelMapDomain(*envs[name], name=name) for name in ENVIRONMENTS]
