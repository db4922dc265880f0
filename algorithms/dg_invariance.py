"""Invariance objectives for domain generalization: IRM, VREx and EQRM.

All three see one labeled batch per training domain e and its risk R_e = CE(f(x_e), y_e). They
follow DomainBed's schedule: for the first `*_anneal_iters` / `*_burnin_iters` updates the
penalty weight is 1 (IRM, VREx) or the loss is plain ERM (EQRM); at exactly that update the Adam
optimizer is re-created, because its moment estimates do not suit the sudden jump in gradient
scale. Steps are counted in updates (`num_updates`, a buffer, so the schedule survives a resume).
"""

from __future__ import annotations

import torch
from torch import autograd

from shiftbench.algorithms.base import cross_entropy, make_optimizer, register_algorithm, step
from shiftbench.algorithms.erm import ERM
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import HParam, IntLogUniform, LogUniform, Uniform


def annealed_weight(alg: ERM, anneal_iters: int, weight: float, lr: float | None = None) -> float:
    """DomainBed's penalty schedule: 1.0 before `anneal_iters` updates, then `weight`.

    At update number `anneal_iters` exactly, `alg.optimizer` is replaced by a fresh Adam over
    `alg.network` (learning rate `lr` if given, else the configured one).
    """
    t = int(alg.num_updates)
    if t == int(anneal_iters):
        alg.optimizer = make_optimizer(alg.network.parameters(), alg.hparams, lr=lr)
    return float(weight) if t >= int(anneal_iters) else 1.0


PER_DOMAIN_FORWARD = HParam(False, None, variant=True, help=(
    "one forward pass per domain (DomainBed's GroupDRO/EQRM: BatchNorm statistics per domain) "
    "instead of one over the pooled batch"))


def domain_risks(alg: ERM, minibatches) -> torch.Tensor:
    """The vector of per-domain mean CE: one forward pass over the pooled batch, or one per
    domain when the `per_domain_forward` hparam is set (they differ only through BatchNorm)."""
    if alg.hparams.get("per_domain_forward", False):
        return torch.stack([cross_entropy(alg.network(x), y) for x, y in minibatches])
    logits = alg.network(torch.cat([x for x, _ in minibatches]))
    chunks = logits.split([len(x) for x, _ in minibatches])
    return torch.stack([cross_entropy(lg, y) for lg, (_, y) in zip(chunks, minibatches)])


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IRMv1 penalty ||d/ds R(s * logits)|_{s=1}||^2, estimated without bias as the product of the
    gradients on the even-indexed and odd-indexed halves of the batch (as DomainBed)."""
    scale = torch.ones((), dtype=logits.dtype, device=logits.device, requires_grad=True)
    if len(y) < 2:  # no two halves: fall back to the (biased) squared gradient
        (g,) = autograd.grad(cross_entropy(logits * scale, y), [scale], create_graph=True)
        return g * g
    (g1,) = autograd.grad(cross_entropy(logits[::2] * scale, y[::2]), [scale], create_graph=True)
    (g2,) = autograd.grad(cross_entropy(logits[1::2] * scale, y[1::2]), [scale], create_graph=True)
    return g1 * g2



@register_algorithm
class IRM(ERM):
    """Invariant Risk Minimization, IRMv1 (Arjovsky et al., 2019).

    L = mean_e R_e + w(t) * mean_e P_e,   P_e = (dR_e(s * logits_e)/ds at s = 1)^2,
    P_e estimated as the product of the gradients on the even and odd halves of domain e's batch;
    w(t) = 1 for t < irm_penalty_anneal_iters, then irm_lambda, with an Adam reset at the switch
    (DomainBed). Departure from the paper's Colored-MNIST script: the loss is not divided by
    w(t) when w(t) > 1 (DomainBed does not either).
    """

    SETTINGS = ("dg",)
    PAPER = "Arjovsky, Bottou, Gulrajani & Lopez-Paz, Invariant Risk Minimization, arXiv:1907.02893, 2019"
    HPARAMS = {
        "irm_lambda": HParam(1e2, LogUniform(-1, 5), low=0.0, help="penalty weight after annealing"),
        "irm_penalty_anneal_iters": HParam(500, IntLogUniform(0, 4, base=10), low=0,
                                           help="updates with penalty weight 1 before irm_lambda"),
    }

    def update(self, minibatches, unlabeled=None):
        weight = annealed_weight(self, self.hparams["irm_penalty_anneal_iters"], self.hparams["irm_lambda"])
        logits = self.network(torch.cat([x for x, _ in minibatches]))
        chunks = logits.split([len(x) for x, _ in minibatches])
        nll = torch.stack([cross_entropy(lg, y) for lg, (_, y) in zip(chunks, minibatches)]).mean()
        penalty = torch.stack([irm_penalty(lg, y) for lg, (_, y) in zip(chunks, minibatches)]).mean()
        loss = nll + weight * penalty
        step(loss, self.optimizer)
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


@register_algorithm
class VREx(ERM):
    """Risk Extrapolation, V-REx (Krueger et al., ICML 2021).

    L = mean_e R_e + w(t) * Var_e(R_e) (population variance over the training domains);
    w(t) = 1 for t < vrex_penalty_anneal_iters, then vrex_lambda, Adam reset at the switch (DomainBed).
    """

    SETTINGS = ("dg",)
    PAPER = "Krueger et al., Out-of-Distribution Generalization via Risk Extrapolation (REx), ICML 2021"
    HPARAMS = {
        "vrex_lambda": HParam(1e1, LogUniform(-1, 5), low=0.0, help="variance weight after annealing"),
        "vrex_penalty_anneal_iters": HParam(500, IntLogUniform(0, 4, base=10), low=0,
                                            help="updates with penalty weight 1 before vrex_lambda"),
    }

    def update(self, minibatches, unlabeled=None):
        weight = annealed_weight(self, self.hparams["vrex_penalty_anneal_iters"],
                                 self.hparams["vrex_lambda"])
        risks = domain_risks(self, minibatches)
        nll = risks.mean()
        penalty = ((risks - nll) ** 2).mean()
        loss = nll + weight * penalty
        step(loss, self.optimizer)
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


def kde_quantile(risks: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha-quantile of a Gaussian KDE of `risks` (bandwidth 1.06 * std * n^(-1/5), as DomainBed).

    The root of F(q) = mean_i Phi((q - r_i) / h) = alpha is found by bisection without gradient;
    the gradient is then attached by the implicit function theorem, dq = -dF / (dF/dq), so it
    reaches every risk (and the bandwidth), not only the bracket ends as a differentiated
    bisection would.
    """
    n = risks.numel()
    std = risks.std() if n > 1 else risks.new_zeros(())
    h = (1.06 * std * n ** -0.2).clamp_min(1e-6)
    normal = torch.distributions.Normal(0.0, 1.0)
    with torch.no_grad():
        r, hd = risks.detach().double(), h.detach().double()
        z = normal.icdf(torch.tensor(float(alpha), dtype=torch.float64))
        lo, hi = r.min() + hd * z, r.max() + hd * z
        for _ in range(80):
            mid = (lo + hi) / 2
            if normal.cdf((mid - r) / hd).mean() > alpha:
                hi = mid
            else:
                lo = mid
        q = ((lo + hi) / 2).to(risks.dtype)
        density = torch.exp(normal.log_prob((q - risks.detach()) / h.detach())).mean() / h.detach()
    cdf = normal.cdf((q - risks) / h).mean()
    return q - (cdf - cdf.detach()) / density.clamp_min(1e-12)


def kde_quantile_domainbed(risks: torch.Tensor, alpha: float) -> torch.Tensor:
    """DomainBed's estimate of the same KDE quantile: 32 bisection steps on the bracket
    [min r + h z_alpha, max r + h z_alpha] (z_alpha = Phi^-1(alpha), h = 1.06 std n^-1/5,
    alpha in float64 as DomainBed's buffer), the result differentiated through the bracket ends
    only (the comparisons carry no gradient)."""
    r = torch.sort(risks).values
    h = 1.06 * r.std() * r.numel() ** -0.2
    a = torch.tensor(float(alpha), dtype=torch.float64, device=risks.device)
    lo = torch.distributions.Normal(r[0], h).icdf(a)
    hi = torch.distributions.Normal(r[-1], h).icdf(a)
    mid = 0.5 * (lo + hi)
    for _ in range(32):
        with torch.no_grad():
            above = torch.distributions.Normal(r, h).cdf(mid.expand(len(r))).mean() > a
        lo, hi = (lo, mid) if above else (mid, hi)
        new_mid = 0.5 * (lo + hi)
        if new_mid == mid:
            break
        mid = new_mid
    return mid


def gaussian_quantile(risks: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha-quantile of a normal fitted to `risks`: mean + std * Phi^-1(alpha)."""
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(float(alpha)))
    std = risks.std() if risks.numel() > 1 else risks.new_zeros(())
    return risks.mean() + std * z.to(risks.dtype)


@register_algorithm
class EQRM(ERM):
    """Empirical Quantile Risk Minimization (Eastwood et al., NeurIPS 2022), Algorithm 1.

    Burn-in (t < eqrm_burnin_iters): L = mean_e R_e (ERM). Afterwards L = Q_alpha({R_e}), the
    alpha-quantile of the distribution of per-domain risks, estimated with a Gaussian KDE
    (`eqrm_dist="kde"`, the paper's choice) or a fitted normal (`"gaussian"`, the paper's
    parametric variant: mean + std * Phi^-1(alpha)); Adam is reset with the small lr `eqrm_lr`
    at update t = eqrm_burnin_iters exactly (DomainBed).

    Under `--protocol domainbed`: `eqrm_dist="kde_domainbed"` (DomainBed's bisection, whose
    gradient reaches only the extreme risks; `"kde"` takes the exact gradient by the implicit
    function theorem), one forward pass per domain, and eqrm_burnin_iters drawn as a float
    10^U(2.5, 3.5) as DomainBed, which then never hits t == burn-in: no Adam reset in drawn
    configurations, as in DomainBed.
    """

    SETTINGS = ("dg",)
    PAPER = "Eastwood et al., Probable Domain Generalization via Quantile Risk Minimization, NeurIPS 2022"
    HPARAMS = {
        "eqrm_quantile": HParam(0.75, Uniform(0.5, 0.99), low=0.0, high=1.0,
                                help="alpha: the quantile of the risk distribution minimised"),
        "eqrm_burnin_iters": HParam(2500, IntLogUniform(2.5, 3.5, base=10), low=0,
                                    help="ERM updates before the quantile objective"),
        "eqrm_lr": HParam(1e-6, LogUniform(-7, -5), low=0.0, help="Adam lr after the burn-in"),
        "eqrm_dist": HParam("kde", None, choices=("kde", "gaussian", "kde_domainbed"), variant=True,
                            help="risk-distribution estimate: kde, gaussian or kde_domainbed"),
        "per_domain_forward": PER_DOMAIN_FORWARD,
    }
    DOMAINBED_HPARAMS = {
        "eqrm_burnin_iters": HParam(2500, LogUniform(2.5, 3.5), low=0,
                                    help="ERM updates before the quantile objective"),
        "eqrm_dist": HParam("kde_domainbed", None, choices=("kde", "gaussian", "kde_domainbed"),
                            variant=True, help="risk-distribution estimate"),
        "per_domain_forward": HParam(True, None, variant=True, help=PER_DOMAIN_FORWARD.help),
    }
    DISTS = {"kde": kde_quantile, "gaussian": gaussian_quantile,
             "kde_domainbed": kde_quantile_domainbed}

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        alpha = float(self.hparams["eqrm_quantile"])
        if not 0.0 < alpha < 1.0:
            raise ShiftbenchError(f"eqrm_quantile must lie in (0, 1), got {alpha}")

    def update(self, minibatches, unlabeled=None):
        burnin, t = self.hparams["eqrm_burnin_iters"], int(self.num_updates)
        if t == burnin:  # Adam reset at the switch
            self.optimizer = make_optimizer(self.network.parameters(), self.hparams,
                                            lr=self.hparams["eqrm_lr"])
        risks = domain_risks(self, minibatches)
        if t < burnin:
            loss = risks.mean()
        else:
            loss = self.DISTS[self.hparams["eqrm_dist"]](risks, self.hparams["eqrm_quantile"])
        step(loss, self.optimizer)
        return {"loss": loss.item(), "mean_risk": risks.mean().item()}


__all__ = ["IRM", "VREx", "EQRM", "irm_penalty", "kde_quantile", "gaussian_quantile",
           "annealed_weight", "domain_risks"]
