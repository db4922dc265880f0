"""A preprocessed, memory-mapped cache for the image-folder benchmarks.

Each environment's images are decoded once (PIL, RGB), resized to `size x size` with PIL's
bilinear filter (exactly what the evaluation transform's `Resize((size, size))` does) and stored
as one uint8 array `[N, 3, size, size]` in `<cache>/images/<Dataset>-<env>-<size>px-<key>.u8`,
with a JSON file beside it holding the shape and the labels. `key` hashes the cache version,
the size and every source file's path (relative to the dataset folder), byte size, mtime and
label, so adding, removing, relabelling or touching a file selects a different cache.
Data and metadata are written to temporary files and renamed, metadata last: a crash leaves
no cache rather than a torn one.

`CachedImageDomain` reads a batch of rows from the memory map and applies DomainBed's training
augmentation to the whole batch at once (each image still gets its own random crop, flip, colour
jitter order and factors, and grayscale draw), then ImageNet normalisation. The DataLoader
calls `__getitems__` with a whole batch of indices, so a worker does one vectorised pass per
batch instead of one PIL pipeline per image.

Differences from the PIL pipeline, all small: the random resized crop is taken from the
`size x size` resized image rather than from the original (so its aspect ratio is relative to
the squared image, and a crop is upsampled by at most 1/sqrt(0.7) = 1.2x), and colour jitter uses
float blends as torchvision's tensor implementation does, not PIL's ImageEnhance.

When the cache is used (environment variable `SHIFTBENCH_IMAGE_CACHE`):
`auto` (default) when a matching cache exists; `build` builds a missing cache when the dataset
is loaded; `off` never. `shiftbench data preprocess --dataset PACS --data-dir D` builds it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from shiftbench.errors import ShiftbenchError
from shiftbench.paths import atomic_write_bytes, cache_dir

CACHE_VERSION = 1
CACHE_MODES = ("auto", "build", "off")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def cache_mode() -> str:
    """`SHIFTBENCH_IMAGE_CACHE`: auto (use when present, default), build, or off."""
    mode = os.environ.get("SHIFTBENCH_IMAGE_CACHE", "auto").strip().lower() or "auto"
    if mode not in CACHE_MODES:
        raise ShiftbenchError(f"SHIFTBENCH_IMAGE_CACHE={mode!r} is not one of "
                              f"{', '.join(CACHE_MODES)}")
    return mode


def image_cache_dir() -> Path:
    path = cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_key(samples: Sequence[tuple[str, int]], base: str | os.PathLike, size: int) -> str:
    """A hash of the cache version, the size and every file's relative path, size, mtime, label."""
    h = hashlib.sha256(f"shiftbench-image-cache-v{CACHE_VERSION}|{size}".encode())
    for path, label in samples:
        st = os.stat(path)
        rel = os.path.relpath(path, base)
        h.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{label}".encode())
    return h.hexdigest()[:20]


def cache_paths(dataset: str, env: str, size: int, key: str) -> tuple[Path, Path]:
    """(data file, metadata file) of one environment's cache."""
    safe_env = re.sub(r"[^A-Za-z0-9_.+-]", "_", env)
    stem = f"{dataset}-{safe_env}-{size}px-{key}"
    root = image_cache_dir()
    return root / f"{stem}.u8", root / f"{stem}.json"


def find_cache(dataset: str, env: str, samples: Sequence[tuple[str, int]], base, size: int,
               ) -> tuple[Path, dict] | None:
    """The data file and metadata of a complete, matching cache, else None."""
    key = source_key(samples, base, size)
    data, meta_path = cache_paths(dataset, env, size, key)
    if not meta_path.is_file() or not data.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    expected = len(samples) * 3 * size * size
    if meta.get("key") != key or meta.get("shape") != [len(samples), 3, size, size] or \
            data.stat().st_size != expected or meta.get("labels") != [s[1] for s in samples]:
        return None
    return data, meta


class _Decode(Dataset):
    """Decode + resize one image to uint8 `[3, size, size]` (for building the cache)."""

    def __init__(self, samples: Sequence[tuple[str, int]], size: int):
        self.samples, self.size = samples, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        path = self.samples[i][0]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except OSError as e:
            raise ShiftbenchError(f"cannot read image {path}: {e}") from e
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def build_cache(dataset: str, env: str, samples: Sequence[tuple[str, int]], base, size: int,
                num_workers: int | None = None) -> Path:
    """Decode every image of one environment into the cache; returns the data file."""
    from shiftbench.data import default_num_workers

    if not samples:
        raise ShiftbenchError(f"{dataset}/{env}: no images to preprocess")
    key = source_key(samples, base, size)
    data, meta_path = cache_paths(dataset, env, size, key)
    shape = (len(samples), 3, size, size)
    tmp = data.with_name(f".{data.name}.{os.getpid()}.tmp")
    workers = default_num_workers() if num_workers is None else num_workers
    try:
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
        loader = DataLoader(_Decode(samples, size), batch_size=32, num_workers=workers)
        start = 0
        for batch in loader:
            out[start:start + len(batch)] = batch.numpy()
            start += len(batch)
        out.flush()
        del out
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    meta = {"version": CACHE_VERSION, "dataset": dataset, "environment": env, "key": key,
            "shape": list(shape), "labels": [s[1] for s in samples], "source": str(base)}
    atomic_write_bytes(meta_path, json.dumps(meta).encode())
    # Caches of older file lists for the same dataset, environment and size are now stale.
    for old in data.parent.glob(f"{data.name.rsplit('-', 1)[0]}-*"):
        if old.suffix in (".u8", ".json") and old.stem != data.stem:
            old.unlink(missing_ok=True)
    return data


# --------------------------------------------------------------------------------------------
# Batched augmentation on uint8 tensors


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel, in place (a multiply and a subtract)."""
    inv = 1.0 / torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return x.mul_(inv).sub_(torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1) * inv)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) `[B, 1, H, W]` of RGB `[B, 3, H, W]` in [0, 1]."""
    return (GRAY[0] * x[:, 0] + GRAY[1] * x[:, 1] + GRAY[2] * x[:, 2]).unsqueeze(1)


def crop_boxes(n: int, height: int, width: int, scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomResizedCrop's box rule for n images: `[n, 4]` (top, left, h, w) in pixels.

    Ten attempts per image of a random area fraction in `scale` and log-uniform aspect ratio in
    `ratio`; the first that fits is kept, else the largest centred crop within `ratio`.
    """
    area = height * width
    attempts = 10
    target = area * torch.empty(n, attempts).uniform_(*scale, generator=generator)
    log_r = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                             generator=generator)
    aspect = log_r.exp()
    w = (target * aspect).sqrt().round()
    h = (target / aspect).sqrt().round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    h_pick, w_pick = h[rows, first.clamp(min=0)], w[rows, first.clamp(min=0)]
    # Fallback (no attempt fits): centre crop with the aspect ratio clamped into `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    fallback = first < 0
    h_pick = torch.where(fallback, torch.tensor(float(fh)), h_pick)
    w_pick = torch.where(fallback, torch.tensor(float(fw)), w_pick)
    u = torch.rand(n, 2, generator=generator)
    top = torch.floor(u[:, 0] * (height - h_pick + 1))
    left = torch.floor(u[:, 1] * (width - w_pick + 1))
    top = torch.where(fallback, ((height - h_pick) / 2).round(), top)
    left = torch.where(fallback, ((width - w_pick) / 2).round(), left)
    return torch.stack([top, left, h_pick, w_pick], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor,
                 ) -> torch.Tensor:
    """Crop each image to its box, resize it bilinearly to `size`, flip where `flip`.

    Per image, as torchvision's `resized_crop` (bilinear, antialiased when shrinking); uint8
    input gives rounded uint8 output, float gives float.
    """
    out = torch.empty((len(x), x.shape[1], size, size), dtype=x.dtype)
    for i, (top, left, h, w) in enumerate(boxes.long().tolist()):
        crop = x[i:i + 1, :, top:top + h, left:left + w]
        if (h, w) != (size, size):
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=True)
        out[i] = crop[0].flip(-1) if flip[i] else crop[0]
    return out


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images `[B, 3, H, W]` in [0, 1] by `shift` turns (one per image),
    through HSV as torchvision's `adjust_hue` does: value (max) and chroma (max - min) are
    kept and the hue moves around the colour hexagon."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = torch.where(delta > 0, delta, torch.ones_like(delta)).reciprocal_()
    # hue in sextants [0, 6): from the max channel and the difference of the other two
    hue = torch.where(maxc == r, g - b, torch.where(maxc == g, (b - r).add_(delta, alpha=2.0),
                                                      (r - g).add_(delta, alpha=4.0)))
    hue.mul_(inv).add_(shift.view(-1, 1, 1) * 6.0)
    out = torch.empty_like(x)
    for c, n in enumerate((5.0, 3.0, 1.0)):  # channel = max - chroma * clamp(min(k, 4 - k))
        k = torch.remainder(hue + n, 6.0)
        k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0).mul_(delta)
        torch.sub(maxc, k, out=out[:, c])
    return out


def hue_rotation(shift: torch.Tensor) -> torch.Tensor:
    """`[B, 3, 3]` rotations of RGB space about the grey axis by `shift` turns (Rodrigues'
    formula); the fast, linear stand-in for the HSV hue shift (`SHIFTBENCH_HUE=linear`)."""
    theta = 2 * math.pi * shift
    k = torch.full((3,), 1 / math.sqrt(3.0))
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    cos, sin = theta.cos().view(-1, 1, 1), theta.sin().view(-1, 1, 1)
    return cos * torch.eye(3) + sin * cross + (1 - cos) * torch.outer(k, k)


def hue_mode() -> str:
    """`SHIFTBENCH_HUE`: `hsv` (default, torchvision's definition) or `linear` (faster)."""
    mode = os.environ.get("SHIFTBENCH_HUE", "hsv").strip().lower() or "hsv"
    if mode not in ("hsv", "linear"):
        raise ShiftbenchError(f"SHIFTBENCH_HUE={mode!r} is not one of hsv, linear")
    return mode


def color_jitter(x: torch.Tensor, strength: float = 0.3,
                 generator: torch.Generator | None = None, hue: str = "hsv") -> torch.Tensor:
    """ColorJitter(strength x 4) per image: brightness, contrast, saturation and hue factors
    drawn per image and applied in a random order per image, as torchvision does.

    Brightness, contrast and saturation are each `x * f + (1 - f) * target` then a clamp to
    [0, 1], with target black, the mean grey level or the grey image; at each position of the
    order one pass over the batch applies whichever of the three each image has there. The hue
    shift is exact (HSV, per image) with `hue="hsv"`; with `hue="linear"` it is a rotation
    about the grey axis.
    """
    n = len(x)
    lo, hi = 1.0 - strength, 1.0 + strength
    factors = torch.empty(n, 3).uniform_(lo, hi, generator=generator)
    shifts = torch.empty(n).uniform_(-strength, strength, generator=generator)
    order = torch.rand(n, 4, generator=generator).argsort(1)
    gray = torch.tensor(GRAY, dtype=x.dtype)
    rotations = hue_rotation(shifts).to(x.dtype) if hue == "linear" else None
    for position in range(4):
        op = order[:, position]
        f = factors.gather(1, op.clamp(max=2).view(-1, 1)).view(-1).to(x.dtype)
        if bool((op < 3).any()):
            scale = torch.where(op < 3, f, torch.ones_like(f)).view(n, 1, 1, 1)
            offset = torch.zeros(n, dtype=x.dtype)
            con = op == 1
            if bool(con.any()):
                mean_grey = x.mean((2, 3)) @ gray
                offset[con] = (1 - f[con]) * mean_grey[con]
            shift = offset.view(n, 1, 1, 1)
            sat = op == 2
            if bool(sat.any()):
                weight = torch.where(sat, 1 - f, torch.zeros_like(f)).view(n, 1, 1, 1)
                shift = _gray(x).mul_(weight).add_(shift)
            x = x.mul_(scale).add_(shift).clamp_(0.0, 1.0)
        idx = (op == 3).nonzero().flatten()
        if len(idx) == 0:
            continue
        if rotations is not None:
            part = x[idx]
            rot = rotations[idx].view(len(idx), 3, 3, 1, 1)
            mixed = part[:, 0:1] * rot[:, :, 0]
            mixed.addcmul_(part[:, 1:2], rot[:, :, 1]).addcmul_(part[:, 2:3], rot[:, :, 2])
            x[idx] = mixed.clamp_(0.0, 1.0)
        else:
            for i in idx.tolist():  # per image: its planes stay in cache
                x[i:i + 1] = _shift_hue(x[i:i + 1], shifts[i:i + 1])
    return x


def augment_batch(x: torch.Tensor, size: int, generator: torch.Generator | None = None,
                  hue: str = "hsv") -> torch.Tensor:
    """DomainBed's training augmentation on uint8 `[B, 3, H, W]`, then ImageNet normalisation:
    RandomResizedCrop(size, scale=(0.7, 1)), horizontal flip (p=0.5), ColorJitter(0.3, 0.3, 0.3,
    0.3), RandomGrayscale (p=0.1)."""
    n, _, height, width = x.shape
    boxes = crop_boxes(n, height, width, generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    xf = resized_crop(x, boxes, size, flip).float().div_(255.0)
    xf = color_jitter(xf, 0.3, generator=generator, hue=hue)
    gray = (torch.rand(n, generator=generator) < 0.1).nonzero().flatten()
    if len(gray):
        xf[gray] = _gray(xf[gray]).expand(-1, 3, -1, -1)
    return _normalise(xf)


def eval_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 `[B, 3, H, W]` -> ImageNet-normalised float (the evaluation transform after Resize)."""
    return _normalise(x.float().div_(255.0))


class CachedImageDomain(Dataset):
    """One environment read from a preprocessed cache (see the module docstring).

    Has the attributes of `ImageFolderDomain` (`samples`, `targets`, `classes`, `name`) so
    that splits and `shiftbench data` work unchanged.
    """

    def __init__(self, data_path: str | os.PathLike, samples: list[tuple[str, int]],
                 classes: Sequence[str], augment: bool, size: int, name: str = ""):
        self.data_path, self.samples, self.classes = Path(data_path), samples, list(classes)
        self.augment, self.size, self.name = augment, size, name
        self.targets = [label for _, label in samples]
        self.hue = hue_mode()
        self._array: np.memmap | None = None

    @property
    def array(self) -> np.memmap:
        if self._array is None:  # opened lazily, once per (worker) process
            n = len(self.samples)
            self._array = np.memmap(self.data_path, dtype=np.uint8, mode="r",
                                    shape=(n, 3, self.size, self.size))
        return self._array

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # never pickle the mapped data into worker processes
        return state

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs `[B, 3, size, size]` (augmented or not) and labels `[B]` of `indices`."""
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(np.ascontiguousarray(self.array[idx]))
        x = augment_batch(x, self.size, hue=self.hue) if self.augment else eval_batch(x)
        return x, torch.as_tensor([self.targets[i] for i in idx], dtype=torch.long)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        x, y = self.batch(indices)
        return list(zip(x.unbind(0), y.tolist()))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch([i])
        return x[0], int(y[0])
