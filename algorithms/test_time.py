"""Test-time and source-free adaptation: BN re-estimation, Tent and SHOT.

BNAdapt and Tent train like ERM on the sources (with a BatchNorm featurizer,
`networks.Featurizer(..., norm="batch")`) and adapt only at evaluation through `adapt(x)` on the
test stream (setting `tta`); the trainer decides whether adaptation carries over between test
batches (`--tta-mode continual`) or is undone after each one (`episodic`, via
`reset_adaptation`). SHOT is source-free UDA: a source phase, then a target phase that reads no
source data.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench import networks
from shiftbench.algorithms.base import (
    Algorithm,
    concat_minibatches,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.components import PhaseSchedule, entropy
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import Choice, HParam, LogUniform

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, BN_TYPES)]


@contextmanager
def using_batch_statistics(module: nn.Module) -> Iterator[None]:
    """Inside: every BatchNorm normalises with the current batch's statistics and leaves its
    running statistics untouched; other layers (dropout) are in eval mode. Modes are restored."""
    modes = {m: m.training for m in module.modules()}
    tracks = {bn: bn.track_running_stats for bn in batch_norms(module)}
    module.eval()
    for bn in tracks:
        bn.train()
        bn.track_running_stats = False  # train mode + no tracking: batch stats, buffers untouched
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        for bn, track in tracks.items():
            bn.track_running_stats = track


class _BNSourceModel(ERM):
    """ERM on the pooled sources with a BatchNorm featurizer (the source model of TTA methods)."""

    SETTINGS = ("tta",)
    FEATURIZER_NORM = "batch"


@register_algorithm
class BNAdapt(_BNSourceModel):
    """Test-time BatchNorm re-estimation (Schneider et al., 2020; the "norm" baseline of Tent).

    Training is ERM. `adapt(x)` normalises every BatchNorm layer with the mean and variance of
    the test batch x itself instead of the source running statistics (tent's `norm.py` in its
    default form, i.e. source prior N = 0); nothing is learned and nothing persists between
    batches, so episodic and continual evaluation coincide.
    """

    PAPER = "Schneider et al., Improving robustness against common corruptions by covariate " \
            "shift adaptation, NeurIPS 2020; Nado et al., arXiv:2006.10963, 2020"

    @torch.no_grad()
    def adapt(self, x):
        with using_batch_statistics(self.network):
            return self.network(x)


class TentAdaptation:
    """Tent's test-time step, shared by `Tent` and `SegTent` (mix in before the algorithm base).

    For each test batch, `tent_steps` times: logits = f(x) with batch statistics (running
    statistics neither used nor updated); L = `tent_entropy(logits)`; one Adam step (lr `tent_lr`,
    betas (0.9, 0.999)) on the BatchNorm weights and biases only; `adapt` returns the logits of the
    last forward (computed before that step's update). `reset_adaptation` restores the source
    parameters and the optimiser state (episodic mode).
    """

    PAPER = "Wang et al., Tent: fully test-time adaptation by entropy minimization, ICLR 2021"
    HPARAMS = {
        "tent_lr": HParam(1e-3, LogUniform(-4, -2.5), low=0.0, help="Adam lr on BN affine params"),
        "tent_steps": HParam(1, Choice([1, 2]), low=1, help="gradient steps per test batch"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.tent_optimizer = torch.optim.Adam(self.bn_affine_parameters(), lr=self.hparams["tent_lr"],
                                               betas=(0.9, 0.999))
        self._source_state = None

    def tent_entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """The loss minimised at test time: the batch's mean prediction entropy."""
        raise NotImplementedError

    def bn_affine_parameters(self) -> list[nn.Parameter]:
        return [p for bn in batch_norms(self.network) for p in (bn.weight, bn.bias) if p is not None]

    def adapt(self, x):
        if self._source_state is None:
            self._source_state = (copy.deepcopy(self.network.state_dict()),
                                  copy.deepcopy(self.tent_optimizer.state_dict()))
        params = self.bn_affine_parameters()
        with torch.enable_grad(), using_batch_statistics(self.network):
            for _ in range(int(self.hparams["tent_steps"])):
                logits = self.network(x)
                grads = torch.autograd.grad(self.tent_entropy(logits), params)
                for p, g in zip(params, grads):
                    p.grad = g
                self.tent_optimizer.step()
                self.tent_optimizer.zero_grad(set_to_none=True)
        return logits.detach()

    def reset_adaptation(self):
        if self._source_state is not None:
            self.network.load_state_dict(self._source_state[0])
            self.tent_optimizer.load_state_dict(self._source_state[1])
            self._source_state = None


@register_algorithm
class Tent(TentAdaptation, _BNSourceModel):
    """Tent (Wang et al., ICLR 2021): test-time entropy minimisation of the BN affine parameters.

    Training is ERM; at test time `TentAdaptation` with L = mean_i H(softmax(logits_i)).
    """

    PAPER = TentAdaptation.PAPER

    def tent_entropy(self, logits):
        return entropy(logits)


@register_algorithm
class SHOT(Algorithm):
    """SHOT (Liang et al., ICML 2020): source hypothesis transfer, source-free in the target phase.

    Network: featurizer g, bottleneck b (Linear 256 + BatchNorm), weight-normalised linear head h.
    Source phase (progress < `shot_source_fraction`): label-smoothed CE (eps 0.1) on sources.
    Target phase (no source data is read; h frozen): with p = softmax(h(b(g(x_t)))),
    L = mean_i H(p_i) - H(mean_i p_i) + beta * CE(p, y^), the information-maximisation loss plus
    self-supervised pseudo-labels y^. At each of `shot_rounds` refreshes (the round hook, over the
    whole unlabeled target split, model frozen): features z = [b(g(x)), 1] / ||.||, weighted
    centroids c_k = sum_i p_ik z_i / sum_i p_ik, labels by nearest centroid in cosine distance,
    then once more with centroids of those hard labels. Departure: the labels are kept as the
    frozen round-start model plus the final centroids (buffers) and applied to each incoming
    batch, which equals labelling the split once per round without storing per-example labels.
    Setting: `uda` only (a source-free target phase inside one run); no test-time variant.
    """

    SETTINGS = ("uda",)
    PAPER = "Liang, Hu & Feng, Do we really need to access the source data? Source hypothesis " \
            "transfer for unsupervised domain adaptation, ICML 2020"
    PHASES = PhaseSchedule("shot_source_fraction", "shot_rounds")
    HPARAMS = {
        "shot_source_fraction": HParam(0.5, Choice([0.3, 0.5]), low=0.0, high=1.0,
                                       help="share of the budget for the source phase"),
        "shot_beta": HParam(0.3, Choice([0.1, 0.3, 0.5]), low=0.0, help="pseudo-label CE weight"),
        "shot_rounds": HParam(10, Choice([5, 10, 15]), low=1, help="pseudo-label refreshes"),
        "shot_smoothing": HParam(0.1, None, low=0.0, high=1.0, help="source label smoothing"),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.featurizer = networks.Featurizer(input_shape, self.hparams)
        self.bottleneck = nn.Sequential(nn.Linear(self.featurizer.n_outputs, 256), nn.BatchNorm1d(256))
        self.classifier = nn.utils.parametrizations.weight_norm(nn.Linear(256, num_classes))
        self.encoder = nn.Sequential(self.featurizer, self.bottleneck)
        self.optimizer = make_optimizer(self.parameters(), self.hparams)
        self.target_optimizer = make_optimizer(self.encoder.parameters(), self.hparams)
        self.snapshot = copy.deepcopy(self.encoder).requires_grad_(False)
        self.register_buffer("centroids", torch.zeros(num_classes, 257))
        self.register_buffer("valid", torch.zeros(num_classes, dtype=torch.bool))

    def train(self, mode: bool = True):
        super().train(mode)
        self.snapshot.eval()  # the frozen labeller always predicts in eval mode
        return self

    def round_interval(self):
        return 1  # on_round decides itself which steps start a refresh (PHASES.round_starting)

    def on_round(self, target_batches):
        if self.PHASES.round_starting(self) is None:
            return {}
        self.snapshot.load_state_dict(self.encoder.state_dict())
        self.snapshot.eval()
        zs, ps = [], []
        with torch.no_grad():
            for x in target_batches():
                f = self.snapshot(x)
                zs.append(self._unit(f))
                ps.append(F.softmax(self.classifier(f), dim=1))
        return self.fit_centroids(torch.cat(zs), torch.cat(ps))

    @staticmethod
    def _unit(f: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([f, torch.ones_like(f[:, :1])], dim=1), dim=1)

    @torch.no_grad()
    def fit_centroids(self, z: torch.Tensor, p: torch.Tensor) -> dict[str, float]:
        """SHOT's two-pass weighted k-means on unit features z with predictions p (stored)."""
        c = (p.T @ z) / (p.sum(0)[:, None] + 1e-8)
        labels = (z @ F.normalize(c, dim=1).T).argmax(1)
        onehot = F.one_hot(labels, self.num_classes).to(z.dtype)
        counts = onehot.sum(0)
        self.centroids.copy_((onehot.T @ z) / counts.clamp(min=1)[:, None])
        self.valid.copy_(counts > 0)
        agree = (self.assign(z) == p.argmax(1)).float().mean()
        return {"shot_agreement": agree.item(), "shot_classes": float(self.valid.sum())}

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest stored centroid in cosine similarity, among classes that received samples."""
        sim = z @ F.normalize(self.centroids, dim=1).T
        return sim.masked_fill(~self.valid, -2.0).argmax(1)

    def update(self, minibatches, unlabeled=None):
        if self.PHASES.in_source_phase(self) or not unlabeled:
            x, y = concat_minibatches(minibatches)
            loss = F.cross_entropy(self.predict(x), y, label_smoothing=self.hparams["shot_smoothing"])
            step(loss, self.optimizer)
            return {"loss": loss.item(), "src_loss": loss.item()}
        self.classifier.requires_grad_(False)  # the source hypothesis stays fixed
        xt = torch.cat(list(unlabeled))
        logits = self.classifier(self.encoder(xt))
        p = F.softmax(logits, dim=1)
        cond_ent = entropy(logits)
        mean_p = p.mean(0)
        div = -(mean_p * torch.log(mean_p + 1e-5)).sum()
        pl_loss = logits.new_zeros(())
        if bool(self.valid.any()):
            with torch.no_grad():
                self.snapshot.eval()
                pseudo = self.assign(self._unit(self.snapshot(xt)))
            pl_loss = F.cross_entropy(logits, pseudo)
        loss = cond_ent - div + self.hparams["shot_beta"] * pl_loss
        step(loss, self.target_optimizer)
        return {"loss": loss.item(), "cond_entropy": cond_ent.item(), "diversity": div.item(),
                "pl_loss": pl_loss.item()}

    def predict(self, x):
        return self.classifier(self.encoder(x))
