"""Meta-learning objectives for domain generalization: MLDG and Fish."""

from __future__ import annotations

import copy

import torch
from torch import autograd

from shiftbench import networks
from shiftbench.algorithms.base import Algorithm, cross_entropy, make_optimizer, register_algorithm, step
from shiftbench.algorithms.components import classifier_head
from shiftbench.algorithms.erm import ERM
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import Choice, HParam, LogUniform


@register_algorithm
class MLDG(ERM):
    """Meta-Learning Domain Generalization (Li et al., AAAI 2018), first-order as in DomainBed.

    Each update splits the domains at random into meta-train and `n_meta_test` meta-test domains
    and pairs every meta-train domain i with a meta-test domain j (cycling). For each pair a
    clone theta' = Adam_step(theta, grad R_i(theta)) is made (fresh inner Adam), and
        g += [grad R_i(theta) + beta * grad R_j(theta')] / n_domains
    (first-order: no derivative through the inner step); one outer Adam step along g.
    Objective of the paper: R_train(theta) + beta R_test(theta - lr grad R_train(theta)).
    By default n_meta_test is capped at n_domains - 1 so there is always a meta-train domain;
    with `mldg_cap_meta_test` off (fixed off under `--protocol domainbed`) n_meta_test =
    n_domains leaves no meta-train domain and the step has a zero gradient, as in DomainBed
    (e.g. its default n_meta_test = 2 on a dataset with two training domains).
    """

    SETTINGS = ("dg",)
    PAPER = ("Li, Yang, Song & Hospedales, Learning to Generalize: Meta-Learning for Domain "
             "Generalization, AAAI 2018")
    HPARAMS = {
        "mldg_beta": HParam(1.0, LogUniform(-1, 1), low=0.0, help="weight of the meta-test loss"),
        "n_meta_test": HParam(2, Choice([1, 2]), low=1, help="meta-test domains per update"),
        "mldg_cap_meta_test": HParam(True, None, variant=True,
                                     help="keep at least one meta-train domain"),
    }
    DOMAINBED_HPARAMS = {"mldg_cap_meta_test": HParam(False, None, variant=True,
                                                      help="keep at least one meta-train domain")}

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        if self.num_domains < 2:
            raise ShiftbenchError(f"MLDG needs at least 2 training domains, got {self.num_domains}")

    def meta_gradients(self, minibatches) -> tuple[list[torch.Tensor], float]:
        """The first-order MLDG gradient for every network parameter, and the objective."""
        n, beta = len(minibatches), float(self.hparams["mldg_beta"])
        n_test = int(self.hparams["n_meta_test"])
        if self.hparams["mldg_cap_meta_test"]:
            n_test = min(n_test, n - 1)
        order = torch.randperm(n).tolist()
        meta_train, meta_test = order[: n - n_test], order[n - n_test:]
        params = list(self.network.parameters())
        grads = [torch.zeros_like(p) for p in params]
        objective = 0.0
        for k, i in enumerate(meta_train):
            (xi, yi), (xj, yj) = minibatches[i], minibatches[meta_test[k % n_test]]
            m = min(len(xi), len(xj))
            inner = copy.deepcopy(self.network)
            inner_opt = make_optimizer(inner.parameters(), self.hparams)
            loss_i = cross_entropy(inner(xi[:m]), yi[:m])
            g_i = autograd.grad(loss_i, list(inner.parameters()), allow_unused=True)
            for p, g in zip(inner.parameters(), g_i):
                p.grad = None if g is None else g.clone()
            inner_opt.step()
            loss_j = cross_entropy(inner(xj[:m]), yj[:m])
            g_j = autograd.grad(loss_j, list(inner.parameters()), allow_unused=True)
            for acc, a, b in zip(grads, g_i, g_j):
                if a is not None:
                    acc.add_(a / n)
                if b is not None:
                    acc.add_(beta * b / n)
            objective += loss_i.item() + beta * loss_j.item()
        return grads, objective / n

    def update(self, minibatches, unlabeled=None):
        grads, objective = self.meta_gradients(minibatches)
        for p, g in zip(self.network.parameters(), grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": objective}


@register_algorithm
class Fish(Algorithm):
    """Fish: gradient matching by a first-order meta step (Shi et al., ICLR 2022), as DomainBed.

    Each update copies theta into an inner network, takes one inner Adam step per domain,
    sequentially (theta~ <- theta~ - Adam(grad R_e(theta~)), e = 1..S; the inner Adam state
    persists across updates), then moves the outer weights: theta <- theta + meta_lr (theta~ - theta).
    To first order this ascends the inner product of the domain gradients. Departure: no ERM
    warm start (the paper pre-trains with ERM on WILDS; DomainBed does not).
    """

    SETTINGS = ("dg",)
    PAPER = "Shi et al., Gradient Matching for Domain Generalization, ICLR 2022"
    HPARAMS = {"meta_lr": HParam(0.5, Choice([0.05, 0.1, 0.5]), low=0.0,
                                 help="epsilon: interpolation step towards the inner weights")}

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        self.classifier = classifier_head(self.featurizer.n_outputs, num_classes, self.hparams)
        self.network = torch.nn.Sequential(self.featurizer, self.classifier)
        self.network_inner = copy.deepcopy(self.network)
        self.optimizer_inner = make_optimizer(self.network_inner.parameters(), self.hparams)

    def update(self, minibatches, unlabeled=None):
        self.network_inner.load_state_dict(self.network.state_dict())
        for x, y in minibatches:
            loss = cross_entropy(self.network_inner(x), y)
            step(loss, self.optimizer_inner)
        eps = float(self.hparams["meta_lr"])
        with torch.no_grad():
            inner = self.network_inner.state_dict()
            for name, outer in self.network.state_dict().items():
                if outer.is_floating_point():
                    outer.add_(eps * (inner[name] - outer))
                else:
                    outer.copy_(inner[name])
        return {"loss": loss.item()}

    def predict(self, x):
        return self.network(x)
