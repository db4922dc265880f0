"""ERM++ (Teterwak et al., "ERM++: An Improved Baseline for Domain Generalization"), the parts
that are an update rule, as DomainBed's `ERMPlusPlus`.

    warm start:  updates t = 0 .. linear_steps train only the classifier w (linear probing, Adam
                 at linear_lr); afterwards featurizer and classifier (Adam at lr)
    loss:        CE(w(phi(x)), y) on the pooled batch, as ERM
    averaging:   theta_avg = theta_t (weights after update t, counted from 0) for
                 t < sma_start_iter - 1, then the uniform mean of theta_{sma_start_iter - 2}, ...,
                 theta_t (weights and BatchNorm statistics; DomainBed's counting)
    BatchNorm:   unless freeze_bn, each update ends with a train-mode forward of the averaged
                 network on the batch, so its statistics follow its own (averaged) weights
    prediction:  the averaged network in eval mode

The paper's other components act on data, schedule or network, not on the update rule:
* full data (training also on the in-domain validation splits) and long training: shiftbench's
  `--holdout-fraction` / `--steps`, at the cost of the validation-based model selection;
* the automatic learning-rate schedule (DomainBed's `scripts/train_autolr.py`: a first run
  lowers lr on plateaus of the validation loss, a second run on all data replays that
  schedule): not available, shiftbench has no two-stage runs;
* the stronger initialisation (AugMix-trained ResNet-50): `--backbone resnet50.ram_in1k`
  (timm), which needs the weights in timm's cache when offline (a clear error otherwise);
* attention tuning applies to ViT backbones only (DomainBed: DINOv2), not available.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from shiftbench.algorithms.base import (
    concat_minibatches,
    cross_entropy,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import HParam, LogUniform


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum (You et al., 2017), MoCo-v3 style.

    For a parameter with more than one dimension: u = g + wd * p, scaled by
    trust * ||p|| / ||u|| (1 when either norm is 0); 1-D parameters (biases, norms) use g alone.
    Then m <- momentum * m + u and p <- p - lr * m."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                u = p.grad
                if p.ndim > 1:
                    u = u + group["weight_decay"] * p
                    p_norm, u_norm = p.norm(), u.norm()
                    ratio = group["trust_coefficient"] * p_norm / u_norm
                    u = u * torch.where((p_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].mul_(group["momentum"]).add_(u)
                p.add_(buf, alpha=-group["lr"])


@register_algorithm
class ERMPlusPlus(ERM):
    """ERM++ (Teterwak, Saito, Tsiligkaridis, Saenko & Plummer), its update rule as DomainBed.

    Equations and the components not covered in the module docstring. Defaults / search
    (shiftbench = DomainBed): linear_lr 5e-5 / 10^U(-5,-3.5); linear_steps 500 and
    sma_start_iter 600 fixed (DomainBed hard-codes the latter); lars False (variant: LARS instead
    of Adam for both optimizers; DomainBed's own LARS path fails on an unexpected `foreach`
    argument); freeze_bn as the featurizer's (False where the featurizer has none).
    """

    SETTINGS = ("dg",)
    PAPER = ("Teterwak, Saito, Tsiligkaridis, Saenko & Plummer, ERM++: An Improved Baseline for Domain "
             "Generalization, arXiv:2304.01973, 2023")
    HPARAMS = {
        "linear_lr": HParam(5e-5, LogUniform(-5, -3.5), low=0.0, help="classifier lr while linear probing"),
        "linear_steps": HParam(500, None, low=0, help="linear-probing updates (the first linear_steps + 1)"),
        "sma_start_iter": HParam(600, None, low=1, help="averaging from update sma_start_iter - 2 on"),
        "lars": HParam(False, None, variant=True, help="LARS instead of Adam"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        hp = self.hparams
        if hp["lars"]:
            self.optimizer = LARS(self.network.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
            self.linear_optimizer = LARS(self.classifier.parameters(), lr=hp["linear_lr"],
                                         weight_decay=hp["weight_decay"])
        else:
            self.optimizer = make_optimizer(self.network.parameters(), hp, foreach=False)
            self.linear_optimizer = make_optimizer(self.classifier.parameters(), hp, lr=hp["linear_lr"],
                                                   foreach=False)
        self.network_sma = copy.deepcopy(self.network).eval()
        self.network_sma.requires_grad_(False)
        # the refresh forward can change something only through BatchNorm statistics or, via
        # dropout, the random stream (which DomainBed's unconditional forward also consumes)
        self.refresh = any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                           or (isinstance(m, nn.Dropout) and m.p > 0) for m in self.network.modules())

    @torch.no_grad()
    def update_average(self, t: int) -> None:
        """After update t: copy the weights, or fold them into the running mean (count = t + 2 - start)."""
        count = t + 2 - int(self.hparams["sma_start_iter"])
        current = self.network.state_dict()
        for name, avg in self.network_sma.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if count >= 1:
                avg.copy_((avg * count + current[name]) / (1.0 + count))
            else:
                avg.copy_(current[name])

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        t = int(self.num_updates)
        optimizer = self.optimizer if t > int(self.hparams["linear_steps"]) else self.linear_optimizer
        loss = cross_entropy(self.network(x), y)
        step(loss, optimizer)
        self.update_average(t)
        if self.refresh and not self.hparams.get("freeze_bn", False):
            with torch.no_grad():  # the averaged weights' own BatchNorm statistics
                self.network_sma.train()
                self.network_sma(x)
                self.network_sma.eval()
        return {"loss": loss.item()}

    def train(self, mode: bool = True) -> ERMPlusPlus:
        super().train(mode)
        self.network_sma.eval()  # only the BatchNorm refresh in `update` runs it in train mode
        return self

    def predict(self, x):
        return self.network_sma(x)


__all__ = ["ERMPlusPlus", "LARS"]
