"""Information-bottleneck objectives for domain generalization: IB_ERM and IB_IRM.

Ahuja et al. (NeurIPS 2021) show that invariance alone (IRM) fails when the invariant features
fully reveal the label, and that an information bottleneck on the representation fixes it. The
bottleneck is implemented, as in the paper's code and DomainBed, by the variance of the features:

    IB(phi) = mean_e mean_k Var_{x in batch e}[phi_k(x)]   (unbiased variance, per domain e)

Both add it with weight `ib_lambda` after `ib_penalty_anneal_iters` updates (weight 0 before)
and re-create Adam at the switch, as DomainBed does.
"""

from __future__ import annotations

import torch

from shiftbench.algorithms.base import cross_entropy, make_optimizer, register_algorithm, step
from shiftbench.algorithms.dg_invariance import irm_penalty
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import HParam, IntLogUniform, LogUniform


def feature_variance(features: torch.Tensor) -> torch.Tensor:
    """The IB penalty of one domain: mean over feature dimensions of the unbiased batch variance."""
    if len(features) < 2:
        return features.new_zeros(())
    return features.var(dim=0).mean()


_IB = {
    "ib_lambda": HParam(1e2, LogUniform(-1, 5), low=0.0, help="IB penalty weight after annealing"),
    "ib_penalty_anneal_iters": HParam(500, IntLogUniform(0, 4, base=10), low=0,
                                      help="updates with IB weight 0 before ib_lambda"),
}


class _Bottleneck(ERM):
    """Shared pass: per-domain CE, IRMv1 penalty and feature variance from one pooled forward."""

    SETTINGS = ("dg",)
    PAPER = ("Ahuja et al., Invariance Principle Meets Information Bottleneck for Out-of-Distribution "
             "Generalization, NeurIPS 2021")

    def terms(self, minibatches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean_e CE_e, mean_e IRM_e, mean_e IB_e) over the labeled domains."""
        sizes = [len(x) for x, _ in minibatches]
        features = self.featurizer(torch.cat([x for x, _ in minibatches]))
        logits = self.classifier(features)
        nll, irm, ib = [], [], []
        for f, lg, (_, y) in zip(features.split(sizes), logits.split(sizes), minibatches):
            nll.append(cross_entropy(lg, y))
            irm.append(irm_penalty(lg, y))
            ib.append(feature_variance(f))
        return torch.stack(nll).mean(), torch.stack(irm).mean(), torch.stack(ib).mean()

    def step_with(self, loss: torch.Tensor, reset: bool) -> None:
        if reset:  # Adam's moments do not suit the jump in gradient scale at a penalty switch
            self.optimizer = make_optimizer(self.network.parameters(), self.hparams)
        step(loss, self.optimizer)


@register_algorithm
class IB_ERM(_Bottleneck):  # noqa: N801 - DomainBed's name
    """IB-ERM (Ahuja et al., NeurIPS 2021): ERM plus the feature-variance bottleneck.

    L = mean_e CE_e + w(t) * mean_e mean_k Var_e[phi_k],  w(t) = 0 for t < ib_penalty_anneal_iters,
    then ib_lambda; Adam re-created at t = ib_penalty_anneal_iters (DomainBed).
    Defaults / search (shiftbench = DomainBed): ib_lambda 1e2 / 10^U(-1,5),
    ib_penalty_anneal_iters 500 / int(10^U(0,4)).
    """

    HPARAMS = _IB

    def update(self, minibatches, unlabeled=None):
        t, anneal = int(self.num_updates), int(self.hparams["ib_penalty_anneal_iters"])
        weight = float(self.hparams["ib_lambda"]) if t >= anneal else 0.0
        nll, _, ib = self.terms(minibatches)
        loss = nll + weight * ib
        self.step_with(loss, reset=t == anneal)
        return {"loss": loss.item(), "nll": nll.item(), "IB_penalty": ib.item()}


@register_algorithm
class IB_IRM(_Bottleneck):  # noqa: N801 - DomainBed's name
    """IB-IRM (Ahuja et al., NeurIPS 2021): IRMv1 plus the feature-variance bottleneck.

    L = mean_e CE_e + w_irm(t) * mean_e IRM_e + w_ib(t) * mean_e mean_k Var_e[phi_k], with
    IRM_e the IRMv1 penalty (product of the even/odd half-batch gradients, as IRM);
    w_irm = 1 before irm_penalty_anneal_iters then irm_lambda, w_ib = 0 before
    ib_penalty_anneal_iters then ib_lambda; Adam re-created when t reaches either (DomainBed).
    Defaults / search (shiftbench = DomainBed): irm_lambda 1e2 / 10^U(-1,5), ib_lambda 1e2 /
    10^U(-1,5), both anneal iters 500 / int(10^U(0,4)).
    """

    HPARAMS = {
        "irm_lambda": HParam(1e2, LogUniform(-1, 5), low=0.0, help="IRM weight after annealing"),
        "irm_penalty_anneal_iters": HParam(500, IntLogUniform(0, 4, base=10), low=0,
                                           help="updates with IRM weight 1 before irm_lambda"),
        **_IB,
    }

    def update(self, minibatches, unlabeled=None):
        t = int(self.num_updates)
        irm_at = int(self.hparams["irm_penalty_anneal_iters"])
        ib_at = int(self.hparams["ib_penalty_anneal_iters"])
        w_irm = float(self.hparams["irm_lambda"]) if t >= irm_at else 1.0
        w_ib = float(self.hparams["ib_lambda"]) if t >= ib_at else 0.0
        nll, irm, ib = self.terms(minibatches)
        loss = nll + w_irm * irm + w_ib * ib
        self.step_with(loss, reset=t in (irm_at, ib_at))
        return {"loss": loss.item(), "nll": nll.item(), "IRM_penalty": irm.item(), "IB_penalty": ib.item()}


__all__ = ["IB_ERM", "IB_IRM", "feature_variance"]
