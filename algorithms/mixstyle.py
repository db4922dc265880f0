"""MixStyle (Zhou et al., ICLR 2021): mix instance-level feature statistics between samples.

After chosen featurizer stages (default: after the 1st and 2nd conv blocks, as the paper's
"after res1 and res2"; never after the last stage), during training only and with probability p
per application:

    mu, sigma = per-sample, per-channel mean and sqrt(var + 1e-6) over H x W   (detached)
    lambda_i ~ Beta(alpha, alpha),  j = partner of i
    MixStyle(x)_i = (x_i - mu_i) / sigma_i * (lambda_i sigma_i + (1 - lambda_i) sigma_j)
                    + lambda_i mu_i + (1 - lambda_i) mu_j

and the loss is the plain cross-entropy of the pooled batch (ERM otherwise; p = 0 is ERM).
Partners: ``random`` = a random permutation of the batch; ``crossdomain`` = a partner drawn
uniformly from the *other* source domains (the paper's version assumes two domain halves and
shuffles within the other half; we generalise to any number of domains, drawing with
replacement). Defaults p = 0.5, alpha = 0.1. Population variances are used. Vector inputs: the
hidden activations are treated as one channel whose statistics run over the hidden units.
"""

from __future__ import annotations

import torch

from shiftbench.algorithms.base import cross_entropy, register_algorithm, step
from shiftbench.algorithms.components import featurizer_stages
from shiftbench.algorithms.erm import ERM
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import Choice, HParam

MIXING = ("random", "crossdomain")


def mixstyle(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Re-style each sample with the lam-mixture of its own and `partner`'s detached statistics."""
    flat = x.reshape(x.shape[0], 1, -1) if x.dim() == 2 else x.reshape(*x.shape[:2], -1)
    mu = flat.mean(-1, keepdim=True).detach()
    sigma = (flat.var(-1, keepdim=True, unbiased=False) + eps).sqrt().detach()
    lam = lam.view(-1, 1, 1).to(x.dtype)
    mu_mix = lam * mu + (1 - lam) * mu[partner]
    sigma_mix = lam * sigma + (1 - lam) * sigma[partner]
    return ((flat - mu) / sigma * sigma_mix + mu_mix).view_as(x)


def parse_layers(spec: str) -> list[int]:
    try:
        layers = sorted({int(s) for s in str(spec).split(",") if s.strip()})
    except ValueError:
        raise ShiftbenchError(f"mixstyle_layers must be comma-separated stage numbers such as '1,2', "
                              f"got {spec!r}") from None
    if not layers or layers[0] < 1:
        raise ShiftbenchError(f"mixstyle_layers must list stages >= 1, got {spec!r}")
    return layers


@register_algorithm
class MixStyle(ERM):
    """ERM whose featurizer mixes feature statistics between samples at early stages (see module)."""

    SETTINGS = ("dg",)
    PAPER = "Zhou et al., Domain Generalization with MixStyle, ICLR 2021"
    HPARAMS = {
        "mixstyle_p": HParam(0.5, Choice([0.5]), low=0.0, high=1.0, help="probability of mixing"),
        "mixstyle_alpha": HParam(0.1, Choice([0.1, 0.3]), low=0.0, help="Beta(alpha, alpha) for lambda"),
        "mixstyle_layers": HParam("1,2", Choice(["1,2", "1,2,3"]), variant=False,
                                  help="mix after these stages"),
        "mixstyle_mix": HParam("random", None, choices=MIXING, variant=True, help="partner choice"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self._stages = featurizer_stages(self.featurizer)
        # never after the last stage (it ends in pooling / the output layer)
        self.layers = [i for i in parse_layers(self.hparams["mixstyle_layers"]) if i < len(self._stages)]

    def _partners(self, domains: torch.Tensor) -> torch.Tensor:
        n = len(domains)
        if self.hparams["mixstyle_mix"] == "random" or domains.unique().numel() < 2:
            return torch.randperm(n)
        scores = torch.rand(n, n).masked_fill(domains[:, None] == domains[None, :], -1.0)
        return scores.argmax(1)

    def _mix(self, h, domains):
        p = self.hparams["mixstyle_p"]
        if p <= 0 or (p < 1 and torch.rand(()) >= p):
            return h
        a = self.hparams["mixstyle_alpha"]
        lam = torch.distributions.Beta(a, a).sample((len(h),))
        return mixstyle(h, self._partners(domains).to(h.device), lam.to(h.device))

    def update(self, minibatches, unlabeled=None):
        x = torch.cat([xb for xb, _ in minibatches])
        y = torch.cat([yb for _, yb in minibatches])
        domains = torch.cat([torch.full((len(yb),), i) for i, (_, yb) in enumerate(minibatches)])
        h = x
        for i, stage in enumerate(self._stages, start=1):
            h = stage(h)
            if i in self.layers:
                h = self._mix(h, domains)
        loss = cross_entropy(self.classifier(h), y)
        step(loss, self.optimizer)
        return {"loss": loss.item()}
