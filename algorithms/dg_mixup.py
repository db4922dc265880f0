"""Inter-domain Mixup for domain generalization (DomainBed's `Mixup`)."""

from __future__ import annotations

import numpy as np
import torch

from shiftbench.algorithms.base import cross_entropy, register_algorithm, step
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import HParam, LogUniform


def random_domain_pairs(minibatches):
    """Shuffle the domains, pair each with the next one (cyclically), truncate to equal length."""
    order = torch.randperm(len(minibatches)).tolist()
    pairs = []
    for k, i in enumerate(order):
        j = order[(k + 1) % len(order)]
        (xi, yi), (xj, yj) = minibatches[i], minibatches[j]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


@register_algorithm
class Mixup(ERM):
    """Inter-domain Mixup (Yan et al., 2020; Wang et al., 2020; as in DomainBed).

    For each cyclic pair (i, j) of randomly ordered domains, lam ~ Beta(alpha, alpha) (one draw
    per pair), x = lam x_i + (1 - lam) x_j and
        L_ij = lam CE(f(x), y_i) + (1 - lam) CE(f(x), y_j);   L = mean over pairs of L_ij.
    The labels are mixed with the same lam as the inputs (in the loss, not as soft targets).
    """

    SETTINGS = ("dg",)
    PAPER = ("Yan et al., Improve Unsupervised Domain Adaptation with Mixup Training, arXiv:2001.00677, "
             "2020; Wang et al., Heterogeneous Domain Generalization via Domain Mixup, ICASSP 2020")
    HPARAMS = {"mixup_alpha": HParam(0.2, LogUniform(-1, 1), low=0.0,
                                     help="concentration of the Beta(alpha, alpha) mixing weight")}

    def sample_lambda(self) -> float:
        """Beta(alpha, alpha) from numpy's generator, as DomainBed (seeded by the trainer)."""
        alpha = float(self.hparams["mixup_alpha"])
        return float(np.random.beta(alpha, alpha))

    def update(self, minibatches, unlabeled=None):
        loss = 0.0
        pairs = random_domain_pairs(minibatches)
        for (xi, yi), (xj, yj) in pairs:
            lam = self.sample_lambda()
            logits = self.predict(lam * xi + (1 - lam) * xj)
            loss = loss + lam * cross_entropy(logits, yi) + (1 - lam) * cross_entropy(logits, yj)
        loss = loss / len(pairs)
        step(loss, self.optimizer)
        return {"loss": loss.item()}
