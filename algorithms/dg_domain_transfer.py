"""Two DG methods built on how a predictor transfers between domains: MTL (Blanchard et al.,
JMLR 2021) and Transfer (Zhang et al., NeurIPS 2021)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from shiftbench import networks
from shiftbench.algorithms.base import (
    Algorithm,
    concat_minibatches,
    cross_entropy,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.components import classifier_head
from shiftbench.hparams import Choice, HParam, LogUniform, Uniform


@register_algorithm
class MTL(Algorithm):
    """Marginal transfer learning: the classifier also reads an embedding of the domain's marginal.

    f(x, P) = w([phi(x), mu_P]) with mu_P the mean feature of the domain (a kernel mean embedding
    with the learned feature map, as DomainBed). Training keeps one embedding per source domain,
    updated each step as mu_e <- ema * mean(phi(x_e)) + (1 - ema) * stopgrad(mu_e) (DomainBed's
    convention: `mtl_ema` weighs the current batch; 1 = batch mean only), and minimises
    mean_e CE(w([phi(x_e), mu_e]), y_e). At test time mu is the mean feature of the test batch
    (transductive within a batch). `mtl_variant="domainbed"` (fixed under `--protocol domainbed`)
    reproduces DomainBed's code instead: the loss is the sum over domains, and the embedding the
    classifier reads is overwritten in place by N(0, 1) noise (`.normal_()`, its issue #159), in
    training and prediction, so no gradient flows through it; the stored embeddings still follow
    the EMA rule.
    """

    PAPER = "Blanchard et al., Domain Generalization by Marginal Transfer Learning, JMLR 2021"
    HPARAMS = {"mtl_ema": HParam(0.99, Choice([0.5, 0.9, 0.99, 1.0]), low=0.0, high=1.0,
                                 help="weight of the current batch in the domain embedding"),
               "mtl_variant": HParam("paper", None, choices=("paper", "domainbed"), variant=True,
                                     help="domainbed: summed loss, noise embedding (DomainBed)")}
    DOMAINBED_HPARAMS = {"mtl_variant": HParam("domainbed", None, choices=("paper", "domainbed"),
                                               variant=True, help="DomainBed's MTL code")}

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        n = self.featurizer.n_outputs
        self.classifier = classifier_head(2 * n, num_classes, self.hparams)
        self.register_buffer("embeddings", torch.zeros(num_domains, n))
        self.optimizer = make_optimizer(
            list(self.featurizer.parameters()) + list(self.classifier.parameters()), self.hparams)

    def _logits(self, z, embedding):
        embedding = embedding.expand(len(z), -1)
        if self.hparams["mtl_variant"] == "domainbed":
            embedding = torch.randn(embedding.shape, dtype=z.dtype, device=z.device)
        return self.classifier(torch.cat([z, embedding], 1))

    def update(self, minibatches, unlabeled=None):
        ema, losses = self.hparams["mtl_ema"], []
        for e, (x, y) in enumerate(minibatches[: self.num_domains]):
            z = self.featurizer(x)
            emb = ema * z.mean(0) + (1 - ema) * self.embeddings[e]
            self.embeddings[e] = emb.detach()
            losses.append(cross_entropy(self._logits(z, emb), y))
        loss = torch.stack(losses)
        loss = loss.sum() if self.hparams["mtl_variant"] == "domainbed" else loss.mean()
        step(loss, self.optimizer)
        return {"loss": loss.item()}

    def predict(self, x):
        z = self.featurizer(x)
        return self._logits(z, z.mean(0))


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in module.parameters()])


@register_algorithm
class Transfer(Algorithm):
    """Transfer (Algorithm 1 of the paper, in DomainBed's order). Per update:

    1. ERM step on phi, w: CE over the pooled batch (Adam);
    2. gap step on phi only: t_lambda * (max_e R_e(w' o phi) - min_e R_e(w' o phi)) under the
       adversarial classifier w' (its own Adam, no weight decay);
    3. w' <- w, then `d_steps_per_g` SGD ascent steps (lr_d) on t_lambda * gap over w', each followed
       by projection onto the ball ||w' - w||_2 <= delta (all classifier parameters as one vector).

    The gap measures how badly a near-optimal classifier transfers between source domains.
    By default the gap step has its own Adam (so t_lambda = 0 is exactly ERM) and the ascent
    steps reuse the step-2 features; `transfer_domainbed_steps` (fixed on under
    `--protocol domainbed`) gives DomainBed's details instead: the ERM Adam also takes the gap
    step (mixing their moments) and the featurizer runs again in every ascent step (BatchNorm
    statistics, dropout). Under that protocol `gda` is DomainBed's: default False, True in every
    random draw; it makes the ERM optimizer an SGD (lr) over w' alone, so phi and w never train
    (DomainBed's behaviour, reproduced, not endorsed).
    """

    PAPER = "Zhang et al., Quantifying and Improving Transferability in Domain Generalization, NeurIPS 2021"
    HPARAMS = {
        "t_lambda": HParam(1.0, LogUniform(-2, 1), low=0.0, help="weight of the transferability gap"),
        "delta": HParam(2.0, Uniform(0.1, 3.0), low=0.0, help="radius of the adversary's ball"),
        "d_steps_per_g": HParam(10, Choice([1, 2, 5]), low=0, help="ascent steps per update"),
        "lr_d": HParam(1e-3, LogUniform(-4.5, -2.5), low=0.0, help="adversary SGD learning rate"),
        "transfer_domainbed_steps": HParam(False, None, variant=True,
                                           help="DomainBed's shared Adam and recomputed features"),
    }
    DOMAINBED_HPARAMS = {
        "transfer_domainbed_steps": HParam(True, None, variant=True,
                                           help="DomainBed's shared Adam and recomputed features"),
        "gda": HParam(False, Choice([True]), variant=False,
                      help="DomainBed: True in every random draw; SGD over w' replaces the ERM Adam"),
        # declared by DomainBed's registry for Transfer, read by none of its code
        "weight_decay_d": HParam(0.0, LogUniform(-6, -2), low=0.0, help="unused (as DomainBed)"),
        "beta1": HParam(0.5, Choice([0.0, 0.5]), low=0.0, high=1.0, help="unused (as DomainBed)"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        hp = self.hparams
        self.featurizer = networks.Featurizer(input_shape, hp)
        self.classifier = classifier_head(self.featurizer.n_outputs, num_classes, hp)
        self.adv_classifier = copy.deepcopy(self.classifier)
        if hp.get("gda", False):
            self.optimizer = torch.optim.SGD(self.adv_classifier.parameters(), lr=hp["lr"])
        else:
            self.optimizer = make_optimizer(
                list(self.featurizer.parameters()) + list(self.classifier.parameters()), hp)
        self.gap_optimizer = (self.optimizer if hp["transfer_domainbed_steps"] else
                              make_optimizer(self.featurizer.parameters(), hp, weight_decay=0.0))
        self.adv_opt = torch.optim.SGD(self.adv_classifier.parameters(), lr=hp["lr_d"])

    def gap(self, features, labels) -> torch.Tensor:
        risks = torch.stack([cross_entropy(self.adv_classifier(z), y) for z, y in zip(features, labels)])
        return risks.max() - risks.min()

    @torch.no_grad()
    def project(self) -> None:
        """Put w' back into the delta-ball around w."""
        diff = _flat(self.adv_classifier) - _flat(self.classifier)
        norm = diff.norm()
        if norm > self.hparams["delta"]:
            scale = self.hparams["delta"] / norm
            for pa, p in zip(self.adv_classifier.parameters(), self.classifier.parameters()):
                pa.copy_(p + scale * (pa - p))

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        loss = cross_entropy(self.predict(x), y)
        step(loss, self.optimizer)
        labels = [yb for _, yb in minibatches]
        gap = self.hparams["t_lambda"] * self.gap([self.featurizer(xb) for xb, _ in minibatches], labels)
        step(gap, self.gap_optimizer)
        self.adv_classifier.load_state_dict(self.classifier.state_dict())
        with torch.no_grad():
            feats = [self.featurizer(xb) for xb, _ in minibatches]
        adv_gap = gap.new_zeros(())
        for i in range(self.hparams["d_steps_per_g"]):
            if i > 0 and self.hparams["transfer_domainbed_steps"]:
                with torch.no_grad():
                    feats = [self.featurizer(xb) for xb, _ in minibatches]
            adv_gap = self.hparams["t_lambda"] * self.gap(feats, labels)
            step(-adv_gap, self.adv_opt)
            self.project()
        # DomainBed's keys: "gap" is the adversary's last ascent-step gap; "gap_phi" step 2's
        return {"loss": loss.item(), "gap": adv_gap.item(), "gap_phi": gap.item()}

    def predict(self, x):
        return self.classifier(self.featurizer(x))
