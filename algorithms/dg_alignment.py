"""Feature-distribution matching for domain generalization: CORAL, MMD, CausIRL-CORAL/MMD.

All use DomainBed's two distances between feature batches a (n x d) and b (m x d):
  * "mean_cov" (CORAL): mean_k (mu_a - mu_b)_k^2 + mean_kl (C_a - C_b)_kl^2, unbiased covariances.
    Unlike Deep CORAL's ||C_a - C_b||_F^2 / (4 d^2), DomainBed's CORAL also matches the MEANS
    and averages the squared covariance differences over the d^2 entries (4x the paper's scale).
  * "gaussian" (MMD): biased MMD^2 with the kernel sum_g exp(-g ||u - v||^2),
    g in {1e-3, 1e-2, ..., 1e3}.
"""

from __future__ import annotations

import numpy as np
import torch

from shiftbench.algorithms.base import cross_entropy, register_algorithm, step
from shiftbench.algorithms.components import mmd_gaussian
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import HParam, LogUniform


def mean_cov_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DomainBed's CORAL distance: squared mean difference + squared covariance difference,
    each averaged over its entries (`4 * coral_distance`), in DomainBed's operation order."""
    mean_a, mean_b = a.mean(0, keepdim=True), b.mean(0, keepdim=True)
    ca, cb = a - mean_a, b - mean_b
    cov_a = (ca.t() @ ca) / (len(a) - 1) if len(a) > 1 else ca.t() @ ca  # one example: 0
    cov_b = (cb.t() @ cb) / (len(b) - 1) if len(b) > 1 else cb.t() @ cb
    return (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


DISTANCES = {"mean_cov": mean_cov_distance, "gaussian": mmd_gaussian}
_GAMMA = {"mmd_gamma": HParam(1.0, LogUniform(-1, 1), low=0.0, help="weight of the matching penalty")}


class _FeatureMatching(ERM):
    """L = mean_e CE_e + mmd_gamma * penalty(features); subclasses define `penalty`."""

    SETTINGS = ("dg",)
    HPARAMS = _GAMMA
    KERNEL = "mean_cov"

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return DISTANCES[self.KERNEL](a, b)

    def penalty(self, features: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def update(self, minibatches, unlabeled=None):
        features = [self.featurizer(x) for x, _ in minibatches]
        ce = torch.stack([cross_entropy(self.classifier(f), y)
                          for f, (_, y) in zip(features, minibatches)]).mean()
        penalty = self.penalty(features)
        loss = ce + self.hparams["mmd_gamma"] * penalty
        step(loss, self.optimizer)
        return {"loss": ce.item(), "penalty": penalty.item()}


class _Pairwise(_FeatureMatching):
    def penalty(self, features):
        pairs = [(i, j) for i in range(len(features)) for j in range(i + 1, len(features))]
        if not pairs:
            return features[0].new_zeros(())
        return torch.stack([self.distance(features[i], features[j]) for i, j in pairs]).mean()


@register_algorithm
class CORAL(_Pairwise):
    """Deep CORAL across training domains (Sun & Saenko, 2016), in DomainBed's form.

    L = mean_e CE_e + mmd_gamma * mean_{i<j} [ mean(mu_i - mu_j)^2 + mean(C_i - C_j)^2 ]
    over every pair of training domains, on the featurizer output. Departure from the paper
    (kept for DomainBed comparability): the means are matched too, and the covariance term is
    averaged over the d^2 entries instead of divided by 4 d^2.
    """

    PAPER = "Sun & Saenko, Deep CORAL: Correlation Alignment for Deep Domain Adaptation, ECCV-W 2016"
    KERNEL = "mean_cov"


@register_algorithm
class MMD(_Pairwise):
    """MMD feature matching across training domains (Li et al., CVPR 2018, MMD-AAE), as DomainBed.

    L = mean_e CE_e + mmd_gamma * mean_{i<j} MMD^2(phi(x_i), phi(x_j)), biased estimate with the
    multi-bandwidth Gaussian kernel sum_g exp(-g ||u - v||^2), g in {1e-3, ..., 1e3}. Only the
    MMD term of MMD-AAE is used (no adversarial autoencoder), as in DomainBed.
    """

    PAPER = "Li, Pan, Wang & Kot, Domain Generalization with Adversarial Feature Learning, CVPR 2018"
    KERNEL = "gaussian"


class _CausIRL(_FeatureMatching):
    def random_parts(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut each domain's batch at a uniform random point in [0, n) (numpy's generator, as
        DomainBed); pool the heads and tails."""
        cuts = [int(np.random.randint(0, len(f))) for f in features]
        first = torch.cat([f[:c] for f, c in zip(features, cuts)])
        second = torch.cat([f[c:] for f, c in zip(features, cuts)])
        return first, second

    def penalty(self, features):
        first, second = self.random_parts(features)
        if len(first) < 2 or len(second) < 2:
            return features[0].new_zeros(())
        return torch.nan_to_num(self.distance(first, second))


_CAUSIRL_DOC = """CausIRL-{k} (Chevalier et al., 2022), as DomainBed's AbstractCausIRL.

    L = mean_e CE_e + mmd_gamma * D(phi(S_1), phi(S_2)), D = {d}. S_1, S_2 are two random parts of
    the POOLED batch (not domains): each domain's batch is cut at a uniform random point, the heads
    form S_1 and the tails S_2, so the two parts mix the domains in different random proportions;
    matching them makes the features' distribution independent of the (interventional) domain mix.
    """


@register_algorithm
class CausIRL_CORAL(_CausIRL):  # noqa: N801 - DomainBed's name
    __doc__ = _CAUSIRL_DOC.format(k="CORAL", d="DomainBed's mean+covariance distance")
    PAPER = ("Chevalier et al., Invariant Causal Mechanisms through Distribution Matching, "
             "arXiv:2206.11646, 2022")
    KERNEL = "mean_cov"


@register_algorithm
class CausIRL_MMD(_CausIRL):  # noqa: N801 - DomainBed's name
    __doc__ = _CAUSIRL_DOC.format(k="MMD", d="the multi-bandwidth Gaussian MMD^2")
    PAPER = CausIRL_CORAL.PAPER
    KERNEL = "gaussian"
