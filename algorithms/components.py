"""Building blocks shared by several algorithm families (not algorithms themselves).

Gradient reversal and its schedule (DANN, CDANN, CDAN), small discriminators, kernel and
moment discrepancies (MMD, DAN, CORAL), entropy, and an exponential moving average of a module
(Mean Teacher, DACS). Each is a few lines next to its formula so that algorithm modules stay
readable on one screen.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench import networks


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by `-coeff` backward (Ganin & Lempitsky, 2015)."""
    return _ReverseGradient.apply(x, float(coeff))


def dann_schedule(progress: float, gamma: float = 10.0) -> float:
    """DANN's adaptation factor `2 / (1 + exp(-gamma p)) - 1`, rising from 0 to ~1 over training."""
    return 2.0 / (1.0 + math.exp(-gamma * float(progress))) - 1.0


class Discriminator(nn.Sequential):
    """An MLP `in -> width -> ... -> out` with ReLU (and optional dropout) between layers."""

    def __init__(self, n_inputs: int, n_outputs: int, width: int = 256, depth: int = 3,
                 dropout: float = 0.0):
        layers: list[nn.Module] = []
        size = n_inputs
        for _ in range(depth - 1):
            layers += [nn.Linear(size, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        layers.append(nn.Linear(size, n_outputs))
        super().__init__(*layers)


def classifier_head(n_inputs: int, n_outputs: int, hparams: Mapping[str, Any]) -> nn.Module:
    """The label head the hparams prescribe: `networks.Classifier` with `nonlinear_classifier`
    and the hidden widths of the `network` (`networks.head_hidden`)."""
    return networks.Classifier(n_inputs, n_outputs, hparams["nonlinear_classifier"],
                               hidden=networks.head_hidden(hparams),
                               init=str(hparams.get("network_init", "torch")))


def entropy(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Shannon entropy of softmax(logits) per row (natural log), averaged unless `reduction='none'`."""
    log_p = F.log_softmax(logits, dim=1)
    h = -(log_p.exp() * log_p).sum(dim=1)
    return h.mean() if reduction == "mean" else h


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 in DomainBed's expanded form ||a_i||^2 + ||b_j||^2 - 2 a_i.b_j, clamped
    at 1e-30 (its MMD kernels use this; the diagonal of a with itself is then ~1e-30..1e-4, not 0)."""
    a2 = a.pow(2).sum(dim=-1, keepdim=True)
    b2 = b.pow(2).sum(dim=-1, keepdim=True)
    return torch.addmm(b2.transpose(-2, -1), a, b.transpose(-2, -1), alpha=-2).add(a2).clamp_min(1e-30)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor,
                    gammas: Sequence[float] = (0.001, 0.01, 0.1, 1, 10, 100, 1000)) -> torch.Tensor:
    """Sum over bandwidths of `exp(-gamma ||a_i - b_j||^2)` (DomainBed's MMD kernel, its
    distances and order of summation)."""
    d2 = squared_distances(a, b)
    k = torch.zeros_like(d2)
    for g in gammas:
        k = k + torch.exp(d2 * -g)
    return k


def mmd_gaussian(a: torch.Tensor, b: torch.Tensor,
                 gammas: Sequence[float] = (0.001, 0.01, 0.1, 1, 10, 100, 1000)) -> torch.Tensor:
    """Biased estimate of MMD^2 between samples `a` and `b` under a multi-bandwidth Gaussian kernel."""
    return (gaussian_kernel(a, a, gammas).mean() + gaussian_kernel(b, b, gammas).mean()
            - 2 * gaussian_kernel(a, b, gammas).mean())


def coral_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius distance of the feature covariances of `a` and `b`, divided by 4 d^2."""
    d = a.shape[1]
    ca = torch.cov(a.T) if a.shape[0] > 1 else a.new_zeros(d, d)
    cb = torch.cov(b.T) if b.shape[0] > 1 else b.new_zeros(d, d)
    return ((ca - cb) ** 2).sum() / (4.0 * d * d)


class EMA(nn.Module):
    """A frozen copy of `model` whose parameters track `decay * ema + (1 - decay) * model`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def featurizer_stages(featurizer: nn.Module) -> list[nn.Module]:
    """The featurizer cut into consecutive stages that share its modules (no copies): its
    `stages()`. Running them in order equals `featurizer(x)`; the outputs between stages are the
    intermediate features that style methods (MixStyle, SagNet) act on."""
    stages = getattr(featurizer, "stages", None)
    if stages is None:
        from shiftbench.errors import IncompatibleBackbone

        raise IncompatibleBackbone(f"featurizer {type(featurizer).__name__} does not expose "
                                   "stages(); MixStyle and SagNet need a network cut into stages")
    return stages()


def phase_start(total_steps: int, source_fraction: float) -> int:
    """The first step of the adaptation phase: round(source_fraction * total_steps)."""
    return int(round(source_fraction * total_steps))


def round_due(step: int, total_steps: int, source_fraction: float, n_rounds: int) -> int | None:
    """Index of the round that starts at `step` (0, 1, ...), or None if no round starts there:
    the adaptation phase cut into `n_rounds` rounds of equal length (the last may be shorter)."""
    start = phase_start(total_steps, source_fraction)
    if total_steps <= 0 or step < start:
        return None
    length = max(1, math.ceil((total_steps - start) / max(1, n_rounds)))
    k, rest = divmod(step - start, length)
    return k if rest == 0 else None


def progress_start(total_steps: int, source_fraction: float) -> int:
    """The first step t whose progress min(1, t / total_steps) reaches `source_fraction`
    (progress is 0 throughout when total_steps <= 0); sys.maxsize when no step reaches it."""
    if total_steps <= 0 or source_fraction > 1:
        return 0 if source_fraction <= 0 else sys.maxsize
    t = max(0, math.ceil(source_fraction * total_steps))
    while t > 0 and (t - 1) / total_steps >= source_fraction:  # ceil of a rounded product
        t -= 1
    while min(1.0, t / total_steps) < source_fraction:
        t += 1
    return t


@dataclass(frozen=True)
class PhaseSchedule:
    """The one schedule of methods with phases: a source phase for the first `source_fraction`
    of the budget, then the adaptation phase, optionally cut into `rounds` equal rounds. Fields
    name the hparams that hold the fraction and the number of rounds; an algorithm declares
    `PHASES = PhaseSchedule("pretrain_fraction")` and asks it about its current update
    (`in_source_phase`, `round_starting`, or `adapting` for methods that switch networks once).
    The adaptation phase starts at step round(fraction * budget), or with `by_progress` at the
    first step whose progress t / budget reaches the fraction (one step later when the product
    is not a whole number and rounds down)."""

    source_fraction: str
    rounds: str | None = None
    by_progress: bool = False

    def __post_init__(self) -> None:
        if self.by_progress and self.rounds:
            raise ValueError("PhaseSchedule: rounds are cut from round(fraction * budget); "
                             "by_progress takes no rounds")

    def start(self, alg: Any) -> int:
        fraction = float(alg.hparams[self.source_fraction])
        if self.by_progress:
            return progress_start(alg.total_steps, fraction)
        return phase_start(alg.total_steps, fraction)

    def in_source_phase(self, alg: Any) -> bool:
        if self.by_progress:
            return alg.progress < float(alg.hparams[self.source_fraction])
        return int(alg.num_updates) < self.start(alg)

    def adapting(self, alg: Any) -> bool:
        """Whether `alg` is in its adaptation phase, as its `adapting` buffer says; the first
        update past the source phase first calls `alg.start_adaptation()`, which sets it."""
        if not alg.adapting and not self.in_source_phase(alg):
            alg.start_adaptation()
        return bool(alg.adapting)

    def round_starting(self, alg: Any) -> int | None:
        """The round that starts at the current update, or None."""
        if self.by_progress:  # one round: the adaptation phase
            return 0 if int(alg.num_updates) == self.start(alg) else None
        n_rounds = int(alg.hparams[self.rounds]) if self.rounds else 1
        return round_due(int(alg.num_updates), alg.total_steps,
                         float(alg.hparams[self.source_fraction]), n_rounds)
