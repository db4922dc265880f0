"""ERM: empirical risk minimisation over the pooled source domains (Vapnik, 1998).

Loss: L = CE(w(phi(x)), y) over the concatenation of every labeled batch; one Adam step.
In the adaptation settings it is the "source only" baseline (uda) and "S+T" (ssda/sda: the few
labeled target examples are pooled with the sources); unlabeled target data is ignored.
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
from shiftbench.algorithms.components import classifier_head


@register_algorithm
class ERM(Algorithm):
    """Empirical risk minimisation: minimise the average cross-entropy of all labeled data."""

    SETTINGS = ("dg", "uda", "ssda", "sda")
    PAPER = "Vapnik, The Nature of Statistical Learning Theory, 1998"
    FEATURIZER_NORM = "default"  # subclasses that adapt BatchNorm statistics set "batch"

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams, norm=self.FEATURIZER_NORM)
        self.classifier = classifier_head(self.featurizer.n_outputs, num_classes, self.hparams)
        self.network = torch.nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = make_optimizer(self.network.parameters(), self.hparams)

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        loss = cross_entropy(self.predict(x), y)
        step(loss, self.optimizer)
        return {"loss": loss.item()}

    def predict(self, x):
        return self.network(x)
