"""DomainBed's training augmentation and ImageNet normalisation on uint8 image tensors, fast.

`augment_batch` draws a batch's random parameters at once (each image still gets its own crop,
flip, colour jitter order and factors, and grayscale draw), then runs each image through the
whole pipeline in reused scratch planes that stay in the CPU cache: crop + bilinear resize with
PyTorch's uint8 channels-last kernel, conversion to float, torchvision's tensor colour
operations (brightness, contrast, saturation as float blends, the HSV hue shift in an exact
branch-free form), grayscale, and ImageNet normalisation written straight into the batch (in
shared memory inside a DataLoader worker). The result equals torchvision's tensor transforms
with the same draws (tested to 1e-4, the uint8 resize to one grey level).

Differences from the PIL pipeline: the random resized crop is taken from the `size x size`
resized image rather than from the original (so its aspect ratio is relative to the squared
image, and a crop is upsampled by at most 1/sqrt(0.7) = 1.2x), and colour jitter follows
torchvision's tensor definitions (float blends, float HSV), not PIL's 8-bit ImageEnhance and
8-bit HSV, which round after every operation.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shiftbench.errors import ShiftbenchError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights

# --------------------------------------------------------------------------------------------
# Augmentation on uint8 tensors, one image at a time in reused scratch planes
#
# A batch is drawn at once (boxes, flips, jitter factors, orders, grayscale draws), then each
# image goes through the whole pipeline on its own: its planes (224x224 float32, 200 KB each)
# stay in the CPU cache between operations, where a whole-batch pass would stream 19 MB through
# memory once per operation. Every operation writes into preallocated scratch planes or in
# place, and the last one writes the normalised image straight into the batch output.


class _Scratch(threading.local):
    """Per-thread scratch planes, reallocated when the image size changes."""

    def __init__(self):
        self.hw: tuple[int, int] | None = None

    def planes(self, height: int, width: int) -> _Scratch:
        if self.hw != (height, width):
            self.hw = (height, width)
            self.one = [torch.empty(height, width) for _ in range(6)]
            self.three = torch.empty(3, height, width)
            self.image = torch.empty(3, height, width)
        return self


_SCRATCH = _Scratch()
_SCALE = torch.tensor([1.0 / s for s in STD]).view(3, 1, 1)
_BIAS = torch.tensor([-m / s for m, s in zip(MEAN, STD)]).view(3, 1, 1)
_SCALE_U8 = _SCALE / 255.0
# Hue: per-channel phase (in turns) of the HSV -> RGB formula below, plus 1 to stay positive.
_HUE_PHASE = (5 / 6 + 1, 3 / 6 + 1, 1 / 6 + 1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel, in place, for `[B, 3, H, W]` or `[3, H, W]`."""
    return x.mul_(_SCALE).add_(_BIAS)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) `[B, 1, H, W]` of RGB `[B, 3, H, W]` in [0, 1]."""
    return (GRAY[0] * x[:, 0] + GRAY[1] * x[:, 1] + GRAY[2] * x[:, 2]).unsqueeze(1)


def _gray_into(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Luma of one image `[3, H, W]` written into the plane `out` `[H, W]`."""
    torch.mul(x[0], GRAY[0], out=out)
    out.add_(x[1], alpha=GRAY[1])
    return out.add_(x[2], alpha=GRAY[2])


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


def _crop_one(x: torch.Tensor, box: Sequence[int], size: int, flip: bool) -> torch.Tensor:
    """One image `[1, C, H, W]` cropped to `box` (top, left, h, w), resized bilinearly
    (antialiased when shrinking, as torchvision) to `size x size`, flipped if `flip`.

    uint8 in channels-last memory (how the cache stores pixels) takes PyTorch's fast 8-bit
    path."""
    top, left, h, w = box
    crop = x[:, :, top:top + h, left:left + w]
    if (h, w) != (size, size):
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)
    return crop.flip(-1) if flip else crop


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor,
                 ) -> torch.Tensor:
    """Crop each image to its box, resize it bilinearly to `size`, flip where `flip`.

    Per image, as torchvision's `resized_crop` (bilinear, antialiased when shrinking); uint8
    input gives rounded uint8 output, float gives float.
    """
    out = torch.empty((len(x), x.shape[1], size, size), dtype=x.dtype)
    for i, box in enumerate(boxes.long().tolist()):
        out[i] = _crop_one(x[i:i + 1], box, size, bool(flip[i]))[0]
    return out


def _hue_one(x: torch.Tensor, shift: float, s: _Scratch) -> torch.Tensor:
    """Rotate the HSV hue of one RGB image `[3, H, W]` in [0, 1] by `shift` turns, in place.

    The same map as torchvision's `adjust_hue` (value = max and chroma = max - min are kept,
    the hue moves around the colour hexagon), written without branches: with hue h in turns
    (h6 = 6h in sextants), the HSV -> RGB formula `V - C * clamp(min(k, 4 - k), 0, 1)` with
    `k = (h6 + n) mod 6` and n = 5, 3, 1 for R, G, B equals `(2 m - V) + 6 C z` with
    `z = clamp(|frac(h + n / 6) - 1/3|, 1/6, 1/3)` and m = min. Comparisons give float masks
    (cheap), not boolean ones.
    """
    r, g, b = x.unbind(0)
    v, m, c, p, q, mask = s.one
    torch.maximum(r, g, out=v)
    torch.maximum(v, b, out=v)
    torch.minimum(r, g, out=m)
    torch.minimum(m, b, out=m)
    torch.sub(v, m, out=c)
    # 6 h C: (g - b) where red is the max, else 2C + b - r where green is, else 4C + r - g
    # (the max channel decided in torchvision's order: red, then green, then blue).
    torch.sub(b, r, out=p)
    p.add_(c, alpha=2.0)
    torch.sub(r, g, out=q)
    q.add_(c, alpha=4.0)
    p.sub_(q)
    torch.eq(v, g, out=mask)
    q.addcmul_(mask, p)  # green or blue branch
    torch.sub(g, b, out=p)
    p.sub_(q)
    torch.eq(v, r, out=mask)
    q.addcmul_(mask, p)  # red branch overrides
    torch.mul(c, 6.0, out=p)
    q.div_(p.clamp_(min=1e-30))  # hue in turns; grey pixels (C = 0) have 0 / tiny = 0
    m.sub_(c)  # 2 m - V
    # r, g, b are no longer needed: z goes into x itself (a smaller working set)
    for i, phase in enumerate(_HUE_PHASE):  # (a broadcast add over channels is much slower)
        torch.add(q, phase + shift, out=x[i])
    x.frac_().sub_(1.0 / 3.0).abs_().clamp_(1.0 / 6.0, 1.0 / 3.0)
    return torch.addcmul(m, p, x, out=x)  # p = 6C (tiny where C = 0, times z <= 1/3)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue of RGB images `[B, 3, H, W]` in [0, 1] rotated by `shift` turns (one per image),
    as torchvision's `adjust_hue`; returns a new tensor."""
    out = x.clone()
    s = _SCRATCH.planes(*x.shape[-2:])
    for i, sh in enumerate(shift.tolist()):
        _hue_one(out[i], sh, s)
    return out


def hue_rotation(shift: torch.Tensor) -> torch.Tensor:
    """`[B, 3, 3]` rotations of RGB space about the grey axis by `shift` turns (Rodrigues'
    formula); the linear stand-in for the HSV hue shift (hparam `hue` = `linear`)."""
    theta = 2 * math.pi * shift
    k = torch.full((3,), 1 / math.sqrt(3.0))
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    cos, sin = theta.cos().view(-1, 1, 1), theta.sin().view(-1, 1, 1)
    return cos * torch.eye(3) + sin * cross + (1 - cos) * torch.outer(k, k)


HUE_MODES = ("hsv", "linear")


def hue_mode(hparams: Mapping[str, Any] | None = None) -> str:
    """The `hue` hparam: `hsv` (default, torchvision's definition) or `linear` (approximate).
    It is part of the trial's spec (and identity) like every hparam; a `SHIFTBENCH_HUE`
    environment variable is refused, so that no setting outside the spec changes training."""
    if "SHIFTBENCH_HUE" in os.environ:
        raise ShiftbenchError(
            "SHIFTBENCH_HUE is no longer read (a trial's inputs are all in its spec); unset it and "
            "pass the hparam instead, e.g. --hparams '{\"hue\": \"linear\"}'")
    mode = str((hparams or {}).get("hue", "hsv"))
    if mode not in HUE_MODES:
        raise ShiftbenchError(f"hue {mode!r} is not one of {', '.join(HUE_MODES)}")
    return mode


def _jitter_one(x: torch.Tensor, factors: Sequence[float], shift: float, order: Sequence[int],
                s: _Scratch, rotation: torch.Tensor | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation (`factors`) and hue (`shift`) of one image `[3, H, W]`
    in [0, 1], in place, in `order` (0-3 in that list), each as torchvision's tensor op:
    `clamp(f x + (1 - f) t, 0, 1)` with t black, the mean luma or the luma image."""
    for op in order:
        if op == 3:
            if rotation is None:
                _hue_one(x, shift, s)
            else:
                mixed = torch.matmul(rotation, x.reshape(3, -1), out=s.three.view(3, -1))
                x.copy_(mixed.view_as(x)).clamp_(0.0, 1.0)
            continue
        f = factors[op]
        if op == 0:
            x.mul_(f)
            if f > 1.0:  # x f <= x <= 1 otherwise
                x.clamp_(max=1.0)
            continue
        if op == 1:  # the mean luma is the luma-weighted mean of the channel means
            means = x.mean((1, 2)).tolist()
            x.mul_(f).add_((1.0 - f) * sum(w * mu for w, mu in zip(GRAY, means)))
        else:
            x.lerp_(_gray_into(x, s.one[0]), 1.0 - f)  # f x + (1 - f) t
        if f > 1.0:  # otherwise a convex combination of values in [0, 1]
            x.clamp_(0.0, 1.0)
    return x


def _jitter_draws(n: int, strength: float, generator: torch.Generator | None,
                  ) -> tuple[list, list, list]:
    """Per-image ColorJitter draws: [b, c, s] factors, hue shifts, and op orders."""
    factors = torch.empty(n, 3).uniform_(1.0 - strength, 1.0 + strength, generator=generator)
    shifts = torch.empty(n).uniform_(-strength, strength, generator=generator)
    order = torch.rand(n, 4, generator=generator).argsort(1)
    return factors.tolist(), shifts.tolist(), order.tolist()


def color_jitter(x: torch.Tensor, strength: float = 0.3,
                 generator: torch.Generator | None = None, hue: str = "hsv") -> torch.Tensor:
    """ColorJitter(strength x 4) of float images `[B, 3, H, W]` in [0, 1], in place: per image
    brightness, contrast, saturation and hue factors and a random order, as torchvision draws
    them. The hue shift is exact (HSV) with `hue="hsv"`; `hue="linear"` rotates RGB space
    about the grey axis instead."""
    factors, shifts, orders = _jitter_draws(len(x), strength, generator)
    rotations = hue_rotation(torch.tensor(shifts)).to(x.dtype) if hue == "linear" else None
    s = _SCRATCH.planes(*x.shape[-2:])
    for i in range(len(x)):
        _jitter_one(x[i], factors[i], shifts[i], orders[i], s,
                    None if rotations is None else rotations[i])
    return x


def _output(shape: Sequence[int]) -> torch.Tensor:
    """An empty float32 batch; in a DataLoader worker, in shared memory (as `default_collate`
    allocates it) so that sending it to the main process copies nothing."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.empty(shape)
    numel = math.prod(shape)
    storage = torch.empty(0)._typed_storage()._new_shared(numel)
    return torch.empty(0).new(storage).view(*shape)


def _to_float(x: torch.Tensor, out: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """uint8 `[3, H, W]` in any memory layout -> float `out` (planar) / 255, mirrored if `flip`
    (a negative-stride view in numpy: the flip costs no extra copy)."""
    src = x.numpy()
    np.copyto(out.numpy(), src[:, :, ::-1] if flip else src, casting="unsafe")
    return out.div_(255.0)


def augment_batch(x: torch.Tensor, size: int, generator: torch.Generator | None = None,
                  hue: str = "hsv") -> torch.Tensor:
    """DomainBed's training augmentation on uint8 `[B, 3, H, W]`, then ImageNet normalisation:
    RandomResizedCrop(size, scale=(0.7, 1)), horizontal flip (p=0.5), ColorJitter(0.3, 0.3, 0.3,
    0.3), RandomGrayscale (p=0.1). Channels-last input (the cache's layout) crops fastest."""
    n, _, height, width = x.shape
    boxes = crop_boxes(n, height, width, generator=generator).long().tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    factors, shifts, orders = _jitter_draws(n, 0.3, generator)
    grays = (torch.rand(n, generator=generator) < 0.1).tolist()
    rotations = hue_rotation(torch.tensor(shifts)) if hue == "linear" else None
    out = _output((n, 3, size, size))
    s = _SCRATCH.planes(size, size)
    for i in range(n):
        crop = _crop_one(x[i:i + 1], boxes[i], size, False)[0]
        image = _to_float(crop, s.image, flips[i])
        _jitter_one(image, factors[i], shifts[i], orders[i], s,
                    None if rotations is None else rotations[i])
        if grays[i]:
            image = _gray_into(image, s.one[0]).unsqueeze(0).expand(3, -1, -1)
        torch.mul(image, _SCALE, out=out[i]).add_(_BIAS)
    return out


def eval_batch(x: torch.Tensor) -> torch.Tensor:
    """uint8 `[B, 3, H, W]` -> ImageNet-normalised float (the evaluation transform after Resize)."""
    out = _output((len(x), 3, *x.shape[2:]))
    for i in range(len(x)):
        np.copyto(out[i].numpy(), x[i].numpy(), casting="unsafe")
        out[i].mul_(_SCALE_U8).add_(_BIAS)
    return out
