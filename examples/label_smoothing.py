"""A plug-in algorithm in a user's own file, for `shiftbench compare`:

    shiftbench compare --algorithm LabelSmoothing --import label_smoothing \
        --against ERM CORAL --suite digits-dg

(run from this directory, or with it on PYTHONPATH).
"""

import torch.nn.functional as F

from shiftbench.algorithms.base import concat_minibatches, register_algorithm, step
from shiftbench.algorithms.erm import ERM


@register_algorithm
class LabelSmoothing(ERM):
    """ERM with label smoothing (Szegedy et al., "Rethinking the Inception Architecture",
    CVPR 2016): the cross-entropy against targets (1 - eps) one-hot + eps / C uniform,
    eps = 0.1; the network, optimizer and hparams are ERM's."""

    PAPER = "Szegedy et al. 2016, Rethinking the Inception Architecture (label smoothing)"
    EPSILON = 0.1

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        loss = F.cross_entropy(self.predict(x), y, label_smoothing=self.EPSILON)
        step(loss, self.optimizer)
        return {"loss": loss.item()}
