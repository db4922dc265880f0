"""Gradient-agreement objectives for domain generalization: ANDMask, SANDMask, IGA.

Each computes the gradient g_e of every training domain's risk R_e separately (one forward per
domain, as DomainBed) and combines them: masked averaging (ANDMask, SANDMask) or a penalty on
their spread (IGA).
"""

from __future__ import annotations

import torch
from torch import autograd

from shiftbench.algorithms.base import cross_entropy, register_algorithm, step
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import HParam, LogUniform, Uniform


def domain_gradients(alg: ERM, minibatches, create_graph: bool = False):
    """(per-domain risks, per-domain gradient tuples over `alg.network.parameters()`)."""
    params = list(alg.network.parameters())
    risks, grads = [], []
    for x, y in minibatches:
        risk = cross_entropy(alg.network(x), y)
        risks.append(risk)
        grads.append(autograd.grad(risk, params, create_graph=create_graph))
    return risks, grads


def and_mask(grads: torch.Tensor, tau: float) -> torch.Tensor:
    """1 where at least a fraction `tau` of the domains agree in sign: |mean_e sign(g_e)| >= tau."""
    return (torch.sign(grads).mean(0).abs() >= tau).to(grads.dtype)


def sand_mask(grads: torch.Tensor, tau: float, k: float) -> torch.Tensor:
    """DomainBed's smooth AND-mask: max(0, tanh(k * Var_e(g_e)^-1 * (|mean_e sign(g_e)| - tau))),
    evaluated in DomainBed's order (k * (1/var) rounds differently from k / var)."""
    var = grads.var(0)
    var[torch.isnan(var)] = 1e-17
    mask = torch.tanh(k * var.pow(-1) * (torch.sign(grads).mean(0).abs() - tau)).clamp_min(0.0)
    mask[torch.isnan(mask)] = 1e-17
    return mask


def masked_mean_gradient(grads: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mask * mean_e g_e, rescaled by the inverse fraction of the mask that is on.

    DomainBed's order of operations on purpose: (mask * mean) * (1 / (1e-10 + fraction)). Dividing
    by (1e-10 + fraction) instead rounds differently, and Adam turns those last-bit differences on
    near-zero gradient components into parameter differences of up to 3e-3 within 4 updates."""
    fraction = mask.sum() / mask.numel()
    grad = mask * grads.mean(0)
    grad *= 1.0 / (1e-10 + fraction)
    return grad


class _MaskedGradient(ERM):
    SETTINGS = ("dg",)

    def mask(self, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, minibatches, unlabeled=None):
        risks, grads = domain_gradients(self, minibatches)
        self.optimizer.zero_grad(set_to_none=True)
        for i, p in enumerate(self.network.parameters()):
            stacked = torch.stack([g[i] for g in grads])
            p.grad = masked_mean_gradient(stacked, self.mask(stacked))
        self.optimizer.step()
        return {"loss": sum(r.item() / len(risks) for r in risks)}


@register_algorithm
class ANDMask(_MaskedGradient):
    """AND-mask (Parascandolo et al., ICLR 2021): keep only gradient components the domains agree on.

    Per parameter component: m = 1[|mean_e sign(g_e)| >= tau], and the update direction is
    m * mean_e g_e / (fraction of components kept), applied with Adam (DomainBed's form).
    tau = 1 keeps only components whose sign agrees in every domain; tau = 0 is ERM.
    """

    PAPER = ("Parascandolo, Neitz, Orvieto, Gresele & Schoelkopf, Learning explanations that are "
             "hard to vary, ICLR 2021")
    HPARAMS = {"tau": HParam(1.0, Uniform(0.5, 1.0), low=0.0, high=1.0,
                             help="sign-agreement threshold")}

    def mask(self, grads):
        return and_mask(grads, self.hparams["tau"])


@register_algorithm
class SANDMask(_MaskedGradient):
    """Smoothed AND-mask (Shahtalebi et al., 2021), in the form its authors gave DomainBed.

    m = max(0, tanh(k * (|mean_e sign(g_e)| - tau) / Var_e(g_e))) in [0, 1): a soft AND-mask
    that grows with sign agreement and shrinks with the spread of the domain gradients; the update
    is m * mean_e g_e / mean(m). Departure: DomainBed's default tau = 1 makes m identically 0
    (tanh of a non-positive number, clipped at 0), so no update would ever be made; we default to
    tau = 0.5, the centre of DomainBed's search range U(0, 1).
    """

    PAPER = ("Shahtalebi, Gagnon-Audet, Laleh, Faramarzi, Ahuja & Rish, SAND-mask: An Enhanced "
             "Gradient Masking Strategy for the Discovery of Invariances in Domain Generalization, "
             "arXiv:2106.02266, 2021")
    HPARAMS = {
        "tau": HParam(0.5, Uniform(0.0, 1.0), low=0.0, high=1.0, help="sign-agreement threshold"),
        "k": HParam(10.0, LogUniform(-3, 5), low=0.0, help="steepness of the tanh mask"),
    }
    # DomainBed's default tau = 1 (with which the mask is 0 and nothing trains), kept under
    # its protocol so that its hparams_seed 0 configuration is reproduced.
    DOMAINBED_HPARAMS = {
        "tau": HParam(1.0, Uniform(0.0, 1.0), low=0.0, high=1.0, help="sign-agreement threshold"),
    }

    def mask(self, grads):
        return sand_mask(grads, self.hparams["tau"], self.hparams["k"])


@register_algorithm
class IGA(ERM):
    """Inter-environmental Gradient Alignment (Koyama & Yamaguchi, 2020), as DomainBed.

    L = mean_e R_e + penalty * sum_e ||g_e - g_bar||^2,  g_e = grad R_e, g_bar = grad mean_e R_e,
    i.e. the trace of the covariance of the domain gradients, minimised by double back-propagation.
    (g_bar is held constant as in DomainBed; since sum_e (g_e - g_bar) = 0 this leaves the
    gradient of the penalty unchanged.)
    """

    SETTINGS = ("dg",)
    PAPER = ("Koyama & Yamaguchi, When is invariance useful in an Out-of-Distribution Generalization "
             "problem?, arXiv:2008.01883, 2020")
    HPARAMS = {"penalty": HParam(1000.0, LogUniform(1, 5), low=0.0, help="gradient-variance weight")}

    def update(self, minibatches, unlabeled=None):
        risks, grads = domain_gradients(self, minibatches, create_graph=True)
        mean_risk = torch.stack(risks).mean()
        mean_grad = autograd.grad(mean_risk, list(self.network.parameters()), retain_graph=True)
        penalty = sum((g - m).pow(2).sum() for grad in grads for g, m in zip(grad, mean_grad))
        loss = mean_risk + self.hparams["penalty"] * penalty
        step(loss, self.optimizer)
        return {"loss": mean_risk.item(), "penalty": penalty.item()}
