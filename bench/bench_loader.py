"""Image loader throughput: lazy PIL decoding vs the preprocessed memory-mapped cache.

Writes a synthetic dataset in PACS's on-disk layout (4 domains x 7 classes, `--images` JPEGs
of 227x227, PACS's size), then measures images/s of training batches (DomainBed augmentation +
ImageNet normalisation) and of evaluation batches (resize + normalisation) drawn through the
trainer's own loaders (`shiftbench.data.BatchStream` / `eval_batches`) with the same number of
DataLoader workers, for:

* `lazy`: `ImageFolderDomain` (PIL decode + torchvision transforms per image, in workers);
* `cached`: `CachedImageDomain` after `PACS.preprocess` (memory-mapped uint8, the same
  augmentation as torchvision's tensor ops done image by image in reused buffers, in workers),
  exact HSV hue shift (the default);
* `cached_linear`: the same with the hparam `hue` = `linear` (hue as a rotation about the grey axis).

Two figures per loader: wall-clock images/s through the DataLoader workers, and CPU
milliseconds per image measured in-process (`num_workers=0`, `time.process_time`), which is
robust to other load on the machine.

Usage: OMP_NUM_THREADS=1 python bench/bench_loader.py [--images 2000] [--repeats 3]
       [--batches 20] [--batch-size 32] [--workers N] [--root DIR]
Prints one JSON line per measurement, a JSON summary of medians and ratios, and a final
human-readable `SUMMARY` block (medians of the repeats, cached/lazy ratios, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shiftbench.data import BatchStream, default_num_workers, eval_batches

DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


def make_dataset(root: Path, n_images: int, size: int = 227) -> None:
    """Smooth random colour images (blurred noise + gradients) saved as JPEG (quality 90)."""
    from PIL import Image, ImageFilter

    rs = np.random.RandomState(0)
    cells = [(d, c) for d in DOMAINS for c in CLASSES]
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n_images):
        d, c = cells[k % len(cells)]
        folder = root / "PACS" / d / c
        folder.mkdir(parents=True, exist_ok=True)
        noise = rs.randint(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        im = Image.fromarray(noise).resize((size, size), Image.BICUBIC)
        base = np.asarray(im, dtype=np.float32)
        base += 60 * np.stack([xx, yy, 1 - xx], -1) * rs.uniform(-1, 1, 3)
        im = Image.fromarray(base.clip(0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)
        im.save(folder / f"{k:05d}.jpg", quality=90)


def train_rate(env, batch_size: int, batches: int, workers: int, seed: int) -> float:
    stream = BatchStream(env, torch.arange(len(env)), batch_size, seed=seed, role="bench",
                         env=0, start_step=0, num_workers=workers)
    stream.next()  # worker start-up and first batch are not timed
    t0 = time.perf_counter()
    for _ in range(batches):
        x, _ = stream.next()
    elapsed = time.perf_counter() - t0
    del stream
    return batches * batch_size / elapsed


def cpu_ms_per_image(env, batch_size: int, batches: int, seed: int) -> float:
    """CPU time per training image, loading in this process (no workers)."""
    stream = BatchStream(env, torch.arange(len(env)), batch_size, seed=seed, role="bench",
                         env=0, start_step=0, num_workers=0)
    stream.next()
    t0 = time.process_time()
    for _ in range(batches):
        stream.next()
    return 1000 * (time.process_time() - t0) / (batches * batch_size)


def eval_cpu_ms_per_image(env, batch_size: int) -> float:
    """CPU time per evaluation image, loading in this process (no workers)."""
    t0 = time.process_time()
    n = 0
    for x, _ in eval_batches(env, torch.arange(len(env)), batch_size, num_workers=0):
        n += len(x)
    return 1000 * (time.process_time() - t0) / n


def eval_rate(env, batch_size: int, workers: int) -> float:
    t0 = time.perf_counter()
    n = 0
    for x, _ in eval_batches(env, torch.arange(len(env)), batch_size, num_workers=workers):
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--root", default=None, help="where to write the images (default: a temp dir)")
    ns = p.parse_args()
    torch.set_num_threads(1)
    load_start = round(os.getloadavg()[0], 2)
    workers = default_num_workers() if ns.workers is None else ns.workers
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(ns.root or tmp)
        os.environ["SHIFTBENCH_CACHE"] = str(Path(tmp) / "cache")
        t0 = time.perf_counter()
        if not (root / "PACS").is_dir():
            make_dataset(root, ns.images)
        print(json.dumps({"event": "dataset", "images": ns.images,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        from shiftbench.datasets import get_dataset_class

        cls = get_dataset_class("PACS")
        lazy = cls(str(root), [0], {"data_augmentation": True})
        t0 = time.perf_counter()
        cls.preprocess(str(root), num_workers=workers, log=lambda m: None)
        prep = time.perf_counter() - t0
        print(json.dumps({"event": "preprocess", "seconds": round(prep, 1),
                          "images_per_s": round(ns.images / prep, 1)}), flush=True)
        cached = cls(str(root), [0], {"data_augmentation": True}, image_cache=True)
        cached_linear = cls(str(root), [0], {"data_augmentation": True, "hue": "linear"},
                            image_cache=True)
        assert type(cached[1]).__name__ == "CachedImageDomain" and cached_linear[1].hue == "linear"
        rates: dict[str, list[float]] = {}
        for r in range(ns.repeats):
            for kind, ds in (("lazy", lazy), ("cached", cached), ("cached_linear", cached_linear)):
                tr = train_rate(ds[1], ns.batch_size, ns.batches, workers, seed=r)
                ev = eval_rate(ds[0], 64, workers)
                cpu = cpu_ms_per_image(ds[2], ns.batch_size, max(2, ns.batches // 2), seed=r)
                ev_cpu = eval_cpu_ms_per_image(ds[0], 64)
                rates.setdefault(f"{kind}_train", []).append(tr)
                rates.setdefault(f"{kind}_eval", []).append(ev)
                rates.setdefault(f"{kind}_cpu_ms", []).append(cpu)
                rates.setdefault(f"{kind}_eval_cpu_ms", []).append(ev_cpu)
                print(json.dumps({"repeat": r, "loader": kind, "train_images_per_s": round(tr, 1),
                                  "eval_images_per_s": round(ev, 1),
                                  "train_cpu_ms_per_image": round(cpu, 2),
                                  "eval_cpu_ms_per_image": round(ev_cpu, 2)}), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    summary = {"workers": workers, "load_average_start": load_start,
               "load_average_end": round(os.getloadavg()[0], 2),
               "cpu_count": os.cpu_count(), "batch_size": ns.batch_size,
               "repeats": ns.repeats, **{f"median_{k}": round(v, 2) for k, v in med.items()},
               "train_speedup": round(med["cached_train"] / med["lazy_train"], 2),
               "train_speedup_linear_hue": round(med["cached_linear_train"] / med["lazy_train"], 2),
               "eval_speedup": round(med["cached_eval"] / med["lazy_eval"], 2),
               "cpu_speedup": round(med["lazy_cpu_ms"] / med["cached_cpu_ms"], 2),
               "cpu_speedup_linear_hue": round(med["lazy_cpu_ms"] / med["cached_linear_cpu_ms"], 2),
               "eval_cpu_speedup": round(med["lazy_eval_cpu_ms"] / med["cached_eval_cpu_ms"], 2)}
    print(json.dumps(summary))
    print(f"SUMMARY ({ns.repeats} repeats, medians; {workers} worker(s); load average "
          f"{load_start:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n"
          f"  train: lazy {med['lazy_train']:.1f} img/s, {med['lazy_cpu_ms']:.2f} CPU ms/img | "
          f"cached {med['cached_train']:.1f} img/s, {med['cached_cpu_ms']:.2f} CPU ms/img | "
          f"speedup {summary['train_speedup']:.2f}x wall, {summary['cpu_speedup']:.2f}x CPU\n"
          f"  eval:  lazy {med['lazy_eval']:.1f} img/s, {med['lazy_eval_cpu_ms']:.2f} CPU ms/img | "
          f"cached {med['cached_eval']:.1f} img/s, {med['cached_eval_cpu_ms']:.2f} CPU ms/img | "
          f"speedup {summary['eval_speedup']:.2f}x wall, {summary['eval_cpu_speedup']:.2f}x CPU\n"
          f"  (linear hue, optional: train {summary['train_speedup_linear_hue']:.2f}x wall, "
          f"{summary['cpu_speedup_linear_hue']:.2f}x CPU)", flush=True)


if __name__ == "__main__":
    main()
