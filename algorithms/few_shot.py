"""Semi-supervised DA with a few labeled target examples: MME.

The "S+T" baseline of the SSDA literature (train on sources plus the few labeled target examples,
ignore the unlabeled target) is `ERM` itself in the `ssda`/`sda` settings: its `update` pools every
labeled batch it is given, which there includes the labeled target batch. No separate class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench import networks
from shiftbench.algorithms.base import (
    Algorithm,
    concat_minibatches,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.components import grad_reverse
from shiftbench.hparams import Choice, HParam, LogUniform


class CosineClassifier(nn.Module):
    """Logits `<w_k / ||w_k||, f / ||f||> / T`: prototypes compared by cosine similarity."""

    def __init__(self, in_features: int, num_classes: int, temperature: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) * 0.05)
        self.temperature = float(temperature)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).T / self.temperature


def adversarial_entropy(classifier: nn.Module, feats: torch.Tensor, lam: float) -> torch.Tensor:
    """MME's unlabeled loss `lam * mean_i sum_k p_ik log p_ik` (= -lam * mean entropy) with the
    features passed through a gradient reversal layer: minimising it *raises* the entropy through
    the classifier and *lowers* it through the featurizer."""
    p = F.softmax(classifier(grad_reverse(feats, 1.0)), dim=1)
    return lam * (p * torch.log(p + 1e-5)).sum(dim=1).mean()


@register_algorithm
class MME(Algorithm):
    """MME (Saito et al., ICCV 2019): minimax entropy for semi-supervised domain adaptation.

    Featurizer F, cosine classifier C with temperature T (0.05). Per step, two updates:
    (1) min_{F,C} CE(C(F(x)), y) over sources and the few labeled target examples;
    (2) min over C of -lambda H and min over F of +lambda H on the unlabeled target, with
    H = mean_i -sum_k p_ik log p_ik, implemented as one loss `adversarial_entropy` and a gradient
    reversal layer between F and C (lambda = 0.1). The classifier's prototypes move towards the
    unlabeled target (entropy up), the features cluster around them (entropy down).
    Departure: Adam with the benchmark's lr instead of SGD (lr 0.01, momentum 0.9).
    """

    SETTINGS = ("ssda",)
    PAPER = "Saito, Kim, Sclaroff, Darrell & Saenko, Semi-supervised domain adaptation via minimax " \
            "entropy, ICCV 2019"
    HPARAMS = {
        "mme_lambda": HParam(0.1, LogUniform(-1.5, -0.5), low=0.0, help="entropy trade-off lambda"),
        "mme_temperature": HParam(0.05, Choice([0.05, 0.1]), low=1e-6, help="cosine temperature T"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        self.classifier = CosineClassifier(self.featurizer.n_outputs, num_classes,
                                           self.hparams["mme_temperature"])
        self.optimizer = make_optimizer(self.parameters(), self.hparams)

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        ce = F.cross_entropy(self.predict(x), y)
        step(ce, self.optimizer)
        values = {"loss": ce.item(), "cls_loss": ce.item()}
        if unlabeled:
            adent = adversarial_entropy(self.classifier, self.featurizer(torch.cat(list(unlabeled))),
                                        self.hparams["mme_lambda"])
            step(adent, self.optimizer)
            values["neg_entropy_loss"] = adent.item()
        return values

    def predict(self, x):
        return self.classifier(self.featurizer(x))
