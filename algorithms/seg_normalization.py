"""BatchNorm-based adaptation for segmentation: AdaBN (uda), BN re-estimation and Tent (tta).

The segmentation networks normalise with BatchNorm, so the classification methods carry over:
the statistics are pooled over batch *and* pixel positions, and Tent's entropy is the mean over
pixels. Each class states how it relates to its classification counterpart.
"""

from __future__ import annotations

import torch

from shiftbench.algorithms.base import register_algorithm
from shiftbench.algorithms.seg_base import SegAlgorithm, pixel_entropy, seg_loss
from shiftbench.algorithms.test_time import TentAdaptation, batch_norms, using_batch_statistics
from shiftbench.algorithms.uda_normalization import estimate_bn_statistics


@register_algorithm
class SegAdaBN(SegAlgorithm):
    """AdaBN (Li et al., Pattern Recognition 2018) for segmentation: source-only training (BN
    with source batch statistics; running statistics not updated by source batches), then every
    BN layer's mean/var replaced by the exact statistics of its input over the whole unlabeled
    target split (`estimate_bn_statistics`, layer by layer, pooled over images and pixels),
    computed by the round hook before the budget's last step, which leaves the weights alone.
    Between, a running EMA of target statistics (momentum 0.1) serves intermediate checkpoints.
    As the classification `AdaBN`, without its input BatchNorm."""

    SAME_METHOD_AS = "AdaBN"
    SETTINGS = ("uda",)
    PAPER = ("Li, Wang, Shi, Hou & Liu, Adaptive Batch Normalization for practical domain "
             "adaptation, Pattern Recognition 2018")

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.register_buffer("finalised", torch.zeros((), dtype=torch.bool))

    def _momentum(self, value: float) -> None:
        for bn in batch_norms(self.network):
            bn.momentum = value

    def update(self, minibatches, unlabeled=None):
        if self.finalised:
            return {"finalised": 1.0}
        xs, ys = self.source_batch(minibatches)
        self._momentum(0.0)
        loss = seg_loss(self.network.forward_all(xs).logits, ys)
        self.step(loss)
        if unlabeled:
            self._momentum(0.1)
            with torch.no_grad():
                self.network.forward_all(torch.cat(list(unlabeled)))
        return {"loss": loss.item()}

    def round_interval(self):
        return max(1, self.total_steps - 1)

    def on_round(self, target_batches):
        if int(self.num_updates) < self.total_steps - 1:
            return {}
        n = estimate_bn_statistics(self.network, target_batches)
        self.finalised.fill_(True)
        return {"adabn_target_images": float(n)}


class _SegTTA(SegAlgorithm):
    SETTINGS = ("tta",)

    def update(self, minibatches, unlabeled=None):
        xs, ys = self.source_batch(minibatches)
        loss = seg_loss(self.network.forward_all(xs).logits, ys)
        self.step(loss)
        return {"loss": loss.item()}


@register_algorithm
class SegBNAdapt(_SegTTA):
    """Test-time BN re-estimation for segmentation (Schneider et al. 2020; Tent's "norm"):
    source-only training; `adapt(x)` normalises every BN layer with the test batch's own
    statistics over images and pixels. As the classification `BNAdapt`."""

    SAME_METHOD_AS = "BNAdapt"
    PAPER = "Schneider et al., Improving robustness against common corruptions by covariate " \
            "shift adaptation, NeurIPS 2020"

    @torch.no_grad()
    def adapt(self, x):
        with using_batch_statistics(self.network):
            return self.network(x)


@register_algorithm
class SegTent(TentAdaptation, _SegTTA):
    """Tent (Wang et al., ICLR 2021) for segmentation: per test batch, `tent_steps` Adam steps
    (lr `tent_lr`) on the BN affine parameters only, minimising the mean pixel entropy of the
    batch-statistics prediction; `adapt` returns the logits of the last forward (before its
    update); `reset_adaptation` restores weights and optimiser. As the classification `Tent`
    with the entropy averaged over pixels (Tent's segmentation experiments do the same)."""

    SAME_METHOD_AS = "Tent"
    PAPER = TentAdaptation.PAPER

    def tent_entropy(self, logits):
        return pixel_entropy(logits.float()).mean()
