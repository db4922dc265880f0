"""URM: uniform risk minimization, features pushed towards a uniform distribution (TMLR 2024).

Krishnamachari et al. argue that features spread uniformly over a bounded range make a
classifier less reliant on any one (possibly spurious) direction. The featurizer's output goes
through a bounded activation s (tanh: range [-1, 1]; relu / sigmoid: [0, 1] for the noise) and an
MLP discriminator D (LeakyReLU) learns to tell features from uniform noise u ~ U[a, b]^d:

    generator (featurizer + classifier):  L_G = CE(w(z), y) + lambda * BCE(D(z), 1),   z = s(phi(x))
    discriminator, after the generator step, on the same (detached) z:
                                          L_D = BCE(D(u), 1) + lambda * BCE(D(z), 0)

(the weight lambda on the feature term of L_D is DomainBed's). With label smoothing eps > 0 the
targets 1 / 0 become U[1 - eps, 1] / U[0, eps].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench.algorithms.base import (
    concat_minibatches,
    cross_entropy,
    make_optimizer,
    register_algorithm,
    step,
)
from shiftbench.algorithms.erm import ERM
from shiftbench.hparams import Choice, DatasetInfo, HParam, LogUniform, Uniform

ACTIVATIONS = {"tanh": (nn.Tanh, -1.0, 1.0), "relu": (nn.ReLU, 0.0, 1.0), "sigmoid": (nn.Sigmoid, 0.0, 1.0)}


def _discriminator_lr(ds: DatasetInfo) -> HParam:
    if ds.domainbed_small or ds.is_vector:
        return HParam(1e-3, LogUniform(-5.5, -3.5), low=0.0, help="discriminator learning rate")
    return HParam(5e-5, LogUniform(-6, -4.5), low=0.0, help="discriminator learning rate")


class UniformityDiscriminator(nn.Sequential):
    """Linear(d, 100) + LeakyReLU, `hidden` x [Linear(100, 100) + LeakyReLU], Linear(100, 1)."""

    def __init__(self, n_inputs: int, hidden: int, width: int = 100):
        layers: list[nn.Module] = [nn.Linear(n_inputs, width), nn.LeakyReLU()]
        for _ in range(hidden):
            layers += [nn.Linear(width, width), nn.LeakyReLU()]
        super().__init__(*layers, nn.Linear(width, 1))


@register_algorithm
class URM(ERM):
    """Uniform Risk Minimization, adversarial form (Krishnamachari et al., TMLR 2024), as DomainBed.

    Equations in the module docstring. Defaults / search (shiftbench = DomainBed):
    urm_adv_lambda 0.1 / U(0,0.2); urm_generator_output tanh / choice{tanh,relu} (sigmoid allowed);
    urm_discriminator_hidden_layers 1 / choice{1,2,3}; urm_discriminator_lr 1e-3 /
    10^U(-5.5,-3.5) on 28x28 (and vector) inputs, else 5e-5 / 10^U(-6,-4.5);
    urm_discriminator_label_smoothing 0 (fixed); urm_discriminator_optimizer adam (variant: adam
    or SGD with momentum 0.9), with the model's weight decay. The noise is drawn from torch's
    global generator, so it is reproducible under a fixed seed.
    """

    SETTINGS = ("dg",)
    PAPER = ("Krishnamachari et al., Uniformly Distributed Feature Representations for Fair and "
             "Robust Learning, TMLR 2024")
    HPARAMS = {
        "urm_adv_lambda": HParam(0.1, Uniform(0.0, 0.2), low=0.0, help="weight of the adversarial terms"),
        # a tuning knob searched by DomainBed: the feature range the uniform target lives on
        "urm_generator_output": HParam("tanh", Choice(["tanh", "relu"]), choices=tuple(ACTIVATIONS),
                                       variant=False,
                                       help="bounded activation on the features (sets the noise range)"),
        "urm_discriminator_hidden_layers": HParam(1, Choice([1, 2, 3]), low=0),
        "urm_discriminator_lr": _discriminator_lr,
        "urm_discriminator_label_smoothing": HParam(0.0, None, low=0.0, high=1.0),
        "urm_discriminator_optimizer": HParam("adam", None, choices=("adam", "sgd"), variant=True),
    }

    def __init__(self, input_shape, num_classes, num_domains, hparams, **kwargs):
        super().__init__(input_shape, num_classes, num_domains, hparams, **kwargs)
        activation, self.noise_low, self.noise_high = ACTIVATIONS[self.hparams["urm_generator_output"]]
        n_features = self.featurizer.n_outputs
        self.featurizer = nn.Sequential(self.featurizer, activation())
        self.featurizer.n_outputs = n_features
        self.network = nn.Sequential(self.featurizer, self.classifier)
        self.optimizer = make_optimizer(self.network.parameters(), self.hparams)
        hidden = int(self.hparams["urm_discriminator_hidden_layers"])
        self.discriminator = UniformityDiscriminator(n_features, hidden)
        d_params, d_lr = self.discriminator.parameters(), self.hparams["urm_discriminator_lr"]
        if self.hparams["urm_discriminator_optimizer"] == "sgd":
            self.discriminator_optimizer = torch.optim.SGD(
                d_params, lr=d_lr, momentum=0.9, weight_decay=self.hparams["weight_decay"])
        else:
            self.discriminator_optimizer = make_optimizer(d_params, self.hparams, lr=d_lr)

    def _targets(self, n: int, like: torch.Tensor, real: bool) -> torch.Tensor:
        eps = float(self.hparams["urm_discriminator_label_smoothing"])
        if not eps:
            return torch.full((n,), 1.0 if real else 0.0, dtype=like.dtype, device=like.device)
        low = 1.0 - eps if real else 0.0
        return low + eps * torch.rand(n, dtype=like.dtype, device=like.device)

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        z = self.featurizer(x)
        ce = cross_entropy(self.classifier(z), y)
        ones = torch.ones(len(z), dtype=z.dtype, device=z.device)
        fool = F.binary_cross_entropy_with_logits(self.discriminator(z)[:, 0], ones)
        loss = ce + self.hparams["urm_adv_lambda"] * fool
        step(loss, self.optimizer)

        z = z.detach()
        noise = self.noise_low + (self.noise_high - self.noise_low) * torch.rand(
            z.shape, dtype=z.dtype, device=z.device)
        real, fake = self._targets(len(z), z, True), self._targets(len(z), z, False)
        d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(noise)[:, 0], real)
                  + self.hparams["urm_adv_lambda"]
                  * F.binary_cross_entropy_with_logits(self.discriminator(z)[:, 0], fake))
        step(d_loss, self.discriminator_optimizer)
        return {"loss": loss.item(), "disc_loss": d_loss.item()}


__all__ = ["URM", "UniformityDiscriminator"]
