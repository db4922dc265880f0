"""Adversarial segmentation adaptation: AdaptSegNet, ADVENT (and its MinEnt), GAM for segmentation.

AdaptSegNet and ADVENT align the *output* space with fully-convolutional discriminators
(`PatchDiscriminator`) at two levels of the network (main classifier and the auxiliary one on an
earlier stage, "multi-level"); GAM aligns several intermediate activations of a target copy of
the source network. Labels: source 0, target 1 for the discriminators, and the segmenter is
trained to make target maps look like source (label 0), as in the released code of both papers.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench.algorithms.base import register_algorithm
from shiftbench.algorithms.components import PhaseSchedule
from shiftbench.algorithms.seg_base import SegAlgorithm, pixel_entropy, seg_loss
from shiftbench.algorithms.test_time import using_batch_statistics
from shiftbench.algorithms.uda_normalization import weight_drift
from shiftbench.errors import ShiftbenchError
from shiftbench.hparams import Choice, DatasetInfo, HParam, LogUniform
from shiftbench.seg_networks import upsample


class PatchDiscriminator(nn.Sequential):
    """AdaptSegNet's discriminator: `n_down` 4x4 convs of stride 2 and widths w, 2w, 4w, 8w with
    LeakyReLU 0.2, then a 4x4 stride-2 conv to one channel (paper: n_down 4). `n_down=3, last=3`
    ends with a 3x3 stride-1 conv instead, for small feature maps (GAM's hidden layers)."""

    def __init__(self, c_in: int, width: int = 64, n_down: int = 4, last: int = 4):
        layers: list[nn.Module] = []
        for i in range(n_down):
            c_out = width * 2 ** i
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        final = nn.Conv2d(c_in, 1, 4, 2, 1) if last == 4 else nn.Conv2d(c_in, 1, 3, 1, 1)
        super().__init__(*layers, final)


def n_down_for(h: int, w: int, most: int) -> int:
    """Stride-2 layers that keep at least one output position on an h x w map (the paper's
    four on its crops; fewer on the small network's maps)."""
    return max(1, min(most, int(math.log2(max(1, min(h, w)))) - 1))


def gaussian_w2(target: torch.Tensor, source: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Squared 2-Wasserstein distance between the per-channel Gaussian fits (over batch and
    positions) of two activation maps, (mu_t - mu_s)^2 + (sigma_t - sigma_s)^2 averaged over
    channels and divided by the source's mean variance (scale-free, bounded for dead channels)."""
    t, s = target.transpose(0, 1).flatten(1), source.transpose(0, 1).flatten(1)
    w2 = (t.mean(1) - s.mean(1)) ** 2 + (t.std(1, unbiased=False) - s.std(1, unbiased=False)) ** 2
    return w2.mean() / (s.var(1, unbiased=False).mean() + eps)


def self_information(logits: torch.Tensor) -> torch.Tensor:
    """ADVENT's weighted self-information map -p log2 p / log2 K of softmax(logits), K x H x W."""
    p = F.softmax(logits, dim=1)
    return -p * torch.log2(p + 1e-30) / math.log2(logits.shape[1])


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def _disc_width(ds: DatasetInfo) -> HParam:
    real = len(ds.input_shape) == 3 and ds.input_shape[-1] >= 512
    return HParam(64 if real else 16, None, low=1, help="discriminator base width (paper 64)")


class _OutputSpaceAdversarial(SegAlgorithm):
    """Shared loop: D_main, D_aux on maps m(P) of the main/aux outputs (upsampled to the input)."""

    SETTINGS = ("uda",)
    HPARAMS = {
        "adv_weight": HParam(1e-3, LogUniform(-4, -2), low=0.0, help="lambda_adv (main output)"),
        "adv_weight_aux": HParam(2e-4, LogUniform(-4.5, -2.5), low=0.0, help="lambda_adv (aux output)"),
        "seg_weight_aux": HParam(0.1, None, low=0.0, help="weight of the aux segmentation loss"),
        "lr_d": HParam(1e-4, LogUniform(-4.5, -3.5), low=0.0, help="discriminator Adam lr"),
        "disc_width": _disc_width,
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        w, n = int(self.hparams["disc_width"]), n_down_for(*self.input_shape[1:], 4)
        self.discriminators = nn.ModuleList([PatchDiscriminator(num_classes, w, n) for _ in range(2)])
        self.d_optimizer = torch.optim.Adam(self.discriminators.parameters(), lr=self.hparams["lr_d"],
                                            betas=(0.9, 0.99))

    def disc_input(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, minibatches, unlabeled=None):
        if not unlabeled:
            raise ShiftbenchError(f"{type(self).__name__} needs unlabeled target batches (--task uda)")
        hp = self.hparams
        xs, ys = self.source_batch(minibatches)
        xt = torch.cat(list(unlabeled))
        out_s, out_t = self.network.forward_all(xs), self.network.forward_all(xt)
        seg = seg_loss(out_s.logits, ys) + hp["seg_weight_aux"] * seg_loss(out_s.aux, ys)
        # each domain's maps at its own input size (source and target sizes may differ)
        maps_s = [self.disc_input(upsample(o, xs.shape[-2:])) for o in (out_s.logits, out_s.aux)]
        maps_t = [self.disc_input(upsample(o, xt.shape[-2:])) for o in (out_t.logits, out_t.aux)]
        self.discriminators.requires_grad_(False)
        adv = [_bce(d(m), 0.0) for d, m in zip(self.discriminators, maps_t)]  # fool: target -> source
        loss = seg + hp["adv_weight"] * adv[0] + hp["adv_weight_aux"] * adv[1]
        self.step(loss)
        self.discriminators.requires_grad_(True)
        d_loss = sum(_bce(d(ms.detach()), 0.0) / 2 + _bce(d(mt.detach()), 1.0) / 2
                     for d, ms, mt in zip(self.discriminators, maps_s, maps_t))
        self.step(d_loss, self.d_optimizer, hp["lr_d"])
        return {"loss": loss.item(), "seg_loss": seg.item(), "adv_main": adv[0].item(),
                "adv_aux": adv[1].item(), "d_loss": d_loss.item()}


@register_algorithm
class AdaptSegNet(_OutputSpaceAdversarial):
    """AdaptSegNet (Tsai et al., CVPR 2018): multi-level adversarial learning in the output space.

    L = CE(P_s) + 0.1 CE(P_s^aux) + 0.001 BCE(D(softmax P_t), source) + 0.0002 BCE(D_aux(softmax
    P_t^aux), source); each D_i: BCE(D_i(softmax P_s), 0) + BCE(D_i(softmax P_t), 1), averaged,
    Adam 1e-4 betas (0.9, 0.99) with poly decay; segmenter SGD 2.5e-4 (DeepLab-v2 R101, aux on
    conv4). Predictions: main output. Departure: the small network's D is 16 wide, not 64.
    No classification counterpart exists (DANN is its feature-space analogue).
    """

    PAPER = "Tsai et al., Learning to adapt structured output space for semantic segmentation, CVPR 2018"

    def disc_input(self, logits):
        return F.softmax(logits, dim=1)


@register_algorithm
class ADVENT(_OutputSpaceAdversarial):
    """ADVENT / AdvEnt (Vu et al., CVPR 2019): adversarial alignment of weighted self-information
    maps I = -P log2 P / log2 K (K x H x W, the released `prob_2_entropy`; P the softmax of the
    upsampled logits) instead of the softmax, same multi-level losses and weights as
    AdaptSegNet (lambda_adv 1e-3 main, 2e-4 aux, aux segmentation 0.1). ADVENT's direct
    entropy minimisation is `SegMinEnt`."""

    PAPER = "Vu et al., ADVENT: adversarial entropy minimization for domain adaptation in " \
            "semantic segmentation, CVPR 2019"

    def disc_input(self, logits):
        return self_information(logits)


@register_algorithm
class SegMinEnt(SegAlgorithm):
    """MinEnt of ADVENT (Vu et al., CVPR 2019): L = CE(P_s) + 0.1 CE(P_s^aux) + lambda_ent E(P_t)
    + lambda_ent_aux E(P_t^aux), E the mean over target pixels of the normalised entropy
    H(p) / log K of the logits upsampled to the input size (the released `entropy_loss` on the
    interpolated predictions); lambda_ent = 1e-3 (main) and 2e-4 (aux), the paper's multi-level
    weights. The pixel-wise counterpart of classification entropy minimisation."""

    SETTINGS = ("uda",)
    PAPER = ADVENT.PAPER
    HPARAMS = {
        "ent_weight": HParam(1e-3, LogUniform(-4, -1), low=0.0, help="lambda_ent (main output)"),
        "ent_weight_aux": HParam(2e-4, None, low=0.0, help="lambda_ent (aux output)"),
        "seg_weight_aux": HParam(0.1, None, low=0.0, help="weight of the aux segmentation loss"),
    }

    def update(self, minibatches, unlabeled=None):
        if not unlabeled:
            raise ShiftbenchError("SegMinEnt needs unlabeled target batches (--task uda)")
        hp = self.hparams
        xs, ys = self.source_batch(minibatches)
        xt = torch.cat(list(unlabeled))
        out_s, out_t = self.network.forward_all(xs), self.network.forward_all(xt)
        seg = seg_loss(out_s.logits, ys) + hp["seg_weight_aux"] * seg_loss(out_s.aux, ys)
        k, size = math.log(self.num_classes), xt.shape[-2:]
        ent = pixel_entropy(upsample(out_t.logits, size)).mean() / k
        ent_aux = pixel_entropy(upsample(out_t.aux, size)).mean() / k
        loss = seg + hp["ent_weight"] * ent + hp["ent_weight_aux"] * ent_aux
        self.step(loss)
        return {"loss": loss.item(), "seg_loss": seg.item(), "entropy": ent.item()}


@register_algorithm
class SegGAM(SegAlgorithm):
    """GAM / DAM for segmentation (Huang, Huang & Krahenbuhl, ECCV 2018): layer-wise activation
    matching of a target network to the frozen source network.

    Phase 1 (progress < `pretrain_fraction`, `PHASES`): source network S trained on source CE. Phase 2: the
    target network T starts as a copy of S; S is frozen (eval mode). For every matched layer i —
    the network's intermediate maps (1/2, 1/4, context and decoder stages, weight `hidden_weight`)
    and the logits (weight 1) — a patch discriminator D_i (LSGAN: squared error to 1 / 0) tells
    A_i^S(x_s) from A_i^T(x_t); T minimises
    sum_i w_i [(D_i(A_i^T) - 1)^2 + g W2(N_i^T, N_i^S)] + lambda sum_params mean((theta_T - theta_S)^2),
    D_i learning source -> 1, target -> 0; N_i the per-channel Gaussian fit over batch and
    positions (Gaussian matching, `gaussian_w2`); S runs with batch statistics like T. As the
    classification `GAM` (drift, per-layer discriminators; here patch discriminators on feature
    maps with LSGAN, as the paper for segmentation). Departures: the moment term is a normalised
    W2 distance, not the classification version's KL (which explodes on dead ReLU channels);
    the paper matches 4 of ERFNet's layers, we match the small network's stages (ResNet
    layer1-4 for DeepLab-v2); no source loss in phase 2 (as the released code). `predict` uses
    T after the switch.
    """

    SAME_METHOD_AS = "GAM"
    SETTINGS = ("uda",)
    PAPER = "Huang, Huang & Krahenbuhl, Domain transfer through deep activation matching, ECCV 2018"
    PHASES = PhaseSchedule("pretrain_fraction", by_progress=True)
    HPARAMS = {
        "pretrain_fraction": HParam(0.5, Choice([0.3, 0.5]), low=0.0, high=1.0),
        "drift_weight": HParam(1.0, LogUniform(-2, 1), low=0.0, help="lambda of the weight drift"),
        "hidden_weight": HParam(0.1, LogUniform(-2, 0), low=0.0, help="w of the hidden layers"),
        "gauss_weight": HParam(1.0, LogUniform(-1, 1), low=0.0, help="g of the Gaussian KL"),
        "lr_d": HParam(1e-4, LogUniform(-4.5, -3.5), low=0.0, help="discriminator Adam lr"),
        "disc_width": _disc_width,
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.target_net = copy.deepcopy(self.network)
        self.target_optimizer = self.make_sgd(self.target_net)
        with torch.no_grad():
            out = self.network.forward_all(torch.zeros(2, *self.input_shape))
        w = int(self.hparams["disc_width"])
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(a.shape[1], w, n_down_for(*a.shape[-2:], 3), 3)
            for a in [*out.features, out.logits])
        self.d_optimizer = torch.optim.Adam(self.discriminators.parameters(), lr=self.hparams["lr_d"],
                                            betas=(0.9, 0.99))
        self.register_buffer("adapting", torch.zeros((), dtype=torch.bool))

    def train(self, mode: bool = True):
        super().train(mode)
        if bool(self.adapting):
            self.network.eval()  # the frozen source network
        return self

    def start_adaptation(self) -> None:
        """The phase switch: T <- S, then S stays frozen (and in eval mode)."""
        self.target_net.load_state_dict(self.network.state_dict())
        self.network.requires_grad_(False)
        self.adapting.fill_(True)
        self.train(self.training)

    def update(self, minibatches, unlabeled=None):
        hp = self.hparams
        xs, ys = self.source_batch(minibatches)
        if not self.PHASES.adapting(self):
            loss = seg_loss(self.network.forward_all(xs).logits, ys)
            self.step(loss)
            return {"loss": loss.item(), "phase": 1.0}
        if not unlabeled:
            raise ShiftbenchError("SegGAM needs unlabeled target batches (--task uda)")
        with torch.no_grad(), using_batch_statistics(self.network):  # as T, batch statistics
            out_s = self.network.forward_all(xs)
        out_t = self.target_net.forward_all(torch.cat(list(unlabeled)))
        acts_s, acts_t = out_s.features + [out_s.logits], out_t.features + [out_t.logits]
        weights = [hp["hidden_weight"]] * len(out_s.features) + [1.0]
        self.discriminators.requires_grad_(False)
        adv = sum(w * ((d(a) - 1) ** 2).mean() for w, d, a in zip(weights, self.discriminators, acts_t))
        gauss = sum(w * gaussian_w2(a_t.float(), a_s.float()) for w, a_t, a_s in zip(weights, acts_t, acts_s))
        drift = weight_drift(self.target_net, self.network)
        loss = adv + hp["gauss_weight"] * gauss + hp["drift_weight"] * drift
        self.step(loss, self.target_optimizer)
        self.discriminators.requires_grad_(True)
        d_loss = sum(w * ((d(a_s) - 1) ** 2).mean() + w * (d(a_t.detach()) ** 2).mean()
                     for w, d, a_s, a_t in zip(weights, self.discriminators, acts_s, acts_t))
        self.step(d_loss, self.d_optimizer, hp["lr_d"])
        return {"loss": loss.item(), "adv": float(adv.detach()), "gauss": float(gauss.detach()),
                "drift": drift.item(), "d_loss": d_loss.item(), "phase": 2.0}

    def predict(self, x):
        return self.target_net(x) if bool(self.adapting) else self.network(x)
