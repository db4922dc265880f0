"""ARM: adaptive risk minimization with a context network (ARM-CML; Zhang et al., NeurIPS 2021).

ARM meta-learns a model that adapts to a domain from an unlabeled batch of it. In the
contextual-meta-learning variant (CML) a context network c summarises each batch ("support
set") B of one domain, and the prediction for every x in B sees that summary:

    ctx(B) = mean_{x' in B} c(x'),   f(x; B) = w(phi([x, ctx(B)]))   ([.,.] = channel concat)
    L = mean over support sets B of CE(f(x; B), y)

For images, c is DomainBed's ContextNet (three 5x5 convolutions, 64-64-1 channels, BatchNorm +
ReLU between, same spatial size), so the featurizer receives C + 1 channels. Training batches
are the per-domain batches (support size = batch_size); at test time a batch whose size is a
multiple of batch_size is cut into support sets of that size, any other batch is one support set.
"""

from __future__ import annotations

import torch
from torch import nn

from shiftbench.algorithms.base import make_optimizer, register_algorithm
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import DatasetInfo, HParam, IntLogUniform


class ContextNet(nn.Sequential):
    """Maps an input to one extra channel of the same shape (a vector: one channel of length d)."""

    def __init__(self, input_shape: tuple[int, ...], width: int = 64):
        if len(input_shape) == 3:
            c = input_shape[0]
            super().__init__(
                nn.Conv2d(c, width, 5, padding=2), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 5, padding=2), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, 1, 5, padding=2))
        else:
            d = input_shape[0]
            super().__init__(
                nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU(),
                nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                nn.Linear(width, d))


def _batch_size(ds: DatasetInfo) -> HParam:
    if ds.domainbed_small or ds.is_vector:
        return HParam(64, IntLogUniform(3, 9), low=1, help="examples per domain per step = support size")
    return HParam(8, None, low=1, help="examples per domain per step = support size (DomainBed: fixed 8)")


@register_algorithm
class ARM(ERM):
    """Adaptive Risk Minimization, ARM-CML (Zhang et al., NeurIPS 2021); equations in the module doc.

    `arm_train_context` (variant switch): True (shiftbench default, the paper) trains the context
    network jointly with the model; False (DomainBed protocol) is DomainBed's behaviour, whose
    optimizer is built before the context network exists, so the context network keeps its
    random initial weights (only its BatchNorm statistics move). Batch size (= support size):
    shiftbench's usual space; DomainBed fixes 8 on large images. Departure: vector inputs get an
    MLP context network producing one extra channel of length d (DomainBed supports images only).
    """

    SETTINGS = ("dg",)
    PAPER = ("Zhang, Marklund, Dhawan, Gupta, Levine & Finn, Adaptive Risk Minimization: Learning to "
             "Adapt to Domain Shift, NeurIPS 2021")
    HPARAMS = {
        "arm_train_context": HParam(True, None, variant=True,
                                    help="optimize the context network (paper) or not (DomainBed)"),
    }
    DOMAINBED_HPARAMS = {
        "arm_train_context": HParam(False, None, variant=True,
                                    help="optimize the context network (paper) or not (DomainBed)"),
        "batch_size": _batch_size,
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        shape = tuple(input_shape)
        augmented = (shape[0] + 1, *shape[1:]) if len(shape) == 3 else (2 * shape[0],)
        super().__init__(augmented, num_classes, num_domains, hparams, **kwargs)
        self.input_shape = shape
        self.context_net = ContextNet(shape)
        self.support_size = int(self.hparams["batch_size"])
        if self.hparams["arm_train_context"]:
            params = list(self.network.parameters()) + list(self.context_net.parameters())
            self.optimizer = make_optimizer(params, self.hparams)

    def predict(self, x):
        n = len(x)
        support = self.support_size if n % self.support_size == 0 else n
        context = self.context_net(x)
        context = context.reshape(n // support, support, *context.shape[1:]).mean(1)
        context = context.repeat_interleave(support, dim=0)
        return self.network(torch.cat([x, context], dim=1))


__all__ = ["ARM", "ContextNet"]
