"""Batched data augmentation on tensors, for the self-training methods (FixMatch, Mean Teacher, DACS).

Everything works on a whole batch on its device and draws its randomness from `generator` (or
torch's global generator when None), so results are reproducible under `torch.manual_seed`.

Images `(B, C, H, W)`:
* `random_flip` — horizontal flip with probability p (off by default: digits are not symmetric);
* `random_shift` — translation by up to `max_frac` of the side, with edge replication (the
  "flip-and-shift" weak view of FixMatch);
* `color_jitter` — per-sample brightness, contrast and saturation factors in [1 - s, 1 + s],
  clamped to the batch's value range (a tensor stand-in for torchvision's ColorJitter);
* `cutout` — one box of area `(frac * min(H, W))^2` per image set to that image's mean;
* `box_mask` — CutMix-style boxes covering a given area fraction per sample (DACS).

Vectors `(B, d)` have no geometry or colour, so the analogues are Gaussian noise scaled by the
batch's per-feature standard deviation (weak) plus replacing a random subset of features by their
batch mean (strong; the counterpart of cutout).
"""

from __future__ import annotations

import math

import torch

from shiftbench.errors import ShiftbenchError


def _rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device="cpu").to(like.device, like.dtype)


def _check_image(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ShiftbenchError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")


def random_flip(x: torch.Tensor, p: float = 0.5, generator=None) -> torch.Tensor:
    """Flip each image left-right with probability `p`."""
    _check_image(x)
    flip = (_rand((x.shape[0],), x, generator) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def random_shift(x: torch.Tensor, max_frac: float = 0.125, generator=None) -> torch.Tensor:
    """Translate each image by an integer offset in [-m, m]^2, m = round(max_frac * side)."""
    _check_image(x)
    b, _, h, w = x.shape
    m = int(round(max_frac * min(h, w)))
    if m == 0:
        return x
    padded = torch.nn.functional.pad(x, (m, m, m, m), mode="replicate")
    offsets = (_rand((b, 2), x, generator) * (2 * m + 1)).long().clamp_(max=2 * m)
    rows = (offsets[:, 0, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (offsets[:, 1, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chan, rows, cols]


def color_jitter(x: torch.Tensor, strength: float = 0.4, generator=None) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn per sample from U(1 - s, 1 + s)."""
    _check_image(x)
    if strength <= 0:
        return x
    b = x.shape[0]
    factors = 1 + strength * (2 * _rand((3, b, 1, 1, 1), x, generator) - 1)
    lo, hi = x.amin(), x.amax()
    out = x * factors[0]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factors[1] + mean
    gray = out.mean(dim=1, keepdim=True)
    out = (out - gray) * factors[2] + gray
    return out.clamp(lo, hi)


def box_mask(shape: tuple[int, ...], ratio: torch.Tensor, generator=None,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """Float masks of `shape = (B, H, W)`, each a box of area about `ratio[i] * H * W`.

    The box has about the image's aspect ratio (width rounded so the area is closest to the
    ratio) and a uniformly random position; use the mask's own mean for the exact fraction.
    """
    b, h, w = shape
    ratio = ratio.to("cpu", torch.float64).clamp(0, 1)
    bh = (ratio.sqrt() * h).round().long().clamp(0, h)
    bw = (ratio * h * w / bh.clamp(min=1)).round().long().clamp(0, w)  # area closest to ratio
    u = torch.rand((b, 2), generator=generator, dtype=torch.float64)
    top = (u[:, 0] * (h - bh + 1)).long()
    left = (u[:, 1] * (w - bw + 1)).long()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = ((rows >= top.view(b, 1, 1)) & (rows < (top + bh).view(b, 1, 1))
              & (cols >= left.view(b, 1, 1)) & (cols < (left + bw).view(b, 1, 1)))
    return inside.float().to(device)


def cutout(x: torch.Tensor, frac: float = 0.5, generator=None) -> torch.Tensor:
    """Replace one box of area `(frac * min(H, W))^2` per image by that image's mean value."""
    _check_image(x)
    if frac <= 0:
        return x
    b, _, h, w = x.shape
    side = min(1.0, frac * min(h, w) / math.sqrt(h * w))
    mask = box_mask((b, h, w), torch.full((b,), side ** 2), generator, x.device).unsqueeze(1)
    fill = x.mean(dim=(1, 2, 3), keepdim=True)
    return x * (1 - mask) + fill * mask


def feature_noise(x: torch.Tensor, scale: float, generator=None) -> torch.Tensor:
    """Vectors: add N(0, (scale * batch std of each feature)^2)."""
    std = x.detach().std(dim=0, keepdim=True) if x.shape[0] > 1 else torch.ones_like(x[:1])
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
    return x + scale * std * noise


def feature_dropout(x: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Vectors: replace each feature by its batch mean with probability `p` (cutout's analogue)."""
    drop = _rand(x.shape, x, generator) < p
    return torch.where(drop, x.detach().mean(dim=0, keepdim=True).expand_as(x), x)


def weak_augment(x: torch.Tensor, flip: bool = False, generator=None) -> torch.Tensor:
    """FixMatch's weak view: (flip and) shift for images; small feature noise for vectors."""
    if x.dim() == 2:
        return feature_noise(x, 0.1, generator)
    if flip:
        x = random_flip(x, 0.5, generator)
    return random_shift(x, 0.125, generator)


def strong_augment(x: torch.Tensor, flip: bool = False, jitter: float = 0.4,
                   cutout_frac: float = 0.5, generator=None) -> torch.Tensor:
    """A strong view: weak view, colour jitter and cutout (vectors: more noise, feature dropout)."""
    if x.dim() == 2:
        return feature_dropout(feature_noise(x, 0.3, generator), 0.2, generator)
    x = weak_augment(x, flip, generator)
    x = color_jitter(x, jitter, generator)
    return cutout(x, cutout_frac, generator)


def photometric_augment(x: torch.Tensor, jitter: float = 0.25, generator=None) -> torch.Tensor:
    """Appearance-only augmentation (no geometry, so masks stay aligned): DACS's strong view."""
    if x.dim() == 2:
        return feature_noise(x, jitter, generator)
    return color_jitter(x, jitter, generator)
