"""Distributionally robust optimisation over training domains: GroupDRO."""

from __future__ import annotations

import torch

from shiftbench.algorithms.base import register_algorithm, step
from shiftbench.algorithms.dg_invariance import PER_DOMAIN_FORWARD, domain_risks
from shiftbench.algorithms.erm import ERM
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import HParam, LogUniform


@register_algorithm
class GroupDRO(ERM):
    """Group DRO with online exponentiated-gradient domain weights (Sagawa et al., 2020, Alg. 1).

    Each update, with per-domain risks R_e and step size eta:
        q_e <- q_e * exp(eta * R_e.detach()),  q <- q / sum(q),   L = sum_e q_e R_e.
    q starts uniform and persists across updates as a buffer (so it is checkpointed). As in
    DomainBed, groups are the training domains and q is updated before the loss is formed.
    The risks come from one pooled forward pass, or (`per_domain_forward`, DomainBed's and the
    default under `--protocol domainbed`) one pass per domain.
    """

    SETTINGS = ("dg",)
    PAPER = ("Sagawa, Koh, Hashimoto & Liang, Distributionally Robust Neural Networks for Group "
             "Shifts, ICLR 2020")
    HPARAMS = {"groupdro_eta": HParam(1e-2, LogUniform(-3, -1), low=0.0,
                                      help="step size of the exponentiated-gradient update of q"),
               "per_domain_forward": PER_DOMAIN_FORWARD}
    DOMAINBED_HPARAMS = {"per_domain_forward": HParam(True, None, variant=True,
                                                      help=PER_DOMAIN_FORWARD.help)}

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.register_buffer("q", torch.ones(self.num_domains))  # normalised at the first update

    def update(self, minibatches, unlabeled=None):
        if len(minibatches) != len(self.q):
            raise ShiftbenchError(f"GroupDRO was built for {len(self.q)} domains, got "
                                  f"{len(minibatches)} minibatches")
        risks = domain_risks(self, minibatches)
        with torch.no_grad():
            q = self.q.to(risks.dtype) * torch.exp(self.hparams["groupdro_eta"] * risks.detach())
            self.q.copy_(q / q.sum())
        loss = torch.dot(risks, self.q.to(risks.dtype))
        step(loss, self.optimizer)
        out = {"loss": loss.item(), "worst_risk": risks.max().item()}
        out.update({f"q{e}": float(w) for e, w in enumerate(self.q)})
        return out
