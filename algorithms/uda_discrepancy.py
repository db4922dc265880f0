"""Discrepancy-based unsupervised domain adaptation: DAN, MCC, MCD, MDD.

Each adds to the source cross-entropy a measure of disagreement computed on unlabeled target
data: a kernel two-sample statistic (DAN), the confusion between predicted classes (MCC), the
disagreement of two classifiers (MCD) or of an adversarial auxiliary head (MDD). Several source
domains are pooled into one source; several target batches into one target. Target labels are
never available to these algorithms. All use Adam (the benchmark's optimizer) instead of the
papers' SGD with inverse-decay learning rates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from shiftbench import networks
from shiftbench.algorithms.base import (
    Algorithm,
    concat_minibatches,
    cross_entropy,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.components import classifier_head, dann_schedule, entropy, grad_reverse
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import Choice, HParam, LogUniform, Uniform

MMD_ESTIMATORS = ("quadratic", "linear")


def _target(name: str, unlabeled) -> torch.Tensor:
    if not unlabeled:
        raise ShiftbenchError(f"{name} needs unlabeled target batches (--task uda)")
    return torch.cat(list(unlabeled))


def mk_mmd(a: torch.Tensor, b: torch.Tensor, estimator: str = "quadratic",
           multipliers: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0)) -> torch.Tensor:
    """Multi-kernel MMD^2 with Gaussian kernels `exp(-||u - v||^2 / (2 sigma^2))`,
    sigma^2 = m * s2, one per multiplier m, where s2 is the mean pairwise squared distance of the
    pooled sample (detached, so the bandwidth is not trained), as TLlib's DAN.
    `quadratic`: the biased all-pairs estimate (>= 0, 0 for identical samples). `linear`:
    Gretton et al.'s unbiased linear-time estimate over disjoint pairs
    (2i, 2i+1), as in the DAN paper; needs >= 2 examples per side, may be negative."""
    if estimator not in MMD_ESTIMATORS:
        raise ShiftbenchError(f"unknown MMD estimator {estimator!r}; valid: {', '.join(MMD_ESTIMATORS)}")
    z = torch.cat([a, b])
    d2 = torch.cdist(z, z).pow(2)
    n = len(z)
    s2 = (d2.detach().sum() / max(n * n - n, 1)).clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (2 * m * s2)) for m in multipliers)
    na = len(a)
    if estimator == "quadratic":
        return k[:na, :na].mean() + k[na:, na:].mean() - 2 * k[:na, na:].mean()
    m = min(na, len(b)) // 2 * 2
    if m < 2:
        raise ShiftbenchError("the linear-time MMD estimator needs >= 2 examples per domain")
    i, j = torch.arange(0, m, 2), torch.arange(1, m, 2)
    si, sj, ti, tj = i, j, na + i, na + j
    return (k[si, sj] + k[ti, tj] - k[si, tj] - k[sj, ti]).mean()


def mcc_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Minimum class confusion: with `P = softmax(z / T)` and detached weights
    `w_i = B (1 + e^{-H_i}) / sum_j (1 + e^{-H_j})`, `C = P^T diag(w) P`, row-normalised;
    the loss is `sum_{j != j'} C_jj' / K` (0 for one-hot predictions over distinct classes)."""
    p = F.softmax(logits / temperature, dim=1)
    w = 1.0 + torch.exp(-entropy(logits.detach() / temperature, reduction="none"))
    w = len(w) * w / w.sum()
    c = p.T @ (w[:, None] * p)
    c = c / c.sum(dim=1, keepdim=True).clamp_min(1e-12)
    k = c.shape[0]
    return (c.sum() - c.trace()) / k


def classifier_discrepancy(l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """MCD's `d(p1, p2) = mean_{i,k} |p1_ik - p2_ik|` on softmax outputs."""
    return (F.softmax(l1, dim=1) - F.softmax(l2, dim=1)).abs().mean()


class _SourcePlusTarget(Algorithm):
    """Featurizer + classifier with one optimizer; `update` adds `penalty(fs, ft, logits)`."""

    SETTINGS = ("uda",)

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        self.classifier = classifier_head(self.featurizer.n_outputs, num_classes, self.hparams)
        self.build_extra()
        self.optimizer = make_optimizer(self.parameters(), self.hparams)

    def build_extra(self) -> None:
        """Extra trainable modules, created before the optimizer."""

    def penalty(self, f, logits, n_source: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, minibatches, unlabeled=None):
        xs, ys = concat_minibatches(minibatches)
        xt = _target(type(self).__name__, unlabeled)
        f = self.featurizer(torch.cat([xs, xt]))
        logits = self.classifier(f)
        cls_loss = cross_entropy(logits[: len(xs)], ys)
        terms = self.penalty(f, logits, len(xs))
        loss = cls_loss + sum(terms.values())
        step(loss, self.optimizer)
        return {"loss": loss.item(), "cls_loss": cls_loss.item(),
                **{k: v.item() for k, v in terms.items()}}

    def predict(self, x):
        return self.classifier(self.featurizer(x))


@register_algorithm
class DAN(_SourcePlusTarget):
    """Deep Adaptation Network (Long, Cao, Wang & Jordan, ICML 2015).

    `L = CE(source) + w(p) * (MK-MMD^2(f_s, f_t) + MK-MMD^2(z_s, z_t))` on the featurizer output f
    and the logits z, with 5 Gaussian kernels of bandwidths 2^k * mean squared distance
    (k = -3..1, equal weights). Departures: the paper adapts fc6-fc8 of AlexNet and learns the
    kernel weights beta; we adapt the two last layers with fixed equal weights (as TLlib).
    Default weight 0.1, not the paper's 1 (on a pretrained AlexNet): trained from scratch, weight 1
    lets the MMD term collapse every feature to one point (MMD = 0, chance accuracy) on the
    rotated-moons benchmark (docs/adaptation.md). Also by default (`mmd_warmup`) the weight is
    ramped up with DANN's schedule `2 / (1 + exp(-10 p)) - 1`, as the same authors do for JAN and
    CDAN: without it, from scratch on the built-in digits, MMD from the first step kept the
    classifier at chance (source CE never fell below 2.30 in 600 steps, both trial seeds).
    Estimator: `mmd_estimator` = quadratic (biased, all pairs; default, as batches are small on
    CPU) or linear (the paper's unbiased linear-time estimate).
    """

    PAPER = ("Long, Cao, Wang & Jordan, Learning Transferable Features with Deep Adaptation "
             "Networks, ICML 2015")
    HPARAMS = {
        "mmd_weight": HParam(0.1, LogUniform(-2, 0), low=0.0, help="trade-off of the MMD terms"),
        "mmd_estimator": HParam("quadratic", None, choices=("quadratic", "linear"), variant=True,
                                help="quadratic (biased) or linear (unbiased)"),
        "mmd_on_logits": HParam(True, None, variant=True, help="also match the logits (the last layer)"),
        "mmd_warmup": HParam(True, None, variant=True, help="ramp the weight up with DANN's schedule"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)

    def penalty(self, f, logits, n_source):
        est = self.hparams["mmd_estimator"]
        mmd = mk_mmd(f[:n_source], f[n_source:], est)
        if self.hparams["mmd_on_logits"]:
            mmd = mmd + mk_mmd(logits[:n_source], logits[n_source:], est)
        weight = self.hparams["mmd_weight"]
        if self.hparams["mmd_warmup"]:
            weight = weight * dann_schedule(self.progress)
        return {"mmd": weight * mmd}


@register_algorithm
class MCC(_SourcePlusTarget):
    """Minimum Class Confusion (Jin, Wang, Long & Wang, ECCV 2020).

    `L = CE(labeled) + mu * L_MCC(z_t / T)`, L_MCC the entropy-weighted, row-normalised class
    confusion of the target predictions off the diagonal, divided by K (see `mcc_loss`).
    Defaults T = 2.5, mu = 1 (paper). In `ssda` the few labeled target examples join the CE.
    """

    SETTINGS = ("uda", "ssda")
    PAPER = "Jin, Wang, Long & Wang, Minimum Class Confusion for Versatile Domain Adaptation, ECCV 2020"
    HPARAMS = {
        "mcc_temperature": HParam(2.5, Uniform(1.5, 4.0), low=1e-6, help="softmax temperature T"),
        "mcc_weight": HParam(1.0, LogUniform(-1, 0.5), low=0.0, help="mu"),
    }

    def penalty(self, f, logits, n_source):
        loss = mcc_loss(logits[n_source:], float(self.hparams["mcc_temperature"]))
        return {"mcc": self.hparams["mcc_weight"] * loss}


@register_algorithm
class MDD(_SourcePlusTarget):
    """Margin Disparity Discrepancy (Zhang, Liu, Long & Jordan, ICML 2019).

    Main head f, auxiliary head f' fed through R_lambda; with y_s, y_t the (constant) argmax
    predictions of f, the adversarial term is
    `A = gamma * CE(f'(R(phi_s)), y_s) - mean log(1 - softmax(f'(R(phi_t)))[y_t])`, and
    `L = CE(f(phi_s), y) + eta * A`. f' descends A (i.e. maximises the gamma-margin disparity),
    the featurizer ascends it through the reversal. lambda = `grl_max` * DANN schedule (0.1, as
    the authors' code); margin gamma = 4 (the paper's Office-31 value).
    """

    PAPER = ("Zhang, Liu, Long & Jordan, Bridging Theory and Algorithm for Domain Adaptation, "
             "ICML 2019")
    HPARAMS = {
        "mdd_margin": HParam(4.0, Choice([2.0, 3.0, 4.0]), low=0.0, help="gamma"),
        "mdd_weight": HParam(1.0, LogUniform(-1, 0.5), low=0.0, help="eta"),
        "grl_max": HParam(0.1, Choice([0.1, 1.0]), low=0.0, help="largest reversal coefficient"),
    }

    def build_extra(self):
        self.adv_classifier = classifier_head(self.featurizer.n_outputs, self.num_classes, self.hparams)

    def penalty(self, f, logits, n_source):
        lam = self.hparams["grl_max"] * dann_schedule(self.progress)
        adv = self.adv_classifier(grad_reverse(f, lam))
        pred = logits.detach().argmax(dim=1)
        src = F.cross_entropy(adv[:n_source], pred[:n_source])
        tgt_logits, tgt_pred = adv[n_source:], pred[n_source:]
        # log(1 - p_y) = logsumexp over the other classes - logsumexp over all (stable)
        others = tgt_logits.scatter(1, tgt_pred[:, None], float("-inf"))
        log_not_y = torch.logsumexp(others, dim=1) - torch.logsumexp(tgt_logits, dim=1)
        disparity = self.hparams["mdd_margin"] * src - log_not_y.mean()
        return {"mdd": self.hparams["mdd_weight"] * disparity}


@register_algorithm
class MCD(Algorithm):
    """Maximum Classifier Discrepancy (Saito, Watanabe, Ushiku & Harada, CVPR 2018).

    Generator G and two classifiers F1, F2 (separate Adam optimizers); per update:
      A. min_{G,F1,F2} CE(F1(G(x_s)), y) + CE(F2(G(x_s)), y);
      B. G fixed: min_{F1,F2} CE_s(F1) + CE_s(F2) - w * d(F1(G(x_t)), F2(G(x_t)));
      C. F1, F2 fixed: min_G w * d(F1(G(x_t)), F2(G(x_t))), repeated `num_k` times (paper: 4),
    with `d` the mean absolute difference of the softmax outputs. `predict` returns the mean of
    the two classifiers' logits (the paper reports F1, F2 and their ensemble).
    """

    SETTINGS = ("uda",)
    PAPER = ("Saito, Watanabe, Ushiku & Harada, Maximum Classifier Discrepancy for Unsupervised "
             "Domain Adaptation, CVPR 2018")
    HPARAMS = {
        "num_k": HParam(4, Choice([1, 2, 4]), low=1, help="generator steps C per update"),
        "discrepancy_weight": HParam(1.0, LogUniform(-0.5, 0.5), low=0.0, help="w"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        self.heads = torch.nn.ModuleList(  # F1, F2: independent random initialisations
            [classifier_head(self.featurizer.n_outputs, num_classes, self.hparams) for _ in range(2)])
        self.optimizer = make_optimizer(self.featurizer.parameters(), self.hparams)
        self.head_optimizer = make_optimizer(self.heads.parameters(), self.hparams)

    def _source_ce(self, fs, ys):
        return sum(cross_entropy(head(fs), ys) for head in self.heads)

    def _discrepancy(self, ft):
        return classifier_discrepancy(self.heads[0](ft), self.heads[1](ft))

    def update(self, minibatches, unlabeled=None):
        xs, ys = concat_minibatches(minibatches)
        xt = _target("MCD", unlabeled)
        w = self.hparams["discrepancy_weight"]
        # A: everything on the source
        loss_a = self._source_ce(self.featurizer(xs), ys)
        step(loss_a, self.optimizer, self.head_optimizer)
        # B: classifiers only, maximise the target discrepancy while fitting the source
        with torch.no_grad():
            fs, ft = self.featurizer(xs), self.featurizer(xt)
        disc_b = self._discrepancy(ft)
        loss_b = self._source_ce(fs, ys) - w * disc_b
        step(loss_b, self.head_optimizer)
        # C: generator only, minimise the discrepancy
        for p in self.heads.parameters():
            p.requires_grad_(False)
        try:
            for _ in range(int(self.hparams["num_k"])):
                disc_c = self._discrepancy(self.featurizer(xt))
                step(w * disc_c, self.optimizer)
        finally:
            for p in self.heads.parameters():
                p.requires_grad_(True)
        return {"loss_a": loss_a.item(), "discrepancy_b": disc_b.item(),
                "discrepancy_c": disc_c.item()}

    def predict(self, x):
        f = self.featurizer(x)
        return (self.heads[0](f) + self.heads[1](f)) / 2
