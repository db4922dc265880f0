"""The training protocol of the real segmentation benchmarks (GTA5 / SYNTHIA -> Cityscapes), as
the papers' released code runs it, expressed as hparams the road-scene datasets read:

* `source_size`, `target_size` ("WxH", or "input" = the dataset's INPUT_SHAPE): training images
  of the source and of the (unlabeled) target are resized to this size first (images bilinear,
  labels nearest), e.g. GTA5 1280x720 and Cityscapes 1024x512 in DACS and AdaptSegNet;
* `crop_size` ("WxH" or "none"): then a random crop of this size (DACS: 512x512);
* `random_flip`: then a horizontal flip with probability 0.5 (off in both released configs);
* `target_split`: "seeded" (the engine's seeded splits of all Cityscapes images) or "official"
  (the Cityscapes `train` images are the unlabeled target split, the 500 `val` images are the
  evaluation (`in`) split, no `out` split);
* `eval_labels`: "input" (evaluation labels resized to the input, nearest: DACS's
  `evaluateUDA.py`) or "full" (the original 2048x1024 label maps, predictions upsampled to
  them: AdaptSegNet's and ADVENT's evaluation);
* `poly_steps`: the horizon of the poly learning-rate decay (0 = the run's steps); AdaptSegNet
  decays over 250k iterations and stops at 150k.

Evaluation images are always resized to the dataset's INPUT_SHAPE (512x1024). The defaults are
the plain protocol (every image resized to the input, seeded splits); the presets in
`shiftbench.presets` (`dacs_gta5`, `adaptsegnet_gta5`, ...) set the papers' values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import DatasetInfo, HParam


def parse_size(value: str, name: str) -> tuple[int, int] | None:
    """ "WxH" -> (H, W); "input" / "none" -> None."""
    if value in ("input", "none", ""):
        return None
    try:
        w, h = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        raise ShiftbenchError(f"{name}={value!r}: expected WIDTHxHEIGHT (e.g. 1280x720) or "
                              f"{'input' if name != 'crop_size' else 'none'}") from None
    if w < 1 or h < 1:
        raise ShiftbenchError(f"{name}={value!r}: sizes must be positive")
    return h, w


def resize_pair(x: torch.Tensor, y: torch.Tensor, size: tuple[int, int] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [3, H, W] float (bilinear) and label map [H, W] uint8 (nearest) to `size` (H, W)."""
    if size is not None and tuple(x.shape[1:]) != size:
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    if size is not None and tuple(y.shape) != size:
        y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].to(y.dtype)
    return x, y


def random_crop_flip(x: torch.Tensor, y: torch.Tensor, crop: tuple[int, int] | None, flip: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random `crop` (H, W) of the pair (the image must be at least that large) and a random
    horizontal flip, from torch's generator (the loader workers' seeded one)."""
    if crop is not None:
        h, w = y.shape
        if h < crop[0] or w < crop[1]:
            raise ShiftbenchError(f"crop_size {crop[1]}x{crop[0]} is larger than the resized "
                                  f"image {w}x{h}")
        top = int(torch.randint(h - crop[0] + 1, ()))
        left = int(torch.randint(w - crop[1] + 1, ()))
        x, y = x[:, top:top + crop[0], left:left + crop[1]], y[top:top + crop[0], left:left + crop[1]]
    if flip and bool(torch.rand(()) < 0.5):
        x, y = x.flip(-1), y.flip(-1)
    return x.contiguous(), y.contiguous()


def _road(ds: DatasetInfo) -> bool:
    from shiftbench.datasets import get_dataset_class

    try:
        return bool(getattr(get_dataset_class(ds.name), "ROAD_PROTOCOL", False))
    except Exception:
        return False


def _declared(hparam: HParam):
    return lambda ds: hparam if _road(ds) else None


PROTOCOL_HPARAMS = {
    "source_size": _declared(HParam("input", None, help="source training resize WxH or input")),
    "target_size": _declared(HParam("input", None, help="target training resize WxH or input")),
    "crop_size": _declared(HParam("none", None, help="random training crop WxH or none")),
    "random_flip": _declared(HParam(False, None, help="random horizontal flip of training images")),
    "target_split": _declared(HParam("seeded", None, choices=("seeded", "official"),
                                     help="Cityscapes train = unlabeled target, val = test")),
    "eval_labels": _declared(HParam("input", None, choices=("input", "full"),
                                    help="evaluation labels resized to the input or full size")),
}
