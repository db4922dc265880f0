"""TRM: transfer risk minimization (Xu & Jaakkola, "Learning Representations that Support Robust
Transfer of Predictors", 2021), as DomainBed's implementation by the authors.

A representation phi is good if a predictor fitted on one domain transfers to the others. Each
training domain Q has its own linear head h_Q, refitted on the (detached) features of its batch
by 30 SGD steps (lr 0.1) at every update. With R_i(h) = CE(h(phi(x_i)), y_i) on domain i's batch,
alpha a row-normalised matrix of domain weights (GroupDRO-style exponential updates) and
g_Q = dR_Q(h_Q)/dW_Q, g_P = d(sum_{i != Q} alpha_Qi R_i(h_Q))/dW_Q (weights W only, no bias):

    T_Q = sum_{i != Q} alpha_Qi R_i(h_Q) - cos_lambda * (H_Q^{-1} g_P) . g_Q
    L = CE(w(phi(x)), y) + mean_Q T_Q                           (after `iters` ERM updates)
    alpha_Qi <- alpha_Qi * exp(groupdro_eta * alpha_Qi R_i(h_Q)),  then rows renormalised

H_Q^{-1} g_P (the Hessian of R_Q w.r.t. W_Q) is a Neumann series of at most 10 Hessian-vector
products, stopped once an entry exceeds 10; it is treated as a constant. The gradient reaches
phi through the risks R_i(h_Q) and through g_Q (double back-propagation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import autograd, nn

from shiftbench import networks
from shiftbench.algorithms.base import Algorithm, concat_minibatches, make_optimizer, register_algorithm, step
from shiftbench.hparams import HParam, IntLogUniform, LogUniform

HEAD_STEPS, HEAD_LR, NEUMANN_STEPS, NEUMANN_BOUND = 30, 0.1, 10, 10.0


def neumann_inverse_hvp(head: nn.Linear, features: torch.Tensor, y: torch.Tensor, v: torch.Tensor,
                        reference: bool = False) -> torch.Tensor:
    """H^{-1} v ~ sum_{j=0}^{k} (I - H)^j v, H the Hessian of CE(head(features), y) w.r.t.
    head.weight (flattened), k <= NEUMANN_STEPS, stopping after the first partial sum with an
    entry above NEUMANN_BOUND. `reference=True` returns DomainBed's sum instead,
    2 (I - H) v + sum_{j=2}^{k} (I - H)^j v (its in-place update aliases the first term)."""
    features, y = features.detach(), y.detach()
    term = v.detach().clone()
    total = term.clone()
    for k in range(NEUMANN_STEPS):
        loss = F.cross_entropy(head(features), y)
        (g,) = autograd.grad(loss, head.weight, create_graph=True)
        (hv,) = autograd.grad(g.flatten() @ term, head.weight)
        term = term - hv.flatten()
        total = (2 * term if k == 0 and reference else total + term).detach()
        if total.abs().max() > NEUMANN_BOUND:
            break
    return total


@register_algorithm
class TRM(Algorithm):
    """Transfer Risk Minimization (Xu & Jaakkola, 2021); equations in the module docstring.

    Defaults / search (shiftbench = DomainBed): cos_lambda 1e-4 / 10^U(-5,0); iters 200 /
    int(10^U(0,4)) ERM updates first; groupdro_eta 1e-2 / 10^U(-3,-1). `trm_variant`: "paper"
    (shiftbench default: the equations above) or "domainbed" (the DomainBed protocol's value:
    DomainBed's code, which through in-place updates of aliased tensors (a) sums the Neumann
    series as in `neumann_inverse_hvp(reference=True)` and (b) back-propagates the transfer risks
    with the already-updated alpha_Qi while their value uses the old one). The classifier is
    linear (DomainBed ignores nonlinear_classifier; so does this); featurizer and classifier have
    separate Adams, as DomainBed. Departures: the per-domain heads and alpha are part of the
    state (DomainBed keeps the heads in a plain list, so they are not checkpointed); DomainBed's
    `class_balanced` head initialisation is not available (shiftbench has no class_balanced
    sampling); DomainBed's extra (unused) head is not created.
    """

    SETTINGS = ("dg",)
    PAPER = ("Xu & Jaakkola, Learning Representations that Support Robust Transfer of Predictors, "
             "arXiv:2110.09940, 2021")
    HPARAMS = {
        "cos_lambda": HParam(1e-4, LogUniform(-5, 0), low=0.0, help="weight of the gradient-alignment term"),
        "iters": HParam(200, IntLogUniform(0, 4, base=10), low=0, help="ERM updates before TRM"),
        "groupdro_eta": HParam(1e-2, LogUniform(-3, -1), low=0.0, help="step size of the domain weights"),
        "trm_variant": HParam("paper", None, choices=("paper", "domainbed"), variant=True,
                              help="the paper's equations or DomainBed's code (see the docstring)"),
    }
    DOMAINBED_HPARAMS = {
        "trm_variant": HParam("domainbed", None, choices=("paper", "domainbed"), variant=True,
                              help="the paper's equations or DomainBed's code (see the docstring)"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        n = self.featurizer.n_outputs
        self.classifier = nn.Linear(n, num_classes)
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.heads = nn.ModuleList(nn.Linear(n, num_classes) for _ in range(num_domains))
        self.optimizer_f = make_optimizer(self.featurizer.parameters(), self.hparams)
        self.optimizer_c = make_optimizer(self.classifier.parameters(), self.hparams)
        self.optimizer_heads = torch.optim.SGD(self.heads.parameters(), lr=HEAD_LR)
        self.register_buffer("alpha", torch.ones(num_domains, num_domains) - torch.eye(num_domains))

    def fit_heads(self, features: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        """HEAD_STEPS SGD steps of each head h_j on domain j's detached features."""
        for _ in range(HEAD_STEPS):
            loss = sum(F.cross_entropy(h(f.detach()), y) for h, f, y in zip(self.heads, features, ys))
            step(loss, self.optimizer_heads)

    def transfer_risk(self, q: int, features: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
        """T_Q for domain q; multiplies row q of alpha by exp(eta * weighted risk) afterwards."""
        head, others = self.heads[q], [i for i in range(len(features)) if i != q]
        if not others:  # a single training domain has nothing to transfer to
            return features[q].new_zeros(())
        (g_q,) = autograd.grad(F.cross_entropy(head(features[q]), ys[q]), head.weight, create_graph=True)
        risks = {i: F.cross_entropy(head(features[i]), ys[i]) for i in others}
        old = {i: self.alpha[q, i].clone() for i in others}
        transfer = sum(old[i] * risks[i] for i in others)
        (g_p,) = autograd.grad(transfer, head.weight, retain_graph=True)
        reference = self.hparams["trm_variant"] == "domainbed"
        h_inv_g_p = neumann_inverse_hvp(head, features[q], ys[q], g_p.flatten(), reference)
        with torch.no_grad():
            for i in others:
                self.alpha[q, i] *= torch.exp(self.hparams["groupdro_eta"] * old[i] * risks[i])
        if reference:  # same value; the gradient flows with the updated weights, as DomainBed's code
            new = {i: self.alpha[q, i].clone() for i in others}
            transfer = sum(old[i] * r.detach() + new[i] * (r - r.detach()) for i, r in risks.items())
        return transfer - self.hparams["cos_lambda"] * (h_inv_g_p @ g_q.flatten())

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        features = self.featurizer(x)
        nll = F.cross_entropy(self.classifier(features), y)
        loss = nll
        if int(self.num_updates) >= int(self.hparams["iters"]):
            with torch.no_grad():
                self.alpha /= self.alpha.sum(1, keepdim=True)
            parts = list(features.split([len(b) for b, _ in minibatches]))
            ys = [t for _, t in minibatches]
            self.fit_heads(parts, ys)
            loss = nll + sum(self.transfer_risk(q, parts, ys) for q in range(len(parts))) / len(parts)
        step(loss, self.optimizer_f, self.optimizer_c)
        return {"nll": nll.item(), "trm_loss": loss.item() - nll.item()}

    def predict(self, x):
        return self.network(x)


__all__ = ["TRM", "neumann_inverse_hvp"]
