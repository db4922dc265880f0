"""Domain-adversarial feature learning: DANN (Ganin et al., JMLR 2016) and its class-conditional
variant CDANN (Li et al., ECCV 2018), in the paper's form and in DomainBed's, and the two skeletons
of the adversarial methods: `GradientReversalAdversary` (DANN, CDANN, CDAN, BSP) and
`TwoPhaseAdversary` (ADDA, GAM). A discriminator D predicts the domain d of the features
z = phi(x); phi learns to classify while making D fail:

    min_{phi, w} max_D   CE(w(phi(x_s)), y_s) - lambda * L_D(D(phi(x)), d)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench import networks
from shiftbench.algorithms.base import (
    OPTIMIZERS,
    Algorithm,
    _domainbed_lr,
    _domainbed_weight_decay,
    _lr,
    _weight_decay,
    concat_minibatches,
    cross_entropy,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.components import (
    Discriminator,
    PhaseSchedule,
    classifier_head,
    dann_schedule,
    grad_reverse,
)
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import Choice, HParam, IntLogUniform, LogUniform

SCHEMES = ("reversal", "alternating")


class JointStep(NamedTuple):
    """The terms of one joint reversal step (`GradientReversalAdversary.joint_step`)."""

    loss: torch.Tensor
    cls_loss: torch.Tensor
    disc_loss: torch.Tensor
    coeff: float
    extras: dict[str, torch.Tensor]


class GradientReversalAdversary(Algorithm):
    """The skeleton of the gradient-reversal methods (DANN, CDANN, CDAN, BSP): a featurizer phi,
    a classifier w and a domain discriminator D on u = T(z, w(z)) (`disc_input`; z itself unless
    a method conditions it). `joint_step` takes, with every optimizer at once, one step on

        L = CE(w(z_s), y_s) + weight * L_D(D(R_c(u)), d) + extra(z_s, z_t),   z = phi([x_s; x_t])

    where R_c (identity forward, -c x gradient backward) lets D descend L_D while phi ascends
    it scaled by c. Methods give D's outputs, c (`reversal_coeff`), `disc_loss` and `extra_loss`,
    and the weight to `joint_step`."""

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        hp = self.hparams
        self.featurizer = networks.Featurizer(self.input_shape, hp)
        self.classifier = classifier_head(self.featurizer.n_outputs, self.num_classes, hp)
        self.discriminator = Discriminator(self.disc_inputs(), self.disc_outputs(), int(hp["disc_width"]),
                                           int(hp["disc_depth"]), hp.get("disc_dropout", 0.0))

    def disc_inputs(self) -> int:
        return self.featurizer.n_outputs

    def disc_outputs(self) -> int:
        raise NotImplementedError

    def disc_input(self, f: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """T(z, w(z)) of the features f = z, what D reads (before the reversal layer)."""
        return f

    def reversal_coeff(self) -> float:
        """c, in DANN's schedule scale * (2 / (1 + exp(-gamma p)) - 1) (`dann_schedule`)."""
        raise NotImplementedError

    def disc_loss(self, u: torch.Tensor, d: torch.Tensor | None, y_src: torch.Tensor,
                  logits: torch.Tensor) -> torch.Tensor:
        """L_D of D's input u (for [source; target]) given the domain labels d, if the method
        uses them, the source labels and the logits of the whole batch."""
        raise NotImplementedError

    def extra_loss(self, fs: torch.Tensor, ft: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def forward_joint(self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor):
        """z = phi([x_s; x_t]), the logits w(z) and the source cross-entropy."""
        z = self.featurizer(torch.cat([x_src, x_tgt]))
        logits = self.classifier(z)
        return z, logits, cross_entropy(logits[: len(x_src)], y_src)

    def joint_step(self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor,
                   d: torch.Tensor | None = None, weight: float = 1.0) -> JointStep:
        z, logits, cls_loss = self.forward_joint(x_src, y_src, x_tgt)
        coeff = self.reversal_coeff()
        d_loss = self.disc_loss(grad_reverse(self.disc_input(z, logits), coeff), d, y_src, logits)
        extras = self.extra_loss(z[: len(x_src)], z[len(x_src):])
        loss = cls_loss + weight * d_loss + sum(extras.values())
        step(loss, *self.optimizers().values())
        return JointStep(loss, cls_loss, d_loss, coeff, extras)

    def predict(self, x):
        return self.classifier(self.featurizer(x))


def _renamed(spec, help_text: str):
    return lambda ds: HParam(spec(ds).default, spec(ds).dist, low=0.0, help=help_text)


class AbstractDANN(GradientReversalAdversary):
    """DANN and CDANN (`conditional` adds the class embedding). Schemes (`dann_scheme`, fixed):

    * ``reversal`` (the paper's; default under ``--protocol shiftbench``): the skeleton's joint
      step on `CE + L_D`, c = lambda * (2 / (1 + exp(-gamma p)) - 1) (gamma `schedule_gamma`;
      `lambda_schedule` off: c = lambda);
    * ``alternating`` (DomainBed's; fixed under ``--protocol domainbed``): `d_steps_per_g_step`
      D-only steps on `L_D + grad_penalty * P`, then one phi+w step on
      `CE - lambda * (L_D + grad_penalty * P)`, without reversal or schedule.

    `P = mean_i ||d S / d u_i||^2` is DomainBed's gradient penalty (S the summed, unweighted CE of
    D, u_i its input). In ``dg`` D predicts the source domain (DomainBed); in ``uda`` source vs
    target (the paper), each half weighted 1/2. Target labels are never used. D is an MLP
    (`disc_*`: DomainBed's `mlp_*`). `dann_optimizer`: Adam with betas (beta1, 0.9) (DomainBed)
    or the paper's SGD, momentum 0.9, under the base's `dann` schedule lr / (1 + 10 p)^0.75
    (give lr_g / lr_d SGD sizes, e.g. 0.01; on the rotated-moons toy the adversarial effect
    appears with SGD, not Adam: docs/benchmarks.md). ``--protocol domainbed`` draws lr_g, lr_d,
    weight_decay_g by DomainBed's dataset rule and its distributions for lambda,
    d_steps_per_g_step, grad_penalty, beta1 and D.
    """

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
        opt = functools.partial(make_optimizer, hparams=hp, name=hp["dann_optimizer"],
                                momentum=0.9, betas=(hp["beta1"], 0.9))
        self.gen_opt = opt([*self.featurizer.parameters(), *self.classifier.parameters()],
                           lr=hp["lr_g"], weight_decay=hp["weight_decay_g"])
        self.class_embeddings = (nn.Embedding(self.num_classes, self.featurizer.n_outputs)
                                 if self.conditional else None)
        d_params = [*self.discriminator.parameters(),
                    *(self.class_embeddings.parameters() if self.class_embeddings is not None else ())]
        self.disc_opt = opt(d_params, lr=hp["lr_d"], weight_decay=hp["weight_decay_d"])

    def disc_outputs(self) -> int:
        """uda: source vs target; otherwise one output per source domain."""
        return 2 if self.setting.unlabeled_target else self.num_domains

    def lr_schedule(self) -> str:
        """The paper's SGD anneals as lr / (1 + 10 p)^0.75: the base's `dann` schedule."""
        return "dann" if self.hparams["dann_optimizer"] == "sgd" else super().lr_schedule()

    def reversal_coeff(self) -> float:
        """lambda * (2 / (1 + exp(-gamma p)) - 1), or lambda without the schedule."""
        hp = self.hparams
        return hp["lambda"] * (dann_schedule(self.progress, hp["schedule_gamma"])
                               if hp["lambda_schedule"] else 1.0)

    def disc_loss(self, u, d, y_src, logits):
        """`L_D + grad_penalty * P` for D's input u = [source; target] and domain labels d: the
        weighted discriminator loss and DomainBed's gradient penalty (module docstring)."""
        assert d is not None
        n_src = len(y_src)
        if self.class_embeddings is not None:
            # no target labels: the expected class embedding under the detached prediction
            emb_tgt = F.softmax(logits[n_src:].detach(), 1) @ self.class_embeddings.weight
            u = u + torch.cat([self.class_embeddings(y_src), emb_tgt])
        out = self.discriminator(u)
        if not self.conditional and len(u) == n_src:  # every weight 1/n: DomainBed's plain mean
            loss = F.cross_entropy(out, d)
        else:
            if self.conditional:  # class-balanced as DomainBed: 1 / (count(y) * (max label + 1))
                counts = torch.bincount(y_src).float()
                w = 1.0 / (counts[y_src] * len(counts))
            else:
                w = torch.full((n_src,), 1.0 / n_src, device=u.device)
            if len(u) > n_src:  # uda: source and target halves weigh 1/2 each
                w = 0.5 * torch.cat([w, torch.full((len(u) - n_src,), 1.0 / (len(u) - n_src),
                                                   device=u.device)])
            loss = (w * F.cross_entropy(out, d, reduction="none")).sum()
        if self.hparams["grad_penalty"] > 0:
            summed = F.cross_entropy(out, d, reduction="sum")
            grad = torch.autograd.grad(summed, u, create_graph=True)[0]
            loss = loss + self.hparams["grad_penalty"] * (grad ** 2).sum(1).mean(0)
        return loss

    def update(self, minibatches, unlabeled=None):
        sources, _ = self.split_minibatches(minibatches)
        x_src, y_src = concat_minibatches(sources)
        x_tgt = torch.cat(list(unlabeled)) if unlabeled and self.setting.unlabeled_target else x_src[:0]
        parts = [x_src, x_tgt] if self.setting.unlabeled_target else [x for x, _ in sources]
        d = torch.cat([torch.full((len(x),), i, device=x_src.device) for i, x in enumerate(parts)])
        if self.hparams["dann_scheme"] == "reversal":
            s = self.joint_step(x_src, y_src, x_tgt, d)
            return {"loss": s.cls_loss.item(), "disc_loss": s.disc_loss.item(), "grl_coeff": s.coeff}
        k = self.hparams["d_steps_per_g_step"]
        d_step = (int(self.num_updates) + 1) % (1 + k) < k  # DomainBed's counter, from 1
        z, logits, cls_loss = self.forward_joint(x_src, y_src, x_tgt)
        d_loss = self.disc_loss(z.detach().requires_grad_() if d_step else z, d, y_src, logits)
        if d_step:
            step(d_loss, self.disc_opt)
            return {"disc_loss": d_loss.item()}
        gen_loss = cls_loss - self.hparams["lambda"] * d_loss
        step(gen_loss, self.gen_opt)
        return {"loss": cls_loss.item(), "gen_disc_loss": d_loss.item(), "gen_loss": gen_loss.item()}


@register_algorithm
class DANN(AbstractDANN):
    """Domain-adversarial neural network: `CE(w(z_s), y_s) + L_D(D(R_c(z)), d)` (reversal) or
    alternating D / phi+w steps (DomainBed); L_D is D's weighted cross-entropy (AbstractDANN)."""

    PAPER = "Ganin et al., Domain-Adversarial Training of Neural Networks, JMLR 2016"


@register_algorithm
class CDANN(AbstractDANN):
    """Conditional DANN: D reads z + e(y), a learned embedding of the class, and its loss is
    class-balanced (1/count(y) weights), so phi aligns p(z|y) across domains. In uda the target
    has no labels: e is replaced by its expectation under the detached prediction (our choice)."""

    PAPER = "Li et al., Deep Domain Generalization via Conditional Invariant Adversarial Networks, ECCV 2018"
    conditional = True


class TwoPhaseAdversary(Algorithm):
    """A source phase, then adversarial adaptation of a copy (ADDA, GAM). Phase 1 (progress <
    `pretrain_fraction`): the source model S learns source CE with the hparams' optimizer. At the
    switch the adapted network T starts as a copy of its part of S (`pair`), and S stays frozen.
    Phase 2: each step the method's `adversarial_step` moves the discriminator(s) D and T with
    their own Adams (lr_d, lr_target; betas (beta1, 0.999)); D is moved by its own step only.
    `predict` uses T after the switch, S before; both phases count in the budget. A method builds
    S, T and D in `build` (S: every parameter that is not T's or D's) and names them in `pair`
    and `adversary`; `classify(net, x)` turns S's or T's part into logits."""

    SETTINGS = ("uda",)
    PHASES = PhaseSchedule("pretrain_fraction")
    HPARAMS = {
        "pretrain_fraction": HParam(0.5, Choice([0.3, 0.5]), low=0.0, high=1.0,
                                    help="share of the steps spent on source pretraining"),
        "lr_d": HParam(2e-4, LogUniform(-4.5, -3), low=0.0, help="discriminator Adam lr"),
        "lr_target": HParam(2e-4, LogUniform(-4.5, -3), low=0.0, help="target network Adam lr"),
        "beta1": HParam(0.5, Choice([0.5, 0.9]), low=0.0, high=1.0, help="Adam beta1 in phase 2"),
        "disc_width": HParam(500, Choice([500, 1024]), low=1, help="discriminator hidden width"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.build()
        self.register_buffer("adapting", torch.zeros((), dtype=torch.bool))
        hp, target, adversary = self.hparams, self.pair()[1], self.adversary()
        held = {id(p) for p in (*target.parameters(), *adversary.parameters())}
        betas = (float(hp["beta1"]), 0.999)
        self.optimizer = make_optimizer([p for p in self.parameters() if id(p) not in held], hp)
        self.target_optimizer = make_optimizer(target.parameters(), hp, lr=hp["lr_target"], betas=betas)
        self.disc_optimizer = make_optimizer(adversary.parameters(), hp, lr=hp["lr_d"], betas=betas)

    def build(self) -> None:
        raise NotImplementedError

    def pair(self) -> tuple[nn.Module, nn.Module]:
        """S's part that T copies at the switch, and T."""
        raise NotImplementedError

    def adversary(self) -> nn.Module:
        raise NotImplementedError

    def classify(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net(x)

    def adversarial_step(self, x_src: torch.Tensor, x_tgt: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def start_adaptation(self) -> None:
        """The phase switch: T <- S's part (drift 0), then S stays frozen."""
        source, target = self.pair()
        target.load_state_dict(source.state_dict())
        self.adapting.fill_(True)

    def update(self, minibatches, unlabeled=None):
        xs, ys = concat_minibatches(minibatches)
        if not self.PHASES.adapting(self):
            loss = cross_entropy(self.classify(self.pair()[0], xs), ys)
            step(loss, self.optimizer)
            return {"cls_loss": loss.item(), "phase": 1.0}
        if not unlabeled:
            raise ShiftbenchError(f"{type(self).__name__} needs unlabeled target batches (--task uda)")
        values = self.adversarial_step(xs, torch.cat(list(unlabeled)))
        self.adversary().zero_grad(set_to_none=True)  # D is only moved by its own step
        return {**values, "phase": 2.0}

    def predict(self, x):
        source, target = self.pair()
        return self.classify(target if self.adapting else source, x)
