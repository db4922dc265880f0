"""Regularised ERM for domain generalization: RSC, SD and SelfReg (DomainBed's definitions).

All three pool the source batches (x, y), use features z = phi(x), logits f = w(z), and take one
Adam step per update; the unlabeled argument is ignored.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shiftbench.algorithms.base import concat_minibatches, cross_entropy, register_algorithm, step
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import HParam, LogUniform, Uniform


class _OneStep(ERM):
    SETTINGS = ("dg",)


@register_algorithm
class RSC(_OneStep):
    """Representation self-challenging (DomainBed's feature-vector form of the paper's muting).

    g = d(sum_i f_i[y_i]) / dz. Per sample, the features whose g lies in the top `f_drop` fraction
    are muted (mask_f); the muting is kept only for the `b_drop` fraction of samples whose
    true-class probability drops most, the others keep every feature (mask_b). Loss:
    CE(w(z * (mask_f OR mask_b)), y). Quantiles interpolate linearly (numpy's percentile).
    The paper mutes channels or spatial positions of the last conv map; DomainBed (and we) mute
    dimensions of the pooled feature vector.
    """

    PAPER = "Huang et al., Self-Challenging Improves Cross-Domain Generalization, ECCV 2020"
    HPARAMS = {
        "rsc_f_drop_factor": HParam(1 / 3, Uniform(0, 0.5), low=0.0, high=1.0,
                                    help="fraction of feature dimensions muted per sample"),
        "rsc_b_drop_factor": HParam(1 / 3, Uniform(0, 0.5), low=0.0, high=1.0,
                                    help="fraction of samples that are challenged"),
    }

    def masks(self, z: torch.Tensor, y: torch.Tensor):
        """(mask_f, mask_b, final mask) for features z (no gradient through the masks)."""
        onehot = F.one_hot(y, self.num_classes).to(z.dtype)
        z_ = z.detach().requires_grad_()
        logits = self.classifier(z_)
        g = torch.autograd.grad((logits * onehot).sum(), z_)[0]
        with torch.no_grad():
            thr_f = torch.quantile(g, 1 - self.hparams["rsc_f_drop_factor"], dim=1, keepdim=True)
            mask_f = g < thr_f
            p = (F.softmax(logits, 1) * onehot).sum(1)
            p_muted = (F.softmax(self.classifier(z_ * mask_f), 1) * onehot).sum(1)
            change = p - p_muted
            mask_b = (change < torch.quantile(change, 1 - self.hparams["rsc_b_drop_factor"]))[:, None]
        return mask_f, mask_b, (mask_f | mask_b).to(z.dtype)

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        z = self.featurizer(x)
        _, _, mask = self.masks(z, y)
        loss = cross_entropy(self.classifier(z * mask), y)
        step(loss, self.optimizer)
        return {"loss": loss.item(), "muted_fraction": float(1 - mask.mean())}


@register_algorithm
class SD(_OneStep):
    """Spectral decoupling: L = CE(f, y) + sd_reg * mean(f^2), the squared logits averaged over
    examples and classes (DomainBed's form of the paper's (lambda/2) ||f||^2; sd_reg = 0 is ERM)."""

    PAPER = "Pezeshki et al., Gradient Starvation: A Learning Proclivity in Neural Networks, NeurIPS 2021"
    HPARAMS = {"sd_reg": HParam(0.1, LogUniform(-5, -1), low=0.0, help="weight of the logit penalty")}

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        logits = self.predict(x)
        ce = cross_entropy(logits, y)
        penalty = (logits ** 2).mean()
        loss = ce + self.hparams["sd_reg"] * penalty
        step(loss, self.optimizer)
        # DomainBed's keys: "loss" is the CE; the full objective is reported separately
        return {"loss": ce.item(), "penalty": penalty.item(), "objective": loss.item()}


def within_class_permutation(y: torch.Tensor) -> torch.Tensor:
    """A random permutation of the batch that maps every example to one of the same class."""
    perm = torch.arange(len(y), device=y.device)
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        perm[idx] = idx[torch.randperm(len(idx), device=y.device)]
    return perm


def class_run_partners(y_sorted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random same-class partners for a class-sorted batch, as DomainBed's SelfReg draws
    them: for each run of equal labels (runs start where the label changes, the first run at 0
    even when empty), two `randperm`s of the run, in run order."""
    ends, prev = [], 0
    for i, label in enumerate(y_sorted.tolist()):
        if label != prev:
            ends.append(i)
            prev = label
    ends.append(len(y_sorted))
    a = torch.arange(len(y_sorted), device=y_sorted.device)
    b = a.clone()
    start = 0
    for end in ends:
        a[start:end] = torch.randperm(end - start).to(a.device) + start
        b[start:end] = torch.randperm(end - start).to(a.device) + start
        start = end
    return a, b


def _gather_rows(tensors, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    """(t[a], t[b]) for each t, built row by row into zero tensors in DomainBed's order: the same
    values as fancy indexing, and DomainBed's order of summing the gradients (exact parity)."""
    out = [torch.zeros_like(t) for t in tensors for _ in (a, b)]
    for i in range(len(a)):
        for k, t in enumerate(tensors):
            out[2 * k][i] = t[a[i]]
        for k, t in enumerate(tensors):
            out[2 * k + 1][i] = t[b[i]]
    return out


@register_algorithm
class SelfReg(_OneStep):
    """Self-supervised contrastive regularisation (DomainBed's SelfReg).

    For each example two random same-class partners a, b (within-class shuffles, any domain);
    a projector P (Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN) on the features; lambda ~ Beta(0.5, 0.5):
        L_ind = MSE(f, f_a) + 0.3 MSE(z, P(z)_a)
        L_hdl = MSE(f, lam f_a + (1-lam) f_b) + 0.3 MSE(z, lam P(z)_a + (1-lam) P(z)_b)
        L = CE(f, y) + min(CE, 1) * (lam L_ind + (1 - lam) L_hdl)      (min(CE, 1) as a constant)
    As DomainBed, lambda is drawn from numpy's generator, the batch is sorted by class and the
    partners are drawn run by run after the forward pass (so seeded runs match DomainBed's).
    P keeps its random initial weights (only its BatchNorm statistics move), as in DomainBed,
    whose optimizer is built before P; `selfreg_train_projector` also trains P.
    """

    PAPER = ("Kim et al., SelfReg: Self-supervised Contrastive Regularization for Domain "
             "Generalization, ICCV 2021")
    HPARAMS = {"selfreg_train_projector": HParam(False, None, variant=True, help=(
        "optimise the projector too (DomainBed never does)"))}

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        d = self.featurizer.n_outputs
        h = d if d == 2048 else 2 * d
        self.projector = nn.Sequential(
            nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(),
            nn.Linear(h, d), nn.BatchNorm1d(d))
        if self.hparams["selfreg_train_projector"]:
            self.optimizer.add_param_group({"params": list(self.projector.parameters())})

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        lam = float(np.random.beta(0.5, 0.5))
        y, order = torch.sort(y)
        z = self.featurizer(x[order])
        proj, logits = self.projector(z), self.classifier(z)
        a, b = class_run_partners(y)
        logits_a, logits_b, proj_a, proj_b = _gather_rows((logits, proj), a, b)
        l_ind = F.mse_loss(logits, logits_a) + 0.3 * F.mse_loss(z, proj_a)
        l_hdl = (F.mse_loss(logits, lam * logits_a + (1 - lam) * logits_b)
                 + 0.3 * F.mse_loss(z, lam * proj_a + (1 - lam) * proj_b))
        ce = cross_entropy(logits, y)
        loss = ce + min(ce.item(), 1.0) * (lam * l_ind + (1 - lam) * l_hdl)
        step(loss, self.optimizer)
        return {"loss": loss.item(), "ce": ce.item(), "l_ind": l_ind.item(), "l_hdl": l_hdl.item()}
