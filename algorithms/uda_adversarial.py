"""Adversarial unsupervised domain adaptation: CDAN and CDAN+E, BSP, ADDA.

All three align source and target representations by playing against a domain discriminator D
(source = label 1, target = label 0). CDAN and BSP use one joint step with a gradient reversal
layer R_lambda (lambda follows DANN's schedule 2 / (1 + exp(-gamma p)) - 1 over the whole run);
ADDA trains a separate target encoder with the inverted-label GAN loss after a source phase.
Several source domains are pooled into one "source"; several target batches into one "target".
Target labels are never available to these algorithms.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from shiftbench import networks
from shiftbench.algorithms.adversarial import GradientReversalAdversary, TwoPhaseAdversary
from shiftbench.algorithms.base import (
    concat_minibatches,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.components import (
    Discriminator,
    classifier_head,
    dann_schedule,
    entropy,
)
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import Choice, HParam, LogUniform


def multilinear_map(f: torch.Tensor, g: torch.Tensor, rf: torch.Tensor | None = None,
                    rg: torch.Tensor | None = None) -> torch.Tensor:
    """CDAN's conditioning T(f, g): `vec(g outer f)` (B x C*d), or, given the fixed random
    matrices `rf` (d x m) and `rg` (C x m), the randomized map `(f rf) * (g rg) / sqrt(m)`."""
    if rf is None or rg is None:
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)
    return (f @ rf) * (g @ rg) / math.sqrt(rf.shape[1])


def entropy_weights(logits: torch.Tensor) -> torch.Tensor:
    """CDAN+E's `w_i = 1 + exp(-H(p_i))` from detached predictions, rescaled to sum to B."""
    w = 1.0 + torch.exp(-entropy(logits.detach(), reduction="none"))
    return w * (len(w) / w.sum())


def _domain_labels(n_source: int, n_target: int, like: torch.Tensor) -> torch.Tensor:
    return torch.cat([like.new_ones(n_source), like.new_zeros(n_target)])


class BinaryDomainAdversary(GradientReversalAdversary):
    """The skeleton (`GradientReversalAdversary.joint_step`) in CDAN's and BSP's form:
    `L = CE(source) + adv_weight * BCE_w(D(R_lambda(T(f, logits))), domain) + extra(f_s, f_t)`
    with one D output (source = 1, target = 0), lambda = 2 / (1 + exp(-gamma p)) - 1, and one
    optimizer (`make_optimizer`) over every parameter. Methods choose T (`disc_input`), the
    sample weights w and the extra term."""

    SETTINGS = ("uda",)
    HPARAMS = {
        "adv_weight": HParam(1.0, LogUniform(-1, 0.5), low=0.0, help="trade-off of the domain loss"),
        "grl_gamma": HParam(10.0, Choice([5.0, 10.0]), low=0.0, help="steepness of the lambda schedule"),
        "disc_width": HParam(256, Choice([256, 1024]), low=1, help="discriminator hidden width"),
        "disc_depth": HParam(3, Choice([2, 3]), low=2, help="discriminator layers"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.optimizer = make_optimizer(self.parameters(), self.hparams)

    def disc_outputs(self) -> int:
        return 1

    def reversal_coeff(self) -> float:
        return dann_schedule(self.progress, self.hparams["grl_gamma"])

    def sample_weights(self, logits: torch.Tensor) -> torch.Tensor | None:
        return None

    def disc_loss(self, u, d, y_src, logits):
        out = self.discriminator(u)[:, 0]
        labels = _domain_labels(len(y_src), len(out) - len(y_src), out)
        return F.binary_cross_entropy_with_logits(out, labels, weight=self.sample_weights(logits))

    def update(self, minibatches, unlabeled=None):
        xs, ys = concat_minibatches(minibatches)
        if not unlabeled:
            raise ShiftbenchError(f"{type(self).__name__} needs unlabeled target batches (--task uda)")
        s = self.joint_step(xs, ys, torch.cat(list(unlabeled)), weight=self.hparams["adv_weight"])
        return {"loss": s.loss.item(), "cls_loss": s.cls_loss.item(), "disc_loss": s.disc_loss.item(),
                "lambda": s.coeff, **{k: v.item() for k, v in s.extras.items()}}


@register_algorithm
class CDAN(BinaryDomainAdversary):
    """Conditional adversarial DA (Long et al., NeurIPS 2018).

    D sees the multilinear map `T(f, g) = vec(g f^T)` of the features f and the detached softmax
    g (a C*d vector), or the randomized map `(R_f f) * (R_g g) / sqrt(m)` with fixed Gaussian
    R_f, R_g when C*d > `multilinear_max` (4096). Loss: `CE(source) + w * BCE(D(R(T)), domain)`,
    with CDAN+E weighting each example by `1 + exp(-H(g))` (normalised over the joint batch to
    sum to its size, as TLlib; the official code normalises each domain's half separately).
    Departure: Adam (the benchmark's optimizer) instead of SGD with inverse-decay LR.
    """

    PAPER = "Long, Cao, Wang & Jordan, Conditional Adversarial Domain Adaptation, NeurIPS 2018"
    HPARAMS = {
        "entropy_conditioning": HParam(False, None, variant=True, help="CDAN+E weights"),
        "randomized_dim": HParam(1024, Choice([512, 1024]), low=1, help="m of the randomized map"),
        "multilinear_max": HParam(4096, None, low=1, help="largest C*d using the exact map"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        d, m = self.featurizer.n_outputs, int(self.hparams["randomized_dim"])
        if self.randomized:  # sampled once, saved with the model, never trained
            self.register_buffer("rf", torch.randn(d, m))
            self.register_buffer("rg", torch.randn(num_classes, m))
        else:
            self.rf = self.rg = None

    @property
    def randomized(self) -> bool:
        return self.featurizer.n_outputs * self.num_classes > int(self.hparams["multilinear_max"])

    def disc_inputs(self) -> int:
        if self.randomized:
            return int(self.hparams["randomized_dim"])
        return self.featurizer.n_outputs * self.num_classes

    def disc_input(self, f, logits):
        return multilinear_map(f, F.softmax(logits, dim=1).detach(), self.rf, self.rg)

    def sample_weights(self, logits):
        return entropy_weights(logits) if self.hparams["entropy_conditioning"] else None


@register_algorithm
class CDANE(CDAN):
    """CDAN+E (Long et al., NeurIPS 2018): CDAN with entropy conditioning on by default, so
    confident examples (weight `1 + exp(-H)`) count more in the domain loss; see CDAN."""

    PAPER = CDAN.PAPER
    HPARAMS = {"entropy_conditioning": HParam(True, None, variant=True, help="CDAN+E weights")}


@register_algorithm
class BSP(BinaryDomainAdversary):
    """Batch Spectral Penalization on DANN (Chen, Wang, Long & Wang, ICML 2019).

    `L = CE(source) + w * BCE(D(R_lambda(f)), domain) + beta * sum_{i<=k} (s_i(F_s)^2 + s_i(F_t)^2)`
    where s_i are the largest singular values of the batch feature matrices F_s (source) and
    F_t (target): penalising them stops a few directions from dominating the transferable
    features, which the paper shows hurts discriminability. Defaults k = 1, beta = 1e-4 (paper).
    The penalty grows with the features' scale: the paper (and TLlib) apply it to a pretrained
    or batch-normalised bottleneck; here it reads the featurizer's raw output (on dann_digits,
    He-initialised: beta * sum s_1^2 = 11.9 at step 0 against a cross-entropy of 2.3). On an
    untrained network its gradient then dwarfs the cross-entropy's and kills most conv channels
    within 30 steps; on synth the network never recovers (docs/reproductions.md, "BSP on
    synth"). `bsp_warmup` (fixed, default 0: the paper's loss from the first step) switches
    the penalty on only once training progress reaches it, the role of TLlib's source
    pretraining epochs before the penalty.
    Departure: Adam instead of SGD with inverse-decay LR; D is the shared MLP discriminator.
    """

    PAPER = ("Chen, Wang, Long & Wang, Transferability vs. Discriminability: Batch Spectral "
             "Penalization for Adversarial Domain Adaptation, ICML 2019")
    HPARAMS = {
        "bsp_weight": HParam(1e-4, LogUniform(-5, -3), low=0.0, help="beta of the spectral penalty"),
        "bsp_k": HParam(1, Choice([1, 2]), low=1, help="number of top singular values penalised"),
        "bsp_warmup": HParam(0.0, None, low=0.0, high=1.0,
                             help="training progress before the penalty is switched on (fixed)"),
    }

    def extra_loss(self, fs, ft):
        if self.progress < self.hparams["bsp_warmup"]:
            return {"bsp": fs.new_zeros(())}
        k = int(self.hparams["bsp_k"])
        penalty = sum((torch.linalg.svdvals(m)[:k] ** 2).sum() for m in (fs, ft))
        return {"bsp": self.hparams["bsp_weight"] * penalty}


@register_algorithm
class ADDA(TwoPhaseAdversary):
    """Adversarial Discriminative Domain Adaptation (Tzeng, Hoffman, Saenko & Darrell, CVPR 2017).

    Phase 1 (progress < `pretrain_fraction`): source encoder M_s and classifier C on source CE.
    Phase 2: the target encoder M_t starts as a copy of M_s; M_s and C are frozen; each step
      D-step: `min_D BCE(D(M_s(x_s)), 1) + BCE(D(M_t(x_t)), 0)`;
      M-step: `min_{M_t} BCE(D(M_t(x_t)), 1)` (inverted labels, not gradient reversal).
    `predict = C(M_t(x))` after the switch, `C(M_s(x))` before (`TwoPhaseAdversary`).
    Defaults from the paper's digits runs: D 500-500-1, Adam lr 2e-4, beta1 = 0.5 in phase 2.
    Under the `dann_digits` preset (SGD) phase 2 runs at lr 1e-3: at the preset's 0.01 the target
    encoder collapsed within 250 steps of the switch (every domain at chance; measured in
    docs/reproductions.md).
    """

    PAPER = "Tzeng, Hoffman, Saenko & Darrell, Adversarial Discriminative Domain Adaptation, CVPR 2017"
    HPARAMS = {"lr_target": HParam(2e-4, LogUniform(-4.5, -3), low=0.0, help="target encoder Adam lr")}

    def build(self) -> None:
        hp = self.hparams
        self.source_encoder = networks.Featurizer(self.input_shape, hp)
        self.classifier = classifier_head(self.source_encoder.n_outputs, self.num_classes, hp)
        self.target_encoder = copy.deepcopy(self.source_encoder)
        self.discriminator = Discriminator(self.source_encoder.n_outputs, 1, int(hp["disc_width"]), 3)

    def pair(self):
        return self.source_encoder, self.target_encoder

    def adversary(self):
        return self.discriminator

    def classify(self, net, x):
        return self.classifier(net(x))

    def adversarial_step(self, x_src, x_tgt):
        with torch.no_grad():
            fs = self.source_encoder(x_src)
        ft = self.target_encoder(x_tgt)
        d_out = self.discriminator(torch.cat([fs, ft.detach()]))[:, 0]
        d_loss = F.binary_cross_entropy_with_logits(d_out, _domain_labels(len(fs), len(ft), d_out))
        step(d_loss, self.disc_optimizer)
        t_out = self.discriminator(ft)[:, 0]
        m_loss = F.binary_cross_entropy_with_logits(t_out, torch.ones_like(t_out))
        step(m_loss, self.target_optimizer)
        return {"disc_loss": d_loss.item(), "target_loss": m_loss.item()}
