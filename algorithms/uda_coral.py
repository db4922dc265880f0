"""DeepCORAL for unsupervised DA (Sun & Saenko, 2016): align source and target feature covariances.

Loss: CE(source) + lambda * ||C_S - C_T||_F^2 / (4 d^2), where C_S is the covariance of the pooled
source features and C_T that of the unlabeled target features. Target labels are never used.
"""

from __future__ import annotations

import torch

from shiftbench import networks
from shiftbench.algorithms.base import (
    Algorithm,
    concat_minibatches,
    cross_entropy,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.components import classifier_head, coral_distance
from shiftbench.hparams import HParam


@register_algorithm
class DeepCORAL(Algorithm):
    """Source CE plus the CORAL distance between source and target feature covariances."""

    SETTINGS = ("uda",)
    PAPER = "Sun & Saenko, Deep CORAL, ECCV-W 2016"
    HPARAMS = {"coral_weight": HParam(1.0, None, low=0.0, help="weight of the CORAL loss")}

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        self.classifier = classifier_head(self.featurizer.n_outputs, num_classes, self.hparams)
        self.optimizer = make_optimizer(
            list(self.featurizer.parameters()) + list(self.classifier.parameters()), self.hparams)

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        fs = self.featurizer(x)
        cls_loss = cross_entropy(self.classifier(fs), y)
        if unlabeled:
            ft = self.featurizer(torch.cat(list(unlabeled)))
            penalty = coral_distance(fs, ft)
        else:
            penalty = fs.new_zeros(())
        loss = cls_loss + self.hparams["coral_weight"] * penalty
        step(loss, self.optimizer)
        return {"loss": loss.item(), "cls_loss": cls_loss.item(), "coral": penalty.item()}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
