"""Normalisation and activation matching for unsupervised DA: AdaBN and GAM.

AdaBN keeps every weight of a source-trained BatchNorm network and replaces the normalisation
statistics by the target domain's. GAM adapts a copy of a source-trained network so that its
activations on target data match, layer by layer, those of the frozen source network on source
data (Gaussian moment matching plus adversarial matching), while a drift penalty keeps the
target weights near the source weights. Target labels are never available to either.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench import networks
from shiftbench.algorithms.adversarial import TwoPhaseAdversary
from shiftbench.algorithms.base import (
    Algorithm,
    concat_minibatches,
    cross_entropy,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.components import Discriminator, classifier_head
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import HParam, LogUniform

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
SOURCE_BN_MOMENTUM = 0.1  # PyTorch's default: the running statistics an ordinary BN network keeps


@torch.no_grad()
def estimate_bn_statistics(model: nn.Module, batches: Callable[[], Iterable[torch.Tensor]]) -> int:
    """Set every BatchNorm's running mean/var to the exact statistics of its input over all of
    `batches()` (pooled over batch and spatial positions, accumulated in float64, unbiased var),
    one layer at a time in forward order, with the earlier layers already using their new
    statistics (the exact form of AdaBN, one pass per BN layer). Returns the examples seen."""
    was_training = model.training
    model.eval()
    n_examples = 0
    for bn in [m for m in model.modules() if isinstance(m, _BN)]:
        acc = {"n": 0, "s": 0.0, "ss": 0.0}

        def hook(_module, inputs, acc=acc):
            x = inputs[0].double().transpose(0, 1).flatten(1)  # channels x (batch * positions)
            acc["n"] += x.shape[1]
            acc["s"] = acc["s"] + x.sum(1)
            acc["ss"] = acc["ss"] + (x * x).sum(1)

        handle = bn.register_forward_pre_hook(hook)
        try:
            n_examples = sum(len(model(x)) for x in batches())
        finally:
            handle.remove()
        if acc["n"] < 2:
            raise ShiftbenchError(f"BatchNorm statistics need >= 2 values per channel, got {acc['n']}")
        mean = acc["s"] / acc["n"]
        var = (acc["ss"] - acc["n"] * mean * mean) / (acc["n"] - 1)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var.clamp_min(0))
    model.train(was_training)
    return n_examples


def _input_norm(input_shape: tuple[int, ...]) -> nn.Module:
    return nn.BatchNorm1d(input_shape[0]) if len(input_shape) == 1 else nn.BatchNorm2d(input_shape[0])


@register_algorithm
class AdaBN(Algorithm):
    """Adaptive Batch Normalization (Li, Wang, Shi, Hou & Liu, Pattern Recognition 2018).

    Train a BatchNorm network (`Featurizer(norm="batch")`, plus a BatchNorm on the raw input
    when `input_norm`) with source CE, `L = CE(C(G(x_s)), y)`; BN uses source batch statistics
    while training. Then, weights fixed, set every BN layer's mean/var to the target split's:
    `y = gamma (x - mu_t) / sqrt(var_t + eps) + beta`. Protocol: the round hook fires once, before
    the last step of the budget, and recomputes the statistics exactly over the whole unlabeled
    target split (`estimate_bn_statistics`); that last step then leaves the weights alone, so
    the final model carries target statistics. Between, each step also updates a running (EMA)
    estimate of the target statistics from the target batch, so intermediate checkpoints are
    evaluated with approximate target statistics. Source data is never mixed into them.
    Evaluation of every domain uses the target statistics.

    `eval_statistics="source"` (a fixed switch, never searched) is the paper's baseline, the
    no-adaptation control: the same network and training (same weights at every step, the last
    step also skipped), but the source batches update the running statistics (PyTorch's BN
    momentum 0.1) and the target is never looked at, so evaluation uses source statistics.
    """

    SETTINGS = ("uda",)
    PAPER = ("Li, Wang, Shi, Hou & Liu, Adaptive Batch Normalization for practical domain "
             "adaptation, Pattern Recognition 2018")
    HPARAMS = {
        "input_norm": HParam(True, None, variant=True,
                             help="BatchNorm on the raw input (per feature/channel)"),
        "target_momentum": HParam(0.1, None, low=0.0, high=1.0,
                                  help="momentum of the running target statistics between rounds"),
        "eval_statistics": HParam("target", None, choices=("target", "source"), variant=True,
                                  help="BN statistics evaluated with: target (AdaBN) or source "
                                       "(the no-adaptation baseline)"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        body = networks.Featurizer(input_shape, self.hparams, norm="batch")
        layers = [_input_norm(self.input_shape), body] if self.hparams["input_norm"] else [body]
        self.featurizer = nn.Sequential(*layers)
        self.classifier = classifier_head(body.n_outputs, num_classes, self.hparams)
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.register_buffer("finalised", torch.zeros((), dtype=torch.bool))
        self.optimizer = make_optimizer(self.network.parameters(), self.hparams)

    def _set_momentum(self, momentum: float) -> None:
        for m in self.network.modules():
            if isinstance(m, _BN):
                m.momentum = momentum

    def update(self, minibatches, unlabeled=None):
        if self.finalised:  # the budget's last step: target statistics are in place
            return {"finalised": 1.0}
        x, y = concat_minibatches(minibatches)
        adapt = self.hparams["eval_statistics"] == "target"
        # AdaBN: source batches normalise themselves but leave the running statistics alone
        self._set_momentum(0.0 if adapt else SOURCE_BN_MOMENTUM)
        loss = cross_entropy(self.network(x), y)
        step(loss, self.optimizer)
        if unlabeled and adapt:
            self._set_momentum(float(self.hparams["target_momentum"]))
            with torch.no_grad():
                self.network(torch.cat(list(unlabeled)))
        return {"loss": loss.item()}

    def round_interval(self):
        return max(1, self.total_steps - 1)

    def on_round(self, target_batches):
        if int(self.num_updates) < self.total_steps - 1:
            return {}  # only the round before the last step recomputes the statistics
        self.finalised.fill_(True)
        if self.hparams["eval_statistics"] == "source":
            return {}  # the baseline keeps its source statistics (and skips the last step too)
        n = estimate_bn_statistics(self.network, target_batches)
        return {"adabn_target_examples": float(n)}

    def predict(self, x):
        return self.network(x)


def gaussian_kl(target: torch.Tensor, source: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean over units (channels) of KL(N(mu_t, var_t) || N(mu_s, var_s)), each unit's
    activations treated as i.i.d. Gaussian over the batch (and positions); 0 for equal moments."""
    t = target.transpose(0, 1).flatten(1)
    s = source.transpose(0, 1).flatten(1)
    mt, vt = t.mean(1), t.var(1, unbiased=False) + eps
    ms, vs = s.mean(1), s.var(1, unbiased=False) + eps
    return 0.5 * (torch.log(vs / vt) + (vt + (mt - ms) ** 2) / vs - 1.0).mean()


def weight_drift(model: nn.Module, reference: nn.Module) -> torch.Tensor:
    """Sum over parameter tensors of the mean squared difference to the reference weights."""
    return sum(((p - q.detach()) ** 2).mean() for p, q in zip(model.parameters(),
                                                             reference.parameters()))


@register_algorithm
class GAM(TwoPhaseAdversary):
    """Deep activation matching (Huang, Huang & Krahenbuhl, ECCV 2018).

    Phase 1 (progress < `pretrain_fraction`): source network S = C o G on source CE.
    Phase 2: target network T starts as a copy of S; S is frozen; for matched layers i (the
    featurizer output, weight `hidden_weight`, and the logits, weight 1) with activations
    A_i^S(x_s), A_i^T(x_t), each step
      D-step: `min_{D_i} sum_i w_i [BCE(D_i(A_i^S), 1) + BCE(D_i(A_i^T), 0)]`;
      T-step: `min_T sum_i w_i [BCE(D_i(A_i^T), 1) + g * KL(N_i^T || N_i^S)]
                     + lambda * sum_params mean((theta_T - theta_S)^2)`,
    N_i the per-unit Gaussian fit of the layer's activations over the batch (Gaussian matching).
    Defaults from the authors' digits code: D 500-500-1, hidden weight 0.1, drift weight 1,
    Adam lr 2e-4 and beta1 0.5. Departure: Gaussian matching is a KL loss on the moments,
    not an on-the-fly re-normalisation of the target activations (the paper is not explicit).
    `predict` uses T after the switch and S before (`TwoPhaseAdversary`).
    """

    PAPER = ("Huang, Huang & Krahenbuhl, Domain Transfer Through Deep Activation Matching, "
             "ECCV 2018")
    HPARAMS = {
        "drift_weight": HParam(1.0, LogUniform(-2, 1), low=0.0, help="lambda of the weight drift"),
        "hidden_weight": HParam(0.1, LogUniform(-2, 0), low=0.0, help="w of the hidden layer"),
        "gauss_weight": HParam(1.0, LogUniform(-1, 1), low=0.0, help="g of the Gaussian KL"),
    }

    def build(self) -> None:
        featurizer = networks.Featurizer(self.input_shape, self.hparams)
        classifier = classifier_head(featurizer.n_outputs, self.num_classes, self.hparams)
        self.source_net = nn.Sequential(featurizer, classifier)
        self.target_net = copy.deepcopy(self.source_net)
        width = int(self.hparams["disc_width"])
        self.discriminators = nn.ModuleList(
            [Discriminator(n, 1, width, 3) for n in (featurizer.n_outputs, self.num_classes)])

    def pair(self):
        return self.source_net, self.target_net

    def adversary(self):
        return self.discriminators

    def layer_weights(self) -> list[float]:
        return [float(self.hparams["hidden_weight"]), 1.0]

    @staticmethod
    def activations(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
        hidden = net[0](x)
        return [hidden, net[1](hidden)]

    def adversarial_step(self, x_src, x_tgt):
        with torch.no_grad():
            src = self.activations(self.source_net, x_src)
        tgt = self.activations(self.target_net, x_tgt)
        weights = self.layer_weights()
        d_loss = sum(w * (F.binary_cross_entropy_with_logits(d(a), a.new_ones(len(a), 1))
                          + F.binary_cross_entropy_with_logits(d(b.detach()), b.new_zeros(len(b), 1)))
                     for w, d, a, b in zip(weights, self.discriminators, src, tgt))
        step(d_loss, self.disc_optimizer)
        adv = sum(w * F.binary_cross_entropy_with_logits(d(b), b.new_ones(len(b), 1))
                  for w, d, b in zip(weights, self.discriminators, tgt))
        gauss = sum(w * gaussian_kl(b, a) for w, a, b in zip(weights, src, tgt))
        drift = weight_drift(self.target_net, self.source_net)
        loss = adv + self.hparams["gauss_weight"] * gauss + self.hparams["drift_weight"] * drift
        step(loss, self.target_optimizer)
        return {"disc_loss": d_loss.item(), "adv_loss": adv.item(), "gauss": gauss.item(),
                "drift": drift.item()}
