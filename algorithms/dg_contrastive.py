"""CAD and CondCAD: contrastive adversarial domain bottleneck (Ruan et al., ICLR 2022), with
DomainBed's definitions of the loss.

Features z_i (optionally projected by an MLP and/or L2-normalised), domain d_i, label y_i.
s_ij = z_i . z_j / tau, and softmax distributions over the other examples of the batch:

    p(j | i)   = exp(s_ij) / sum_{k != i} exp(s_ik)                 (CAD)
    p_y(j | i) = exp(s_ij) / sum_{k != i, y_k = y_i} exp(s_ik)      (CondCAD: same-label only)

The bottleneck loss, minimising I(D; Z) (CAD) or I(D; Z | Y) (CondCAD), averaged over anchors i
(and scaled by tau / 0.07 as SupCon):

    flipped (default):  -log sum_{j: d_j != d_i} p(j | i)            [CondCAD: p_y, y_j = y_i]
    not flipped:        +log sum_{j != i: d_j = d_i} p(j | i)        [CondCAD: p_y, y_j = y_i]

"flipped" maximises the probability of the other domains rather than minimising that of the
own domain (same optimum, more stable per the authors). Anchors without a same-label partner
(CAD) or without a term to sum (CondCAD) are skipped, as are non-finite terms (DomainBed).
L = CE(w(z), y) + lambda * L_bottleneck; lambda = 0 is ERM. Departures: the projection head
(`cad_project`) works (DomainBed's crashes), and the non-flipped CAD sum excludes i itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench.algorithms.base import cross_entropy, register_algorithm, step
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import Choice, HParam

BASE_TEMPERATURE = 0.07


def bottleneck_loss(z, y, d, temperature: float, conditional: bool, flipped: bool) -> torch.Tensor:
    """The (conditional) contrastive domain-bottleneck loss of the module docstring, computed in
    DomainBed's order of floating-point operations (self-similarities zeroed, each row shifted
    by its detached maximum, masks applied as log(0/1) terms, mean over the finite terms)."""
    n = len(z)
    others = ~torch.eye(n, dtype=torch.bool, device=z.device)
    same_y = (y[:, None] == y[None, :]) & others
    same_d = d[:, None] == d[None, :]
    logits = (z @ z.T) / temperature * others.to(z.dtype)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    support = same_y if conditional else others  # the softmax's support
    target = (~same_d if flipped else same_d & others) & support
    rows = target.any(1) & (same_y.any(1) if not conditional else True)
    if not rows.any():
        return z.new_zeros(())
    logits, support, target = logits[rows], support[rows], target[rows]
    log_p = logits - torch.logsumexp(logits + support.to(z.dtype).log(), dim=1, keepdim=True)
    term = torch.logsumexp(log_p + target.to(z.dtype).log(), dim=1)
    scale = temperature / BASE_TEMPERATURE
    loss = -scale * term if flipped else scale * term
    finite = torch.isfinite(loss)
    if not finite.any():
        return z.new_zeros(())
    return torch.where(finite, loss, torch.zeros_like(loss)).sum() / finite.sum()


class _AbstractCAD(ERM):
    SETTINGS = ("dg",)
    conditional = False
    HPARAMS = {
        "cad_lambda": HParam(0.1, Choice([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2]), low=0.0,
                             help="weight of the bottleneck loss"),
        "cad_temperature": HParam(0.1, Choice([0.05, 0.1]), low=0.0, help="softmax temperature tau"),
        "cad_normalize": HParam(False, None, variant=True,
                                help="L2-normalise the representation in the loss"),
        "cad_project": HParam(False, None, variant=True, help="MLP projection head before the loss"),
        "cad_flipped": HParam(True, None, variant=True, help="maximise other-domain probability (stabler)"),
    }
    DOMAINBED_HPARAMS = {  # DomainBed's lmbda / temperature, drawn under DomainBed's names
        "cad_lambda": HParam(0.1, Choice([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2]), low=0.0,
                             seed_name="lmbda", help="weight of the bottleneck loss"),
        "cad_temperature": HParam(0.1, Choice([0.05, 0.1]), low=0.0, seed_name="temperature",
                                  help="softmax temperature tau"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        d = self.featurizer.n_outputs
        self.project = (nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 128))
                        if self.hparams["cad_project"] else None)
        if self.project is not None:
            self.optimizer.add_param_group({"params": list(self.project.parameters())})

    def update(self, minibatches, unlabeled=None):
        x = torch.cat([xb for xb, _ in minibatches])
        y = torch.cat([yb for _, yb in minibatches])
        d = torch.cat([torch.full((len(yb),), i, device=y.device) for i, (_, yb) in enumerate(minibatches)])
        z = self.featurizer(x)
        r = self.project(z) if self.project is not None else z
        if self.hparams["cad_normalize"]:
            r = F.normalize(r, dim=1)
        bn = bottleneck_loss(r, y, d, self.hparams["cad_temperature"], self.conditional,
                             self.hparams["cad_flipped"])
        ce = cross_entropy(self.classifier(z), y)
        loss = ce + self.hparams["cad_lambda"] * bn
        step(loss, self.optimizer)
        return {"loss": loss.item(), "ce": ce.item(), "bottleneck": bn.item()}


@register_algorithm
class CAD(_AbstractCAD):
    """Contrastive adversarial domain bottleneck: CE + lambda * (-log p(other domain | z_i))."""

    PAPER = "Ruan et al., Optimal Representations for Covariate Shift, ICLR 2022"


@register_algorithm
class CondCAD(_AbstractCAD):
    """Conditional CAD: the bottleneck contrasts same-label examples only (I(D; Z | Y))."""

    PAPER = "Ruan et al., Optimal Representations for Covariate Shift, ICLR 2022"
    conditional = True
