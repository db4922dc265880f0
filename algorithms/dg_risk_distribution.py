"""RDM: domain generalization by matching the distributions of per-sample risks (WACV 2024).

Nguyen et al. argue that domains differ in the *distribution* of their per-sample losses, and
that matching the worst domain's risk distribution to the pooled one is a cheap, scalar-valued
alternative to matching feature distributions. With r_i = CE(f(x_i), y_i) per sample:

    R_e = {r_i : i in domain e},  w = argmax_e mean(R_e),  R = union_e R_e
    L = mean_e mean(R_e) + a(t) * lambda * MMD^2(R_w, R) + a(t) * beta * (Var(R) + Var(R_w))

MMD^2 is the biased estimate with the kernel k(u, v) = sum_g exp(-g (u - v)^2),
g in {1e-4, 1e-3, ..., 1e3}; Var is the unbiased sample variance; a(t) = 0 before
`rdm_penalty_anneal_iters` updates and 1 after, when Adam is re-created with `rdm_lr`.
"""

from __future__ import annotations

import torch

from shiftbench.algorithms.base import cross_entropy, make_optimizer, register_algorithm, step
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import DatasetInfo, HParam, IntLogUniform, IntUniform, Uniform

GAMMAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)


def risk_mmd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Biased MMD^2 between two 1-D samples under RDM's 8-bandwidth Gaussian kernel.

    Squared distances are (|v|^2 - 2uv) + |u|^2, clamped at 1e-30, computed with DomainBed's
    sequence of operations: the MMD is a small difference of large sums (and the largest
    bandwidth multiplies the rounding noise of the diagonal by 1000), so its value and gradient
    follow the exact rounding."""
    def kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        u_sq, v_sq = u.pow(2), v.pow(2)
        d2 = torch.addmm(v_sq.T, u, v.T, alpha=-2).add_(u_sq).clamp_min_(1e-30)
        return sum(torch.exp(-g * d2) for g in GAMMAS).mean()
    a, b = a[:, None], b[:, None]
    return kernel(a, a) + kernel(b, b) - 2 * kernel(a, b)


def cross_entropy_per_sample(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE of each row (a single logit column is a binary logit, as `cross_entropy`)."""
    if logits.shape[1] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction="none")
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")


def _batch_size(ds: DatasetInfo, small: bool) -> HParam:
    """RDM's batch sizes for large images (DomainBed's registry); 64 / int(2^U(3,9)) for small inputs."""
    if small or ds.is_vector:
        return HParam(64, IntLogUniform(3, 9), low=1, help="examples per domain per step")
    if ds.name in ("DomainNet", "TerraIncognita"):
        return HParam(40, IntUniform(30, 60), low=1, help="examples per domain per step")
    return HParam(88, IntUniform(70, 100), low=1, help="examples per domain per step")


def _lambda(ds: DatasetInfo) -> HParam:
    if ds.name == "DomainNet":
        dist, default = Uniform(0.1, 1.0), 0.5
    elif ds.name in ("PACS", "TerraIncognita"):
        dist, default = Uniform(1.0, 10.0), 5.0
    else:
        dist, default = Uniform(0.1, 10.0), 5.0
    return HParam(default, dist, low=0.0, help="weight of the risk-distribution MMD")


def _anneal(ds: DatasetInfo) -> HParam:
    if ds.name == "DomainNet":
        return HParam(2400, IntUniform(1500, 3000), low=0, help="ERM updates before the penalties")
    return HParam(1500, IntUniform(800, 2700), low=0, help="ERM updates before the penalties")


def _variance_weight(ds: DatasetInfo) -> HParam:
    if ds.name in ("TerraIncognita", "OfficeHome", "DomainNet"):
        return HParam(0.0, None, low=0.0, help="weight of the risk-variance term")
    return HParam(0.004, Uniform(0.001, 0.007), low=0.0, help="weight of the risk-variance term")


@register_algorithm
class RDM(ERM):
    """Risk Distribution Matching (Nguyen et al., WACV 2024); equations in the module docstring.

    Defaults / search (shiftbench = DomainBed, dataset-dependent as DomainBed's registry):
    rdm_lambda 5 / U(0.1,10) (PACS, TerraIncognita U(1,10); DomainNet 0.5 / U(0.1,1));
    rdm_penalty_anneal_iters 1500 / int(U(800,2700)) (DomainNet 2400 / int(U(1500,3000)));
    variance_weight 0.004 / U(0.001,0.007) (0, fixed, on TerraIncognita, OfficeHome, DomainNet);
    rdm_lr 1.5e-5 / U(8e-6,2e-5); on large images batch_size 88 / int(U(70,100)) (DomainNet,
    TerraIncognita 40 / int(U(30,60))). Departure: batches of unequal size are allowed (the
    pooled risks are concatenated); DomainBed requires equal sizes and a GPU.
    """

    SETTINGS = ("dg",)
    PAPER = ("Nguyen, Do, Duong & Nguyen, Domain Generalisation via Risk Distribution Matching, "
             "WACV 2024")
    HPARAMS = {
        "rdm_lambda": _lambda,
        "rdm_penalty_anneal_iters": _anneal,
        "variance_weight": _variance_weight,
        "rdm_lr": HParam(1.5e-5, Uniform(8e-6, 2e-5), low=0.0, help="Adam lr after the anneal"),
        "batch_size": lambda ds: _batch_size(ds, ds.small_images),
    }
    DOMAINBED_HPARAMS = {"batch_size": lambda ds: _batch_size(ds, ds.domainbed_small)}

    def update(self, minibatches, unlabeled=None):
        t, anneal = int(self.num_updates), int(self.hparams["rdm_penalty_anneal_iters"])
        on = 1.0 if t >= anneal else 0.0
        logits = self.network(torch.cat([x for x, _ in minibatches]))
        sizes = [len(x) for x, _ in minibatches]
        chunks = list(zip(logits.split(sizes), [y for _, y in minibatches]))
        risks = [cross_entropy_per_sample(lg, y) for lg, y in chunks]
        means = torch.stack([cross_entropy(lg, y) for lg, y in chunks])
        erm = means.mean()
        worst, pooled = risks[int(torch.argmax(means.detach()))], torch.cat(risks)
        matching = risk_mmd(worst, pooled)
        variance = pooled.var() + worst.var()
        hp = self.hparams
        loss = erm + on * hp["rdm_lambda"] * matching + on * hp["variance_weight"] * variance
        if t == anneal:  # Adam's moments do not suit the jump in gradient scale
            self.optimizer = make_optimizer(self.network.parameters(), hp, lr=hp["rdm_lr"])
        step(loss, self.optimizer)
        return {"total_loss": loss.item(), "erm_loss": erm.item(), "matching_penalty": matching.item(),
                "variance_penalty": variance.item()}


__all__ = ["RDM", "risk_mmd"]
