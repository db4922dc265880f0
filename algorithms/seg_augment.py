"""DACS's strong augmentation of the mixed images (colour jitter and Gaussian blur), as the
released DACS code applies it (`trainUDA.py`, `utils/transformsgpu.py` of vikolss/DACS):

* per iteration ONE draw decides whether the batch is jittered (probability 0.8) and ONE draw
  whether it is blurred (probability 0.5): every mixed image of the step shares the decision;
* per image: brightness, contrast and saturation factors in U(1 - s, 1 + s), a hue shift in
  U(-s, s) of the full hue circle (s = 0.25, kornia's `ColorJitter(s, s, s, s)`), and the blur's
  sigma ~ U(0.15, 1.15) with an odd kernel of about 10% of each image side.

Images are float [B, 3, H, W] in [0, 1]; every operation clamps to [0, 1] (as kornia does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class StrongParams:
    """One iteration's draws: the two batch-level decisions and the per-image factors."""

    jitter: bool
    blur: bool
    factors: torch.Tensor   # B x 4: brightness, contrast, saturation (multiplicative), hue shift
    sigma: torch.Tensor     # B


def draw_strong_params(batch: int, strength: float, generator: torch.Generator | None = None
                       ) -> StrongParams:
    """The draws of one DACS iteration for `batch` mixed images."""
    u = torch.rand(2, generator=generator)
    f = torch.rand(batch, 4, generator=generator) * 2 - 1
    f[:, :3] = 1 + strength * f[:, :3]
    f[:, 3] = strength * f[:, 3]
    sigma = 0.15 + torch.rand(batch, generator=generator)
    return StrongParams(bool(u[0] < 0.8), bool(u[1] < 0.5), f, sigma)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    c = v - x.min(1).values
    safe = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(v == r, ((g - b) / safe) % 6,
                    torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(c > 0, h / 6, torch.zeros_like(h))
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by `shift[i]` (fraction of the circle)."""
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(hsv)


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation (factors[:, :3]) then hue (factors[:, 3]), clamped."""
    f = factors.to(x.device, x.dtype).view(-1, 4, 1, 1, 1)
    x = (x * f[:, 0]).clamp(0, 1)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = ((x - grey.mean((2, 3), keepdim=True)) * f[:, 1] + grey.mean((2, 3), keepdim=True)).clamp(0, 1)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = ((x - grey) * f[:, 2] + grey).clamp(0, 1)
    return shift_hue(x.float(), factors[:, 3].to(x.device)).to(x.dtype).clamp(0, 1)


def kernel_size(side: int) -> int:
    """The released code's kernel side for an image side: about 10%, odd."""
    c = math.ceil(0.1 * side)
    return int(math.floor(c - 0.5 + c % 2))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a batch (reflect padding), kernel `kernel_size` per axis."""
    out = x
    for axis, side in ((3, x.shape[3]), (2, x.shape[2])):
        k = max(1, kernel_size(side))
        t = torch.arange(k, dtype=torch.float32, device=x.device) - (k - 1) / 2
        g = torch.exp(-(t ** 2) / (2 * sigma ** 2))
        g = (g / g.sum()).to(x.dtype)
        c = x.shape[1]
        shape = (1, 1, 1, k) if axis == 3 else (1, 1, k, 1)
        pad = (k // 2, (k - 1) // 2, 0, 0) if axis == 3 else (0, 0, k // 2, (k - 1) // 2)
        kernel = g.view(shape).expand(c, 1, *shape[2:]).contiguous()
        out = F.conv2d(F.pad(out, pad, mode="reflect"), kernel, groups=c)
    return out


def dacs_augment(x: torch.Tensor, params: StrongParams) -> torch.Tensor:
    """Apply one iteration's `params` to the mixed images `x`."""
    if params.jitter:
        x = color_jitter(x, params.factors)
    if params.blur:
        x = torch.cat([gaussian_blur(x[i:i + 1], float(params.sigma[i])) for i in range(len(x))])
    return x.clamp(0, 1)
