"""SagNet: style-agnostic networks (Nam et al., CVPR 2021), in the official per-channel form, and
DomainBed's pooled-vector variant under its own name.

Randomisations act on an intermediate feature map z (N x C x H x W) during training only, with
per-sample, per-channel statistics over H x W: mu, var, and z_hat = (z - mu) / sqrt(var + eps),
eps = 1e-5, pi a random permutation of the batch, alpha ~ U(0, 1) per sample:

    SR(z) = z_hat * sqrt(alpha var + (1 - alpha) var_pi + eps) + alpha mu + (1 - alpha) mu_pi
            (style randomisation: own content, style mixed with another sample's)
    CR(z) = stopgrad(z_hat_pi) * sqrt(var + eps) + mu
            (content randomisation: another sample's content, own style)

With G_f the first `sag_stage` featurizer stages, G_c the remaining stages + classifier and G_s a
separate copy of those stages + its own classifier, each step makes one forward and three updates:

    L_s   = CE(G_s(CR(G_f(x))), y)                       -> style optimizer, G_s only
    L_adv = w_adv * mean_i mean_k -log(softmax(G_s(CR(G_f(x))))_ik + 1e-5)
            (CE to the uniform distribution)             -> adversarial optimizer, the norm affine
                                                            parameters of G_f, grad-norm clip 0.1
    L_c   = CE(G_c(SR(G_f(x))), y)                       -> content optimizer, G_f + G_c
    predict(x) = G_c(G_f(x))

G_c and G_s end with dropout (`sag_dropout`, 0.5 as the official code) before their linear heads.

All three gradients are taken at the same parameters, then the three optimizers step. Departures
from the official code: Adam with the benchmark's lr (not SGD + cosine schedule); variances are
population variances; the adversarial parameters are the GroupNorm affines of the small CNN (the
official ResNet uses BatchNorm); a featurizer without norm layers (the MLP) uses all G_f
parameters. Vector inputs: z is a hidden layer's activation, treated as one channel whose
statistics run over the hidden units (as DomainBed does for its pooled features).

`sag_form` is a fixed switch (a variant, never searched) that `SagNet.__init__` reads once:
"channel" builds the above; "pooled" builds DomainBed's form (`SagNet._update_pooled`), which is
also registered under its own name, `SagNetPooled`. Under `--protocol domainbed` the name SagNet
means DomainBed's algorithm: `sag_form` is fixed to "pooled", with DomainBed's search
10^U(-2, 1) for `sag_w_adv`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
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
from shiftbench.algorithms.components import featurizer_stages
from shiftbench.hparams import Choice, HParam, LogUniform

EPS = 1e-5
ADV_PARAMS = ("norm", "all")
FORMS = ("channel", "pooled")


def _stats(z: torch.Tensor):
    """z as (N, C, L) with per-sample, per-channel mean and population variance over L."""
    flat = z.reshape(z.shape[0], 1, -1) if z.dim() == 2 else z.reshape(*z.shape[:2], -1)
    return flat, flat.mean(-1, keepdim=True), flat.var(-1, keepdim=True, unbiased=False)


def style_randomize(z: torch.Tensor, perm: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """SR: keep each sample's normalised content, mix its mean/variance with sample perm[i]'s."""
    flat, mu, var = _stats(z)
    a = alpha.view(-1, 1, 1)
    content = (flat - mu) / (var + EPS).sqrt()
    mu_mix, var_mix = a * mu + (1 - a) * mu[perm], a * var + (1 - a) * var[perm]
    return (content * (var_mix + EPS).sqrt() + mu_mix).view_as(z)


def content_randomize(z: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """CR: sample perm[i]'s normalised content (no gradient) with sample i's own mean/variance."""
    flat, mu, var = _stats(z)
    content = ((flat - mu) / (var + EPS).sqrt())[perm].detach()
    return (content * (var + EPS).sqrt() + mu).view_as(z)


def adversarial_style_loss(style_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the style head's prediction to the uniform distribution (min: log K)."""
    return -torch.log(F.softmax(style_logits, 1) + 1e-5).mean()


@register_algorithm
class SagNet(Algorithm):
    """Style-agnostic network, per-channel spatial randomisation (see the module docstring); with
    the fixed switch `sag_form="pooled"`, DomainBed's form (`SagNetPooled`)."""

    PAPER = "Nam et al., Reducing Domain Gap by Reducing Style Bias, CVPR 2021"
    HPARAMS = {
        "sag_w_adv": HParam(0.1, LogUniform(-2, 0), low=0.0, help="weight of the adversarial style loss"),
        "sag_clip_adv": HParam(0.1, Choice([0.1, 1.0, 0.0]), low=0.0,
                               help="grad-norm clip of the adversarial step (0: none)"),
        "sag_stage": HParam(2, Choice([1, 2]), low=1, help="featurizer stages before randomisation"),
        "sag_adv_params": HParam("norm", None, choices=ADV_PARAMS, variant=True,
                                 help="adversarial step updates G_f's norm affines or all of G_f"),
        "sag_dropout": HParam(0.5, None, low=0.0, high=1.0, help="dropout before both heads"),
        "sag_form": HParam("channel", None, choices=FORMS, variant=True,
                           help="channel: official per-channel SagNet; pooled: DomainBed's"),
    }
    DOMAINBED_HPARAMS = {
        "sag_form": HParam("pooled", None, choices=FORMS, variant=True,
                           help="channel: official per-channel SagNet; pooled: DomainBed's"),
        "sag_w_adv": HParam(0.1, LogUniform(-2, 1), low=0.0, help="adversarial weight"),
        "sag_clip_adv": None, "sag_stage": None, "sag_adv_params": None, "sag_dropout": None,
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.pooled = self.hparams.get("sag_form", "channel") == "pooled"
        if self.pooled:
            self._build_pooled(input_shape, num_classes)
        else:
            self._build_channel(input_shape, num_classes)

    def _build_channel(self, input_shape, num_classes):
        hp = self.hparams
        self.featurizer = networks.Featurizer(input_shape, hp)
        n = self.featurizer.n_outputs
        self.classifier = nn.Sequential(nn.Dropout(hp["sag_dropout"]),
                                        networks.Classifier(n, num_classes, hp["nonlinear_classifier"]))
        stages = featurizer_stages(self.featurizer)
        k = min(int(hp["sag_stage"]), len(stages) - 1)
        self._g_f, self._g_c = stages[:k], stages[k:]  # views of the featurizer (not registered)
        self.style_net = nn.Sequential(*copy.deepcopy(stages[k:]), nn.Dropout(hp["sag_dropout"]),
                                       networks.Classifier(n, num_classes, hp["nonlinear_classifier"]))
        g_f_params = [p for s in self._g_f for p in s.parameters()]
        norms = [p for s in self._g_f for m in s.modules()
                 if isinstance(m, (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)) for p in m.parameters()]
        self._adv_params = norms if (norms and hp["sag_adv_params"] == "norm") else g_f_params
        self._content_params = list(self.featurizer.parameters()) + list(self.classifier.parameters())
        self.optimizer = make_optimizer(self._content_params, hp)
        self.optimizer_style = make_optimizer(self.style_net.parameters(), hp)
        self.optimizer_adv = make_optimizer(self._adv_params, hp)

    def _features(self, x):
        for stage in self._g_f:
            x = stage(x)
        return x

    def _content_head(self, z):
        for stage in self._g_c:
            z = stage(z)
        return self.classifier(z)

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        return self._update_pooled(x, y) if self.pooled else self._update_channel(x, y)

    def predict(self, x):
        if self.pooled:
            return self.classifier(self.featurizer(x))
        return self._content_head(self._features(x))

    def _update_channel(self, x, y):
        """One forward, three gradients at the same parameters, three optimizer steps."""
        z = self._features(x)
        n = len(z)
        dev = z.device
        y_c = self._content_head(style_randomize(z, torch.randperm(n, device=dev),
                                                 torch.rand(n, device=dev)))
        y_s = self.style_net(content_randomize(z, torch.randperm(n, device=dev)))
        loss_s = cross_entropy(y_s, y)
        loss_adv = self.hparams["sag_w_adv"] * adversarial_style_loss(y_s)
        loss_c = cross_entropy(y_c, y)
        style_params = list(self.style_net.parameters())
        g_s = torch.autograd.grad(loss_s, style_params, retain_graph=True)
        g_adv = torch.autograd.grad(loss_adv, self._adv_params, retain_graph=True, allow_unused=True)
        g_c = torch.autograd.grad(loss_c, self._content_params, allow_unused=True)
        for opt, params, grads in ((self.optimizer_style, style_params, g_s),
                                   (self.optimizer_adv, self._adv_params, g_adv),
                                   (self.optimizer, self._content_params, g_c)):
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, grads):
                p.grad = g
            if opt is self.optimizer_adv and self.hparams["sag_clip_adv"] > 0:
                torch.nn.utils.clip_grad_norm_(params, self.hparams["sag_clip_adv"])
            opt.step()
        return {"loss": loss_c.item(), "loss_style": loss_s.item(), "loss_adv": loss_adv.item()}

    # ---- sag_form "pooled": DomainBed's SagNet ---------------------------------------------
    def _build_pooled(self, input_shape, num_classes):
        hp = self.hparams
        self.featurizer = networks.Featurizer(input_shape, hp)
        n = self.featurizer.n_outputs
        self.classifier = networks.Classifier(n, num_classes, hp["nonlinear_classifier"])
        self.style_head = networks.Classifier(n, num_classes, hp["nonlinear_classifier"])
        self.optimizer_f = make_optimizer(self.featurizer.parameters(), hp)
        self.optimizer_c = make_optimizer(self.classifier.parameters(), hp)
        self.optimizer_s = make_optimizer(self.style_head.parameters(), hp)

    def _style_logits(self, x):
        return self.style_head(randomize_domainbed(self.featurizer(x), "content"))

    def _update_pooled(self, x, y):
        """Three sequential steps with fresh forwards: content, style, adversarial."""
        loss_c = cross_entropy(self.classifier(randomize_domainbed(self.featurizer(x), "style")), y)
        step(loss_c, self.optimizer_f, self.optimizer_c)
        loss_s = cross_entropy(self._style_logits(x), y)
        step(loss_s, self.optimizer_s)
        loss_adv = self.hparams["sag_w_adv"] * -F.log_softmax(self._style_logits(x), 1).mean()
        step(loss_adv, self.optimizer_f)
        return {"loss": loss_c.item(), "loss_style": loss_s.item(), "loss_adv": loss_adv.item()}


def randomize_domainbed(z: torch.Tensor, what: str) -> torch.Tensor:
    """DomainBed's SagNet randomisation: statistics over the last axis (the feature dimensions
    of a pooled vector; H x W of a map) with the unbiased variance; draws alpha ~ U(0, 1) per
    sample, then the permutation, in DomainBed's order (also for "content", which ignores alpha)."""
    alpha = torch.rand(len(z), 1, device=z.device)
    flat = z.reshape(*z.shape[:2], -1) if z.dim() == 4 else z
    if z.dim() == 4:
        alpha = alpha.unsqueeze(-1)
    mu, var = flat.mean(-1, keepdim=True), flat.var(-1, keepdim=True)
    content = (flat - mu) / (var + EPS).sqrt()
    perm = torch.randperm(len(z)).to(z.device)
    if what == "style":
        mu, var = alpha * mu + (1 - alpha) * mu[perm], alpha * var + (1 - alpha) * var[perm]
    else:
        content = content[perm].detach()
    return (content * (var + EPS).sqrt() + mu).view_as(z)


@register_algorithm
class SagNetPooled(SagNet):
    """DomainBed's SagNet: randomisation of the pooled feature vector (statistics across its
    dimensions, unbiased variance), linear content/style heads, and three sequential steps with
    fresh forwards: content (featurizer + head) on SR features, style head on CR features, then
    the adversarial loss w_adv * mean_k -log softmax(G_s(CR(G_f(x))))_k updating the whole
    featurizer, no clipping (`SagNet._update_pooled`). `SagNet` with `sag_form` fixed to
    "pooled", as under `--protocol domainbed`."""

    PAPER = ("Nam et al., Reducing Domain Gap by Reducing Style Bias, CVPR 2021 "
             "(DomainBed's pooled-vector variant)")
    HPARAMS = {"sag_w_adv": HParam(0.1, LogUniform(-2, 1), low=0.0, help="adversarial weight"),
               "sag_clip_adv": None, "sag_stage": None, "sag_adv_params": None, "sag_dropout": None,
               "sag_form": HParam("pooled", None, choices=("pooled",), variant=True)}
    DOMAINBED_HPARAMS = {"sag_form": HParam("pooled", None, choices=("pooled",), variant=True)}
