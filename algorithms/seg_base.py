"""Shared plumbing of the segmentation algorithms, and the source-only baseline.

Segmentation algorithms declare `TASK_TYPES = ("segmentation",)` and train on label maps:
`minibatches = [(x [B,3,H,W], y [B,H,W])]` (255 = ignore), `unlabeled = [x_t]`; `predict(x)`
returns logits B x K x H x W at the input size. The network is `shiftbench.seg_networks`'s
(`seg_network`: the small encoder-decoder for CPU runs, DeepLab-v2 ResNet-101 for the real
benchmarks). Optimisation follows DeepLab-v2 as used by every paper of this family: SGD with
momentum 0.9, weight decay 5e-4, poly learning-rate decay `lr (1 - t/N)^0.9`, classifier 10x.
The paper learning rate 2.5e-4 is for ImageNet/COCO-initialised DeepLab; the small network
trains from scratch and defaults to 0.01 (a departure needed for short CPU budgets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench.algorithms.base import Algorithm, AlgorithmBase, register_algorithm
from shiftbench.algorithms.base import step as gradient_step
from shiftbench.datasets.road_protocol import PROTOCOL_HPARAMS
from shiftbench.datasets.segmentation import IGNORE_INDEX
from shiftbench.hparams import DatasetInfo, HParam, LogUniform
from shiftbench.seg_networks import SEG_NETWORKS, SegNetwork, upsample


def _real_size(ds: DatasetInfo) -> bool:
    return len(ds.input_shape) == 3 and ds.input_shape[-1] >= 512


def seg_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Pixel cross-entropy of (low-resolution) logits upsampled to the labels, ignoring 255."""
    return F.cross_entropy(upsample(logits, y.shape[-2:]), y, ignore_index=IGNORE_INDEX,
                           reduction=reduction)


def pixel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel Shannon entropy B x H x W of softmax over the class dimension."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1)


def poly_lr(base: float, progress: float, power: float) -> float:
    return base * max(0.0, 1.0 - progress) ** power


class SegAlgorithm(AlgorithmBase):
    """Base of the segmentation algorithms: network, SGD + poly schedule, source loss. Its
    hparams are the segmentation papers' under every protocol (DomainBed has no segmentation)."""

    TASK_TYPES = ("segmentation",)
    SETTINGS = ("uda", "dg")
    HPARAMS = {
        "lr": lambda ds: HParam(2.5e-4 if _real_size(ds) else 0.01,
                                LogUniform(-4, -3) if _real_size(ds) else LogUniform(-2.5, -1.5),
                                low=0.0, help="SGD learning rate of the backbone (head 10x)"),
        "weight_decay": HParam(5e-4, None, low=0.0),
        "batch_size": lambda ds: HParam(2 if _real_size(ds) else 8, None, low=1,
                                        help="images per domain per step"),
        "weights": HParam("", None, help="local initial weights for deeplabv2 (--weights): a "
                          "DeepLab-v2 / ResNet-101 state dict, e.g. the COCO DeepLab-v2"),
        "pretrained": lambda ds: HParam(True, None, help="ImageNet ResNet-101 (deeplabv2 only)"),
        # Classification hparams that segmentation configurations have always carried (they were
        # inherited from the classification base): no segmentation code reads them; dropping them
        # would change the hparams of every segmentation record.
        "hue": Algorithm.HPARAMS["hue"], "network_init": Algorithm.HPARAMS["network_init"],
        "input_center": Algorithm.HPARAMS["input_center"],
        "momentum": HParam(0.9, None, low=0.0, high=1.0),
        "seg_network": lambda ds: HParam("deeplabv2" if _real_size(ds) else "small", None,
                                         choices=SEG_NETWORKS, variant=True,
                                         help="small | deeplabv2 (ResNet-101, ASPP)"),
        "seg_width": HParam(8, None, low=4, help="channels of the small network's first stage"),
        "poly_power": HParam(0.9, None, low=0.0, help="poly learning-rate decay exponent"),
        "poly_steps": HParam(0, None, low=0, help="poly decay horizon in steps (0 = the run's)"),
        **PROTOCOL_HPARAMS,  # the real benchmarks' data protocol (crops, sizes, splits)
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        self.network = SegNetwork(self.input_shape, num_classes, self.hparams)
        self.optimizer = self.make_sgd(self.network)

    def make_sgd(self, network: nn.Module) -> torch.optim.SGD:
        """SGD over `network`, its classifiers at 10x the learning rate."""
        head = [p for n, p in network.named_parameters() if "classifier" in n.split(".")[0]]
        ids = {id(p) for p in head}
        body = [p for p in network.parameters() if id(p) not in ids]
        hp = self.hparams
        groups = [{"params": body, "lr_mult": 1.0}, {"params": head, "lr_mult": 10.0}]
        return torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"],
                               weight_decay=hp["weight_decay"])

    def set_lr(self, optimizer: torch.optim.Optimizer, base: float | None = None) -> float:
        """Apply the poly schedule at the current progress to `optimizer` (over `poly_steps`
        when set, e.g. AdaptSegNet's 250k-step decay stopped at 150k); returns the lr."""
        horizon = int(self.hparams.get("poly_steps") or 0)
        progress = min(1.0, float(self.num_updates) / horizon) if horizon else self.progress
        lr = poly_lr(self.hparams["lr"] if base is None else base, progress, self.hparams["poly_power"])
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def source_batch(self, minibatches) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None,
             base_lr: float | None = None) -> None:
        """One step of `optimizer` (default: the segmenter's) at the poly-decayed `base_lr`."""
        optimizer = optimizer or self.optimizer
        self.set_lr(optimizer, base_lr)
        gradient_step(loss, optimizer)

    def predict(self, x):
        return self.network(x)


@register_algorithm
class SegSourceOnly(SegAlgorithm):
    """Source-only segmentation (the lower bound of every adaptation table; with the target
    domain as the training domain it is the target-only upper bound): pixel cross-entropy on
    the labeled batches, `L = mean_{labeled pixels} CE(f(x)_p, y_p)`. The segmentation analogue
    of ERM."""

    SAME_METHOD_AS = "ERM"
    PAPER = "Chen et al., DeepLab: semantic image segmentation with deep convolutional nets, " \
            "atrous convolution, and fully connected CRFs, TPAMI 2018"

    def update(self, minibatches, unlabeled=None):
        x, y = self.source_batch(minibatches)
        loss = seg_loss(self.network.forward_all(x).logits, y)
        self.step(loss)
        return {"loss": loss.item()}
