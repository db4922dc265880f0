"""Fishr: matching the domain-level variances of per-sample gradients (Rame et al., ICML 2022).

For each training domain e, with g_i = d CE(w(phi(x_i)), y_i) / d w the gradient of sample i's
loss w.r.t. the classifier's parameters w (weights and biases, flattened):

    v_e = mean_{i in e} (g_i - mean_{j in e} g_j)^2                 (per coordinate)
    v~_e(t) = ema * v~_e(t-1) + (1 - ema) * v_e(t),  v~_e(0) = 0,   penalty uses v~_e / (1 - ema)
    P = mean_e mean_k (v~_ek / (1 - ema) - mean_e' v~_e'k / (1 - ema))^2
    L = CE(pooled batch) + w(t) * P,   w(t) = 0 for t < penalty_anneal_iters, then lambda.

Only the current v_e carries gradient (the stored average is detached), scaled by one thanks to
the 1/(1 - ema) correction. Per-sample gradients come from `torch.func` (vmap of grad over a
functional call of the classifier), so the penalty back-propagates into the featurizer and the
classifier; DomainBed uses BackPACK for the same quantity.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

from shiftbench.algorithms.base import (
    concat_minibatches,
    cross_entropy,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.erm import ERM
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import HParam, IntUniform, LogUniform, Uniform


def per_sample_grads(head: torch.nn.Module, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """N x P matrix: row i is d CE(head(features_i), y_i) / d(head's parameters), names sorted."""
    params = dict(head.named_parameters())

    def sample_loss(p, f, t):
        return cross_entropy(functional_call(head, p, (f.unsqueeze(0),)), t.unsqueeze(0))

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, features, y)
    return torch.cat([grads[name].flatten(1) for name in sorted(grads)], dim=1)


def gradient_variances(grads: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """E x P: per domain (consecutive blocks of `sizes` rows), the population variance of each column."""
    return torch.stack([(g - g.mean(0)).pow(2).mean(0) for g in grads.split(sizes)])


def fishr_distance(variances: torch.Tensor) -> torch.Tensor:
    """mean_e mean_k (v_ek - mean_e' v_e'k)^2."""
    return (variances - variances.mean(0)).pow(2).mean()


@register_algorithm
class Fishr(ERM):
    """Fishr (Rame, Dancette & Cord, ICML 2022), in DomainBed's form; equations in the module doc.

    Defaults / search (shiftbench = DomainBed): lambda 1000 / 10^U(1,4); penalty_anneal_iters
    1500 / int(U(0,5000)); ema 0.95 / U(0.9,0.99). Adam is re-created at t = penalty_anneal_iters
    (unless 0), as DomainBed. Departures: per-sample gradients by `torch.func` instead of
    BackPACK (same values); the moving averages are buffers, so they survive a checkpoint resume
    (DomainBed keeps them in plain Python objects).
    """

    SETTINGS = ("dg",)
    PAPER = ("Rame, Dancette & Cord, Fishr: Invariant Gradient Variances for Out-of-Distribution "
             "Generalization, ICML 2022")
    HPARAMS = {
        "lambda": HParam(1000.0, LogUniform(1, 4), low=0.0, help="penalty weight after annealing"),
        "penalty_anneal_iters": HParam(1500, IntUniform(0, 5000), low=0,
                                       help="updates with penalty weight 0 before lambda"),
        "ema": HParam(0.95, Uniform(0.9, 0.99), low=0.0, high=0.999,
                      help="decay of the moving average of the gradient variances"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        if not 0.0 <= float(self.hparams["ema"]) < 1.0:
            raise ShiftbenchError(f"Fishr's ema must lie in [0, 1), got {self.hparams['ema']}")
        n_params = sum(p.numel() for p in self.classifier.parameters())
        self.register_buffer("variance_ema", torch.zeros(self.num_domains, n_params))

    def penalty(self, features: torch.Tensor, y: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """The Fishr penalty of this batch; advances the moving average of the variances."""
        variances = gradient_variances(per_sample_grads(self.classifier, features, y), sizes)
        ema = float(self.hparams["ema"])
        averaged = ema * self.variance_ema + (1 - ema) * variances  # the average starts at 0
        self.variance_ema = averaged.detach().clone()
        return fishr_distance(averaged / (1 - ema))

    def update(self, minibatches, unlabeled=None):
        if len(minibatches) != self.num_domains:
            raise ShiftbenchError(f"Fishr expects one batch per training domain ({self.num_domains}), "
                                  f"got {len(minibatches)}")
        x, y = concat_minibatches(minibatches)
        features = self.featurizer(x)
        nll = cross_entropy(self.classifier(features), y)
        penalty = self.penalty(features, y, [len(b) for b, _ in minibatches])
        t, anneal = int(self.num_updates), int(self.hparams["penalty_anneal_iters"])
        weight = float(self.hparams["lambda"]) if t >= anneal else 0.0
        if t == anneal != 0:  # Adam's moments do not suit the jump in gradient scale
            self.optimizer = make_optimizer(self.network.parameters(), self.hparams)
        loss = nll + weight * penalty
        step(loss, self.optimizer)
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


__all__ = ["Fishr", "per_sample_grads", "gradient_variances", "fishr_distance"]
