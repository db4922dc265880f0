"""Domain-adversarial feature learning: DANN (Ganin et al., JMLR 2016) and its class-conditional
variant CDANN (Li et al., ECCV 2018, in DomainBed's form).

A discriminator D reads the features z = phi(x) and predicts the domain; the featurizer is
trained to classify well while making D fail:

    min_{phi, w} max_D   CE(w(phi(x_s)), y_s) - lambda * L_D(D(phi(x)), d)

Two training schemes (variant switch `dann_scheme`, fixed for a sweep):

* ``"reversal"`` (the paper's; the default under ``--protocol shiftbench`` because DANN's paper
  defines the method this way): one joint step of `CE + L_D` where the features reach D through
  a gradient-reversal layer of coefficient `lambda * lambda_p`, with the paper's schedule
  `lambda_p = 2 / (1 + exp(-gamma p)) - 1` (p = training progress, gamma = 10; hparam
  `lambda_schedule` turns it off). D descends L_D with an unscaled gradient; phi ascends it.
* ``"alternating"`` (DomainBed's; fixed under ``--protocol domainbed``): `d_steps_per_g_step`
  discriminator-only steps on `L_D + grad_penalty * P`, then one featurizer+classifier step on
  `CE - lambda * (L_D + grad_penalty * P)`, no reversal layer and no schedule.

The gradient penalty is DomainBed's, in both schemes: `P = mean_i ||d S / d u_i||^2` where
`S = sum_i CE(D(u_i), d_i)` is the *summed, unweighted* discriminator cross-entropy and u_i the
discriminator's input (z_i, plus the class embedding in CDANN).

What D classifies depends on the setting: in ``dg`` the source-domain index (num_domains classes,
DomainBed); in ``uda`` source vs target (2 classes, the paper), fed with the unlabeled target
batches, each half weighted 1/2 so unequal batch sizes stay balanced. Target labels are never
used. D is an MLP (`disc_width`, `disc_depth`, `disc_dropout`: DomainBed's `mlp_width`,
`mlp_depth`, `mlp_dropout`). Optimizers (variant switch `dann_optimizer`): two Adams with betas
(beta1, 0.9) as DomainBed (default), or the paper's SGD with momentum 0.9 and annealed learning
rate lr_p = lr / (1 + 10 p)^0.75 (set lr_g/lr_d to SGD-sized values, e.g. 0.01: the default
learning rates are Adam-sized). On the rotated-moons toy the adversarial effect appears with SGD,
not with Adam (docs/benchmarks.md).

Under ``--protocol domainbed`` the space is DomainBed's: alternating Adam updates, lr_g / lr_d /
weight_decay_g by DomainBed's dataset rule (28x28 inputs are its small images), and its search
distributions for lambda, d_steps_per_g_step, grad_penalty, beta1 and the discriminator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench import networks
from shiftbench.algorithms.base import (
    Algorithm,
    _domainbed_lr,
    _domainbed_weight_decay,
    _lr,
    _weight_decay,
    cross_entropy,
    register_algorithm,
    step,
)
from shiftbench.algorithms.components import Discriminator, classifier_head, dann_schedule, grad_reverse
from shiftbench.hparams import Choice, HParam, IntLogUniform, LogUniform

SCHEMES = ("reversal", "alternating")
OPTIMIZERS = ("adam", "sgd")


def _renamed(spec, help_text: str):
    return lambda ds: HParam(spec(ds).default, spec(ds).dist, low=0.0, help=help_text)


class GradientReversalAdversary(Algorithm):
    """The one base of the domain-adversarial methods (DANN, CDANN, CDAN, BSP): a featurizer
    phi, a classifier w and a domain discriminator D on `disc_inputs()` features, played
    against phi through the gradient-reversal layer R_c (identity forward, -c x gradient
    backward) with DANN's coefficient c = scale * (2 / (1 + exp(-gamma p)) - 1) over training
    progress p. Subclasses choose D's outputs, the loss and the optimizers."""

    def build_networks(self) -> None:
        self.featurizer = networks.Featurizer(self.input_shape, self.hparams)
        self.classifier = classifier_head(self.featurizer.n_outputs, self.num_classes, self.hparams)

    def disc_inputs(self) -> int:
        return self.featurizer.n_outputs

    def build_discriminator(self, n_out: int, width: int, depth: int, dropout: float = 0.0) -> None:
        self.discriminator = Discriminator(self.disc_inputs(), n_out, int(width), int(depth), dropout)

    def grl_coeff(self, gamma: float, scale: float = 1.0, scheduled: bool = True) -> float:
        """scale * (2 / (1 + exp(-gamma p)) - 1), or scale without the schedule."""
        return scale * (dann_schedule(self.progress, gamma) if scheduled else 1.0)

    def adversary_logits(self, u: torch.Tensor, coeff: float) -> torch.Tensor:
        """D(R_coeff(u)): D descends its loss, the features ascend it scaled by coeff."""
        return self.discriminator(grad_reverse(u, coeff))

    def predict(self, x):
        return self.classifier(self.featurizer(x))


class AbstractDANN(GradientReversalAdversary):
    """Shared machinery of DANN and CDANN (`conditional` adds the class embedding)."""

    SETTINGS = ("dg", "uda")
    conditional = False
    HPARAMS = {
        "dann_scheme": HParam("reversal", None, choices=SCHEMES, variant=True,
                              help="reversal: paper's GRL + schedule; alternating: DomainBed's"),
        "lambda": HParam(1.0, LogUniform(-2, 2), low=0.0, help="weight of the adversarial term"),
        "lambda_schedule": HParam(True, None, variant=True,
                                  help="reversal: scale lambda by 2/(1+e^-gamma p)-1"),
        "schedule_gamma": HParam(10.0, Choice([5.0, 10.0]), low=0.0, help="steepness gamma"),
        "d_steps_per_g_step": HParam(1, IntLogUniform(0, 3), low=1, help="alternating only"),
        "grad_penalty": HParam(0.0, LogUniform(-2, 1), low=0.0, help="D input-gradient penalty"),
        "dann_optimizer": HParam("adam", None, choices=OPTIMIZERS, variant=True,
                                 help="adam (DomainBed) or sgd (paper)"),
        "beta1": HParam(0.5, Choice([0.0, 0.5]), low=0.0, high=1.0, help="Adam beta1 (both)"),
        "disc_width": HParam(256, IntLogUniform(6, 10), low=1, help="discriminator width"),
        "disc_depth": HParam(3, Choice([3, 4, 5]), low=1, help="discriminator layers"),
        "disc_dropout": HParam(0.0, Choice([0.0, 0.1, 0.5]), low=0.0, high=1.0),
        "lr_g": _renamed(_lr, "featurizer+classifier learning rate"),
        "lr_d": _renamed(_lr, "discriminator learning rate"),
        "weight_decay_g": _renamed(_weight_decay, "featurizer+classifier weight decay"),
        "weight_decay_d": HParam(0.0, LogUniform(-6, -2), low=0.0, help="discriminator weight decay"),
    }
    DOMAINBED_HPARAMS = {
        "dann_scheme": HParam("alternating", None, choices=SCHEMES, variant=True),
        "schedule_gamma": HParam(10.0, None, low=0.0, help="reversal only (unused by DomainBed)"),
        "lr_g": _renamed(_domainbed_lr, "featurizer+classifier learning rate"),
        "lr_d": _renamed(_domainbed_lr, "discriminator learning rate"),
        "weight_decay_g": _renamed(_domainbed_weight_decay, "featurizer+classifier weight decay"),
        # DomainBed's mlp_width / mlp_depth / mlp_dropout, drawn under DomainBed's names
        "disc_width": HParam(256, IntLogUniform(6, 10), low=1, seed_name="mlp_width"),
        "disc_depth": HParam(3, Choice([3, 4, 5]), low=1, seed_name="mlp_depth"),
        "disc_dropout": HParam(0.0, Choice([0.0, 0.1, 0.5]), low=0.0, high=1.0, seed_name="mlp_dropout"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        hp = self.hparams
        self.build_networks()
        self.gen_opt = self._optimizer(
            list(self.featurizer.parameters()) + list(self.classifier.parameters()),
            hp["lr_g"], hp["weight_decay_g"])
        # uda: one source-vs-target discriminator; otherwise one output per source domain
        self._build_discriminator(2 if self.setting.unlabeled_target else num_domains)

    def _optimizer(self, params, lr, weight_decay):
        if self.hparams["dann_optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay,
                                betas=(self.hparams["beta1"], 0.9))

    def _build_discriminator(self, n_out: int) -> None:
        """D (+ class embeddings) with `n_out` outputs, and its optimizer."""
        hp, n = self.hparams, self.featurizer.n_outputs
        self.build_discriminator(n_out, hp["disc_width"], hp["disc_depth"], hp["disc_dropout"])
        self.class_embeddings = nn.Embedding(self.num_classes, n) if self.conditional else None
        d_params = list(self.discriminator.parameters())
        if self.conditional:
            d_params += list(self.class_embeddings.parameters())
        self.disc_opt = self._optimizer(d_params, hp["lr_d"], hp["weight_decay_d"])

    def reversal_coeff(self) -> float:
        """lambda * (2 / (1 + exp(-gamma p)) - 1), or lambda without the schedule."""
        hp = self.hparams
        return self.grl_coeff(hp["schedule_gamma"], hp["lambda"], hp["lambda_schedule"])

    def disc_loss(self, z, d, y_src, logits_tgt):
        """`L_D + grad_penalty * P` for features z = [source; target] with domain labels d: the
        weighted discriminator loss and DomainBed's gradient penalty (module docstring)."""
        n_src = len(y_src)
        if self.conditional:
            # no target labels: the expected class embedding under the detached prediction
            emb_tgt = F.softmax(logits_tgt.detach(), 1) @ self.class_embeddings.weight
            z = z + torch.cat([self.class_embeddings(y_src), emb_tgt])
        out = self.discriminator(z)
        if not self.conditional and len(z) == n_src:  # every weight 1/n: DomainBed's plain mean
            loss = F.cross_entropy(out, d)
        else:
            if self.conditional:  # class-balanced as DomainBed: 1 / (count(y) * (max label + 1))
                counts = torch.bincount(y_src).float()
                w = 1.0 / (counts[y_src] * len(counts))
            else:
                w = torch.full((n_src,), 1.0 / n_src, device=z.device)
            if len(z) > n_src:  # uda: source and target halves weigh 1/2 each
                w = 0.5 * torch.cat([w, torch.full((len(z) - n_src,), 1.0 / (len(z) - n_src),
                                                   device=z.device)])
            loss = (w * F.cross_entropy(out, d, reduction="none")).sum()
        if self.hparams["grad_penalty"] > 0:
            summed = F.cross_entropy(out, d, reduction="sum")
            grad = torch.autograd.grad(summed, z, create_graph=True)[0]
            loss = loss + self.hparams["grad_penalty"] * (grad ** 2).sum(1).mean(0)
        return loss

    def update(self, minibatches, unlabeled=None):
        sources, _ = self.split_minibatches(minibatches)
        x_src = torch.cat([x for x, _ in sources])
        y_src = torch.cat([y for _, y in sources])
        if self.setting.unlabeled_target:
            x_tgt = torch.cat(list(unlabeled or [])) if unlabeled else x_src[:0]
            d = torch.cat([torch.zeros(len(x_src)), torch.ones(len(x_tgt))])
        else:
            x_tgt = x_src[:0]
            d = torch.cat([torch.full((len(x),), float(i)) for i, (x, _) in enumerate(sources)])
        d = d.long().to(x_src.device)
        n_src = len(x_src)
        z = self.featurizer(torch.cat([x_src, x_tgt]))
        logits = self.classifier(z)
        cls_loss = cross_entropy(logits[:n_src], y_src)
        scheme, k = self.hparams["dann_scheme"], self.hparams["d_steps_per_g_step"]
        d_step = scheme == "alternating" and (int(self.num_updates) + 1) % (1 + k) < k
        if scheme == "reversal":
            coeff = self.reversal_coeff()
            z_in = grad_reverse(z, coeff)
        else:
            z_in = z.detach().requires_grad_() if d_step else z
        d_loss = self.disc_loss(z_in, d, y_src, logits[n_src:])
        if scheme == "reversal":
            self._anneal_sgd()
            step(cls_loss + d_loss, self.disc_opt, self.gen_opt)
            return {"loss": cls_loss.item(), "disc_loss": d_loss.item(), "grl_coeff": coeff}
        if d_step:
            self._anneal_sgd()
            step(d_loss, self.disc_opt)
            return {"disc_loss": d_loss.item()}
        gen_loss = cls_loss - self.hparams["lambda"] * d_loss
        self._anneal_sgd()
        step(gen_loss, self.gen_opt)
        return {"loss": cls_loss.item(), "gen_disc_loss": d_loss.item(), "gen_loss": gen_loss.item()}

    def _anneal_sgd(self) -> None:
        """The paper's SGD schedule lr_p = lr / (1 + 10 p)^0.75 (no-op with Adam)."""
        if self.hparams["dann_optimizer"] == "sgd":
            decay = (1 + 10 * self.progress) ** -0.75
            for opt, lr in ((self.gen_opt, self.hparams["lr_g"]), (self.disc_opt, self.hparams["lr_d"])):
                for group in opt.param_groups:
                    group["lr"] = lr * decay



@register_algorithm
class DANN(AbstractDANN):
    """Domain-adversarial neural network: CE + adversarial domain loss through gradient reversal
    (paper) or alternating D/G steps (DomainBed); see the module docstring for the loss."""

    PAPER = "Ganin et al., Domain-Adversarial Training of Neural Networks, JMLR 2016"


@register_algorithm
class CDANN(AbstractDANN):
    """Conditional DANN: D reads z + e(y), a learned embedding of the class, and its loss is
    class-balanced (1/count(y) weights), so phi aligns p(z|y) across domains. In uda the target
    has no labels: e is replaced by its expectation under the detached prediction (our choice)."""

    PAPER = "Li et al., Deep Domain Generalization via Conditional Invariant Adversarial Networks, ECCV 2018"
    conditional = True
