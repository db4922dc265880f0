"""Online self-training for domain adaptation: Pseudo-Label, FixMatch, Mean Teacher and DACS.

All four train on the labeled batches (sources, plus the few labeled target examples in `ssda`,
pooled as in ERM's "S+T") and add an unsupervised term on the unlabeled target batch. Target
labels are never read. Notation: `f` the network, `q = softmax(.)`, `tau` a confidence threshold,
`B_t` the unlabeled batch size; every unlabeled loss is averaged over the *whole* unlabeled batch
(masked samples count as zeros), as in the reference implementations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shiftbench.algorithms import augment
from shiftbench.algorithms.base import concat_minibatches, cross_entropy, register_algorithm, step
from shiftbench.algorithms.components import EMA
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import Choice, HParam, LogUniform, Uniform


def linear_ramp(progress: float, start: float, end: float) -> float:
    """0 before `start`, 1 after `end`, linear in between (Lee's alpha(t) schedule)."""
    if progress <= start:
        return 0.0
    if progress >= end or end <= start:
        return 1.0
    return (progress - start) / (end - start)


def sigmoid_ramp(progress: float, length: float) -> float:
    """`exp(-5 (1 - t)^2)` with `t = min(1, progress / length)` (Laine & Aila; Tarvainen)."""
    if length <= 0:
        return 1.0
    t = min(1.0, max(0.0, progress / length))
    return math.exp(-5.0 * (1.0 - t) ** 2)


def ema_warmup_decay(step: int, cap: float) -> float:
    """`min(1 - 1/(t + 1), cap)`: the teacher starts as a copy of the student and then averages."""
    return min(1.0 - 1.0 / (step + 1), cap)


def masked_pseudo_label_loss(logits: torch.Tensor, probs: torch.Tensor, tau: float):
    """`mean_i 1[max q_i >= tau] CE(logits_i, argmax q_i)` over the whole batch, and the mask."""
    conf, labels = probs.max(dim=1)
    mask = (conf >= tau).float()
    return (F.cross_entropy(logits, labels, reduction="none") * mask).mean(), mask


class _SelfTraining(ERM):
    """ERM's network and optimizer plus the shared plumbing of the online self-training methods."""

    SETTINGS = ("uda", "ssda")

    def _labeled(self, minibatches) -> tuple[torch.Tensor, torch.Tensor]:
        return concat_minibatches(minibatches)  # sources and (ssda) the few labeled targets


@register_algorithm
class PseudoLabel(_SelfTraining):
    """Pseudo-Label (Lee, 2013) with a confidence threshold (as in TLLib's self-training loss).

    L = CE(f(x_s), y_s) + alpha(p) * mean_i 1[max q_i >= tau] CE(f(x_t,i), argmax q_i),
    q = softmax(f(x_t)) from the same forward pass, detached. alpha(p) rises linearly from 0 at
    progress `pl_ramp_start` to `pl_weight` at `pl_ramp_end` (Lee: 0 before epoch 100, 3 after
    epoch 600; we express T1, T2 as fractions of the budget). tau = 0 gives Lee's original loss.
    """

    PAPER = "Lee, Pseudo-Label: simple and efficient semi-supervised learning, ICML-W 2013"
    HPARAMS = {
        "pl_weight": HParam(3.0, LogUniform(-0.5, 0.5), low=0.0, help="final weight alpha_f"),
        "pl_threshold": HParam(0.9, Choice([0.0, 0.8, 0.9, 0.95]), low=0.0, high=1.0,
                               help="confidence threshold tau (0 = Lee's original)"),
        "pl_ramp_start": HParam(0.1, None, low=0.0, high=1.0, help="progress where alpha leaves 0"),
        "pl_ramp_end": HParam(0.4, None, low=0.0, high=1.0, help="progress where alpha = alpha_f"),
    }

    def update(self, minibatches, unlabeled=None):
        x, y = self._labeled(minibatches)
        sup = cross_entropy(self.network(x), y)
        weight = self.hparams["pl_weight"] * linear_ramp(
            self.progress, self.hparams["pl_ramp_start"], self.hparams["pl_ramp_end"])
        unsup, mask = sup.new_zeros(()), sup.new_zeros(1)
        if unlabeled:
            logits_t = self.network(torch.cat(list(unlabeled)))
            unsup, mask = masked_pseudo_label_loss(
                logits_t, F.softmax(logits_t.detach(), dim=1), self.hparams["pl_threshold"])
        loss = sup + weight * unsup
        step(loss, self.optimizer)
        return {"loss": loss.item(), "sup_loss": sup.item(), "pl_loss": unsup.item(),
                "pl_mask": mask.mean().item(), "pl_weight": weight}


@register_algorithm
class FixMatch(_SelfTraining):
    """FixMatch (Sohn et al., 2020): pseudo-labels from a weak view supervise a strong view.

    L = CE(f(weak(x_s)), y_s) + lambda_u * mean_i 1[max q_i >= tau] CE(f(strong(x_t,i)), argmax q_i),
    q = softmax(f(weak(x_t))) under no-grad. Views come from `shiftbench.algorithms.augment`:
    weak = (flip and) shift by 12.5%; strong = weak + colour jitter + cutout, standing in for
    RandAugment (whose PIL operations do not run on batched tensors). Departures: one unlabeled
    batch per labeled batch (mu = 1, the trainer's protocol) and no EMA model for evaluation.
    """

    PAPER = "Sohn et al., FixMatch: simplifying semi-supervised learning with consistency and " \
            "confidence, NeurIPS 2020"
    HPARAMS = {
        "fixmatch_threshold": HParam(0.95, Choice([0.8, 0.9, 0.95]), low=0.0, high=1.0,
                                     help="confidence threshold tau"),
        "fixmatch_weight": HParam(1.0, LogUniform(-0.5, 0.5), low=0.0, help="lambda_u"),
        "aug_flip": HParam(False, None, variant=True, help="horizontal flips in the views (off for digits)"),
        "aug_jitter": HParam(0.4, Choice([0.2, 0.4]), low=0.0, high=1.0,
                             help="colour jitter strength of the strong view"),
    }

    def update(self, minibatches, unlabeled=None):
        hp = self.hparams
        x, y = self._labeled(minibatches)
        sup = cross_entropy(self.network(augment.weak_augment(x, hp["aug_flip"])), y)
        unsup, mask = sup.new_zeros(()), sup.new_zeros(1)
        if unlabeled:
            xt = torch.cat(list(unlabeled))
            with torch.no_grad():
                probs = F.softmax(self.network(augment.weak_augment(xt, hp["aug_flip"])), dim=1)
            strong = augment.strong_augment(xt, hp["aug_flip"], hp["aug_jitter"])
            unsup, mask = masked_pseudo_label_loss(self.network(strong), probs,
                                                   hp["fixmatch_threshold"])
        loss = sup + hp["fixmatch_weight"] * unsup
        step(loss, self.optimizer)
        return {"loss": loss.item(), "sup_loss": sup.item(), "unsup_loss": unsup.item(),
                "mask_rate": mask.mean().item()}


@register_algorithm
class MeanTeacher(_SelfTraining):
    """Mean Teacher (Tarvainen & Valpola, 2017): consistency with an EMA of the student.

    L = CE(f(aug(x_s)), y_s) + w(p) * mean_i ||softmax(f(aug(x_t,i))) - softmax(f'(aug'(x_t,i)))||^2 / K,
    where f' (the teacher) is an EMA of the student's parameters updated after every optimiser
    step with decay min(1 - 1/(t+1), alpha), aug and aug' are independent weak views, and
    w(p) = mt_weight * exp(-5 (1 - min(1, p / mt_rampup))^2). The consistency term is applied to
    the unlabeled target batch (French et al.'s DA use). Predictions come from the teacher
    (`mt_eval_teacher`), the model the paper recommends at test time.
    """

    PAPER = "Tarvainen & Valpola, Mean teachers are better role models, NeurIPS 2017"
    HPARAMS = {
        "mt_weight": HParam(3.0, LogUniform(-1, 1), low=0.0, help="final consistency weight"),
        "mt_ema": HParam(0.99, Choice([0.99, 0.999]), low=0.0, high=1.0, help="EMA decay alpha"),
        "mt_rampup": HParam(0.3, Choice([0.1, 0.3]), low=0.0, high=1.0,
                            help="share of the budget for the consistency ramp-up"),
        "mt_eval_teacher": HParam(True, None, variant=True,
                                  help="predict with the teacher (else the student)"),
        "aug_flip": HParam(False, None, variant=True, help="horizontal flips in the views (off for digits)"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.teacher = EMA(self.network)

    def update(self, minibatches, unlabeled=None):
        hp = self.hparams
        x, y = self._labeled(minibatches)
        sup = cross_entropy(self.network(augment.weak_augment(x, hp["aug_flip"])), y)
        cons = sup.new_zeros(())
        if unlabeled:
            xt = torch.cat(list(unlabeled))
            with torch.no_grad():
                target = F.softmax(self.teacher(augment.weak_augment(xt, hp["aug_flip"])), dim=1)
            student = F.softmax(self.network(augment.weak_augment(xt, hp["aug_flip"])), dim=1)
            cons = F.mse_loss(student, target)
        weight = hp["mt_weight"] * sigmoid_ramp(self.progress, hp["mt_rampup"])
        loss = sup + weight * cons
        step(loss, self.optimizer)
        self.teacher.update(self.network, ema_warmup_decay(int(self.num_updates), hp["mt_ema"]))
        return {"loss": loss.item(), "sup_loss": sup.item(), "consistency": cons.item(),
                "cons_weight": weight}

    def predict(self, x):
        return self.teacher(x) if self.hparams["mt_eval_teacher"] else self.network(x)


def dacs_mix(xs: torch.Tensor, xt: torch.Tensor, ratio: torch.Tensor, generator=None):
    """Paste source content into target inputs: `x_mix = M * xs + (1 - M) * xt`.

    Images: M is one box per sample covering about `ratio` of the area (CutMix-like, since a
    classification label has no class regions to pick). Vectors: M selects each feature with
    probability `ratio`. Returns `(x_mix, r)` with r the exact fraction of source content.
    """
    if xs.dim() == 2:
        u = torch.rand(xs.shape, generator=generator).to(xs.device)
        mask = (u < ratio.view(-1, 1).to(xs.device)).to(xs.dtype)
        return mask * xs + (1 - mask) * xt, mask.mean(dim=1)
    mask = augment.box_mask((xs.shape[0], *xs.shape[2:]), ratio, generator, xs.device)
    mask = mask.to(xs.dtype).unsqueeze(1)
    return mask * xs + (1 - mask) * xt, mask.mean(dim=(1, 2, 3))


DACS_HPARAMS = {  # DACS's own hparams, shared by its segmentation form (SegDACS)
    "dacs_weight": HParam(1.0, LogUniform(-0.5, 0.5), low=0.0, help="lambda_u"),
    "dacs_ema": HParam(0.99, Choice([0.99, 0.999]), low=0.0, high=1.0, help="EMA decay cap"),
    "dacs_threshold": HParam(0.968, Choice([0.9, 0.95, 0.968]), low=0.0, high=1.0,
                             help="teacher confidence counted in the target weight w_t"),
    "dacs_jitter": HParam(0.25, Choice([0.1, 0.25]), low=0.0, high=1.0,
                          help="colour jitter strength after mixing"),
}


@register_algorithm
class DACS(_SelfTraining):
    """DACS (Tranheden et al., WACV 2021) adapted from segmentation to classification.

    Per step: L = CE(f(x_s), y_s) + lambda_u * L_mix with
    L_mix = mean_i [ r_i CE(f(a(x_mix,i)), y_s,i) + (1 - r_i) w_t CE(f(a(x_mix,i)), y^_t,i) ],
    x_mix = M * x_s + (1 - M) * x_t, y^_t = argmax of the EMA teacher on the un-augmented target,
    w_t = fraction of the target batch whose teacher confidence >= tau (one scalar, as DACS),
    a = photometric (colour) augmentation applied after mixing, teacher decay
    alpha_t = min(1 - 1/(t+1), dacs_ema) (0, 0.5, 0.667, ... capped at 0.99).
    Departure (classification has no pixel labels): ClassMix pastes the pixels of half of the
    source image's classes; we paste a CutMix box of area fraction r ~ U(0.3, 0.7) (vectors: a
    random r-subset of features), pairing each target with a random source example, and split the
    label by area — source label with weight r (source pixels weigh 1 in DACS), teacher label
    with weight (1 - r) w_t. "Source objects pasted onto target context" is thus approximated.
    The teacher runs in eval mode (the released code keeps it in train mode; with BatchNorm that
    would make pseudo-labels depend on the batch); predictions use the student, as DACS does.
    """

    PAPER = "Tranheden et al., DACS: domain adaptation via cross-domain mixed sampling, WACV 2021"
    HPARAMS = {
        **DACS_HPARAMS,
        "dacs_mix_low": HParam(0.3, Uniform(0.2, 0.4), low=0.0, high=1.0, help="min area of M"),
        "dacs_mix_high": HParam(0.7, Uniform(0.6, 0.8), low=0.0, high=1.0, help="max area of M"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.teacher = EMA(self.network)

    def update(self, minibatches, unlabeled=None):
        hp = self.hparams
        x, y = self._labeled(minibatches)
        sup = cross_entropy(self.network(x), y)
        mix_loss, w_t = sup.new_zeros(()), 0.0
        if unlabeled:
            xt = torch.cat(list(unlabeled))
            self.teacher.eval()
            with torch.no_grad():
                conf, yt = F.softmax(self.teacher(xt), dim=1).max(dim=1)
            w_t = (conf >= hp["dacs_threshold"]).float().mean()
            sources, _ = self.split_minibatches(minibatches)
            xs, ys = concat_minibatches(sources)
            pair = torch.randint(len(xs), (len(xt),), device=xs.device)
            ratio = hp["dacs_mix_low"] + (hp["dacs_mix_high"] - hp["dacs_mix_low"]) * torch.rand(len(xt))
            x_mix, r = dacs_mix(xs[pair], xt, ratio)
            logits = self.network(augment.photometric_augment(x_mix, hp["dacs_jitter"]))
            mix_loss = (r * F.cross_entropy(logits, ys[pair], reduction="none")
                        + (1 - r) * w_t * F.cross_entropy(logits, yt, reduction="none")).mean()
            w_t = float(w_t)
        loss = sup + hp["dacs_weight"] * mix_loss
        step(loss, self.optimizer)
        self.teacher.update(self.network, ema_warmup_decay(int(self.num_updates), hp["dacs_ema"]))
        return {"loss": loss.item(), "sup_loss": sup.item(), "mix_loss": mix_loss.item(),
                "confident_fraction": w_t}
