"""Segmentation evaluation: a confusion matrix accumulated over a split -> per-class IoU and mIoU.

`IoU_c = TP_c / (TP_c + FP_c + FN_c)` over every labeled pixel of the split (pixels labelled with
the ignore index count nowhere); mIoU is the mean over the classes whose union is non-empty
(a class absent from both the labels and the predictions of the split has no IoU), as the
Cityscapes evaluation and the adaptation papers compute it over the whole split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shiftbench.datasets.segmentation import IGNORE_INDEX
from shiftbench.trial_record import record_key


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """K x K int64 counts, rows = true class, columns = predicted class (ignored pixels are
    counted in an extra row that is dropped)."""
    t = target.reshape(-1).long()
    bad = (t != ignore_index) & ((t < 0) | (t >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"label {int(t[bad][0])} outside [0, {num_classes}) and not the ignore index")
    t = torch.where(t == ignore_index, num_classes, t)
    counts = torch.bincount(t * num_classes + pred.reshape(-1).long(),
                            minlength=(num_classes + 1) * num_classes)
    return counts.view(num_classes + 1, num_classes)[:num_classes]


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU from a confusion matrix; NaN for classes with an empty union."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(iou: torch.Tensor) -> float:
    present = ~torch.isnan(iou)
    return float(iou[present].mean()) if bool(present.any()) else float("nan")


def class_key(name: str) -> str:
    """A class name as a record-key fragment: `traffic light` -> `traffic_light`."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower())


class SegmentationScores:
    """Accumulates one split's confusion matrix (and, optionally, label-free entropy scores)."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 ignore_index: int = IGNORE_INDEX, entropy: bool = False):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.names = list(class_names) if class_names else [f"class{c}" for c in range(num_classes)]
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.entropy = entropy
        self._ent_sum, self._prob_sum, self._pixels = 0.0, torch.zeros(num_classes, dtype=torch.float64), 0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """`logits` B x K x H x W (resized to the labels' size if needed), `target` B x H x W."""
        if logits.shape[-2:] != target.shape[-2:]:
            from shiftbench.seg_networks import upsample

            logits = upsample(logits.float(), tuple(target.shape[-2:]))
        self.cm += confusion_matrix(logits.argmax(1).cpu(), target.cpu(), self.num_classes,
                                    self.ignore_index)
        if self.entropy:
            p = torch.softmax(logits.float(), dim=1)
            self._ent_sum += float(-(p * torch.log(p.clamp_min(1e-12))).sum(1).sum())
            self._prob_sum += p.sum(dim=(0, 2, 3)).double().cpu()
            self._pixels += p.shape[0] * p.shape[2] * p.shape[3]

    def results(self, env: int, split: str) -> dict[str, float]:
        """Environment `env`'s `split` scores under their record keys (`trial_record.record_key`):
        `miou`, `iou_<class>` (NaN-free: a class without IoU is left out) and, with entropy,
        `entropy` / `marginal_entropy`."""
        iou = iou_per_class(self.cm)
        out = {record_key(env, split, "miou"): mean_iou(iou)}
        for name, value in zip(self.names, iou.tolist()):
            if value == value:
                out[record_key(env, split, f"iou_{class_key(name)}")] = value
        if self.entropy and self._pixels:
            out[record_key(env, split, "entropy")] = self._ent_sum / self._pixels
            q = (self._prob_sum / self._pixels).clamp_min(1e-12)
            out[record_key(env, split, "marginal_entropy")] = float(-(q * q.log()).sum())
        return out
