"""Featurizers and classifiers (DomainBed's networks, offline-safe).

`Featurizer(input_shape, hparams)` picks the network from the input shape:
* 1-D vectors -> `MLP` (width/depth/dropout from hparams);
* images up to 32x32 -> the `network` hparam: `MNIST_CNN` (4 conv layers 64-128-128-128, 3x3,
  ReLU, GroupNorm(8), global average pool, 128-d; the `cnn_width` hparam scales its channels),
  or `WideResNet` 16-2 (DomainBed's featurizer for 32x32 inputs, the default under
  `--protocol domainbed`), or `DANNDigitsCNN` (`dann_digits`: the MNIST network of Ganin et
  al., JMLR 2016, whose classifiers have two hidden layers of 100, `head_hidden`);
* larger images -> the `backbone` hparam: torchvision ResNet-18/50 (DomainBed's, ImageNet weights
  read from a local file) or any timm model (`shiftbench.backbones`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftbench.backbones import FrozenBatchNormMixin
from shiftbench.errors import ShiftbenchError, UnknownNameError

NORMS = ("default", "batch")
SMALL_NETWORKS = ("mnist_cnn", "wrn16_2", "dann_digits")  # the `network` hparam's choices


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ShiftbenchError(f"unknown featurizer norm {norm!r}; valid: {', '.join(NORMS)}")
    return norm


class MLP(nn.Module):
    """Linear -> Dropout -> ReLU, (depth - 2) hidden blocks, then Linear to `n_outputs`.

    With `norm="batch"` a BatchNorm1d follows each hidden Linear (for AdaBN, Tent, ...).
    """

    def __init__(self, n_inputs: int, n_outputs: int, hparams: Mapping[str, Any],
                 norm: str = "default"):
        super().__init__()
        width, depth = int(hparams["mlp_width"]), int(hparams["mlp_depth"])
        dropout = float(hparams["mlp_dropout"])

        def block(n_in: int) -> list[nn.Module]:
            bn = [nn.BatchNorm1d(width)] if _check_norm(norm) == "batch" else []
            return [nn.Linear(n_in, width), *bn, nn.Dropout(dropout), nn.ReLU()]

        layers: list[nn.Module] = block(n_inputs)
        for _ in range(depth - 2):
            layers += block(width)
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def stages(self) -> list[nn.Module]:
        """Each hidden block (Linear, [BN], Dropout, ReLU), then the output Linear."""
        stages, current = [], []
        for layer in self.net:
            current.append(layer)
            if isinstance(layer, nn.ReLU):
                stages.append(nn.Sequential(*current))
                current = []
        return stages + [nn.Sequential(*current)]


class MNIST_CNN(nn.Module):  # noqa: N801 - DomainBed's name
    """The small-image featurizer of DomainBed (ReLU before GroupNorm, 128-d output).

    `norm="batch"` swaps each GroupNorm(8) for a BatchNorm2d (methods that adapt BN statistics).
    `width` (the `cnn_width` hparam) is the first layer's channels, DomainBed's 64; the other
    layers and the output have twice as many.
    """

    def __init__(self, input_shape: tuple[int, ...], norm: str = "default", width: int = 64):
        super().__init__()
        if width < 8 or width % 8:
            raise ShiftbenchError(f"cnn_width must be a positive multiple of 8 (GroupNorm uses 8 "
                                  f"groups), got {width}")
        c, w = input_shape[0], int(width)
        make_norm = (nn.BatchNorm2d if _check_norm(norm) == "batch"
                     else lambda n: nn.GroupNorm(8, n))
        self.n_outputs = 2 * w
        self.conv1 = nn.Conv2d(c, w, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(2 * w, 2 * w, 3, 1, padding=1)
        self.bn0 = make_norm(w)
        self.bn1 = make_norm(2 * w)
        self.bn2 = make_norm(2 * w)
        self.bn3 = make_norm(2 * w)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each conv block (for methods that act on intermediate features)."""
        maps = []
        for conv, norm in ((self.conv1, self.bn0), (self.conv2, self.bn1),
                           (self.conv3, self.bn2), (self.conv4, self.bn3)):
            x = norm(torch.relu(conv(x)))
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_maps(x)[-1]
        return self.avgpool(x).flatten(1)

    def stages(self) -> list[nn.Module]:
        """The four conv blocks, the last followed by global average pooling."""
        blocks = [nn.Sequential(conv, nn.ReLU(), norm) for conv, norm in
                  ((self.conv1, self.bn0), (self.conv2, self.bn1), (self.conv3, self.bn2),
                   (self.conv4, self.bn3))]
        blocks[-1].extend([self.avgpool, nn.Flatten(1)])
        return blocks


class _WideBlock(nn.Module):
    """Pre-activation wide residual block: BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3 + shortcut
    (a 1x1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=stride, padding=1)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride=stride)
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.conv1(torch.relu(self.bn1(x))))
        return self.conv2(torch.relu(self.bn2(h))) + self.shortcut(x)


class WideResNet(nn.Module):
    """WideResNet-depth-k (Zagoruyko & Komodakis, 2016) without its classifier, as DomainBed's
    featurizer for 32x32 inputs (depth 16, k 2, no dropout: 128-d output).

    Stages of 16, 16k, 32k, 64k channels, (depth - 4) / 6 blocks per residual stage, strides
    1, 2, 2; a final BatchNorm (momentum 0.9, as DomainBed's) and ReLU, then average pooling.
    Layers keep PyTorch's default initialisation, as DomainBed's.
    """

    def __init__(self, input_shape: tuple[int, ...], depth: int = 16, k: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ShiftbenchError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, padding=1)
        stages, c_in = [], widths[0]
        for c_out, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(_WideBlock(c_in, c_out, stride if i == 0 else 1, dropout))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn1 = nn.BatchNorm2d(widths[-1], momentum=0.9)
        self.n_outputs = widths[-1]

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each residual stage (the last one after the final BN and ReLU)."""
        x = self.conv1(x)
        maps = []
        for stage in (self.layer1, self.layer2):
            x = stage(x)
            maps.append(x)
        maps.append(torch.relu(self.bn1(self.layer3(x))))
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_maps(x)[-1]
        return nn.functional.avg_pool2d(x, 8)[:, :, 0, 0]

    def stages(self) -> list[nn.Module]:
        """conv1 + stage 1, stage 2, stage 3 + final BN, ReLU and pooling."""
        return [nn.Sequential(self.conv1, self.layer1), self.layer2,
                nn.Sequential(self.layer3, self.bn1, nn.ReLU(), nn.AvgPool2d(8), nn.Flatten(1))]


class DANNDigitsCNN(nn.Module):
    """The MNIST feature extractor of DANN (Ganin et al., JMLR 2016, Fig. 4a): two blocks of
    5x5 convolution (32, then 48 channels, no padding), ReLU and 2x2 max-pooling, flattened
    (48 x 4 x 4 = 768 features at 28x28, 1,200 at 32x32).

    Its label predictor has two hidden layers of 100 (`head_hidden`; `Classifier(...,
    hidden=head_hidden(hparams))` builds it) and the paper's domain classifier one of 100.
    `norm="batch"` adds a BatchNorm2d after each convolution (for BN-adapting methods; the
    paper's network has no normalisation).

    `init="he"` draws every convolution from He et al.'s ReLU initialisation (normal, fan-in,
    gain sqrt 2; zero biases) instead of PyTorch's default (uniform, variance 1 / (3 fan-in));
    `center=True` maps the [0, 1] inputs to [-1, 1] first, `(x - 0.5) / 0.5` (TLlib's digits
    normalisation). The paper does not state either. Both are the `dann_digits` preset's (hparams
    `network_init`, `input_center`): with PyTorch's defaults and uncentred inputs, the features
    and logits start nearly constant and SGD at lr 0.01 stays on the ln 10 plateau for hundreds
    of steps on the coloured domains (source-only on synth: loss 2.299 and 11 % validation
    accuracy after 1,000 steps; with both: 0.135 and 88 %; docs/reproductions.md).
    """

    head_hidden = (100, 100)

    def __init__(self, input_shape: tuple[int, ...], norm: str = "default", init: str = "torch",
                 center: bool = False):
        super().__init__()
        c, h, w = input_shape
        if min(h, w) < 16:
            raise ShiftbenchError(f"network dann_digits needs images of at least 16x16 (two 5x5 "
                                  f"convolutions and 2x2 poolings), got {h}x{w}")
        batch = _check_norm(norm) == "batch"

        def block(n_in: int, n_out: int) -> list[nn.Module]:
            bn = [nn.BatchNorm2d(n_out)] if batch else []
            return [nn.Conv2d(n_in, n_out, 5), *bn, nn.ReLU(), nn.MaxPool2d(2)]

        self.net = nn.Sequential(*block(c, 32), *block(32, 48), nn.Flatten(1))
        self.n_outputs = 48 * (((h - 4) // 2 - 4) // 2) * (((w - 4) // 2 - 4) // 2)
        self.center = bool(center)
        init_relu_layers(self.net, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.5 if self.center else x)


INITS = ("torch", "he")  # the `network_init` hparam's choices


def init_relu_layers(module: nn.Module, init: str) -> None:
    """Re-draw the Conv2d/Linear layers of `module` (each followed by a ReLU): `torch` keeps
    PyTorch's default, `he` draws weights from N(0, 2 / fan_in) and zeroes the biases."""
    if init not in INITS:
        raise UnknownNameError("network_init", init, INITS)
    if init == "torch":
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def network_name(hparams: Mapping[str, Any]) -> str:
    """The `network` hparam (`mnist_cnn` when absent), checked against `SMALL_NETWORKS`."""
    name = str(hparams.get("network", "mnist_cnn"))
    if name not in SMALL_NETWORKS:
        raise UnknownNameError("network", name, SMALL_NETWORKS)
    return name


def head_hidden(hparams: Mapping[str, Any]) -> tuple[int, ...]:
    """Hidden layer widths of the label head the `network` hparam prescribes (() = linear)."""
    return DANNDigitsCNN.head_hidden if network_name(hparams) == "dann_digits" else ()


def pretrained_weights_path(arch: str) -> Path:
    """Where ImageNet weights for `arch` must be: $SHIFTBENCH_PRETRAINED_DIR or torch's cache."""
    import torchvision

    weights = {"resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
               "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1}[arch]
    filename = os.path.basename(weights.url)
    candidates = []
    if os.environ.get("SHIFTBENCH_PRETRAINED_DIR"):
        candidates.append(Path(os.environ["SHIFTBENCH_PRETRAINED_DIR"]) / filename)
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    for path in candidates:
        if path.is_file():
            return path
    raise ShiftbenchError(
        f"pretrained {arch} weights not found; looked for {filename} in "
        + ", ".join(str(p.parent) for p in candidates)
        + f". Download {weights.url} into one of these folders, or pass "
        "--hparams '{\"pretrained\": false}' to train from scratch"
    )


class ResNet(FrozenBatchNormMixin, nn.Module):
    """torchvision ResNet-18/50 without its fc layer, optional dropout and frozen BatchNorm."""

    def __init__(self, input_shape: tuple[int, ...], hparams: Mapping[str, Any]):
        super().__init__()
        import torchvision

        from shiftbench.backbones import backbone_name

        arch = backbone_name(hparams)
        from shiftbench.weights import load_backbone, read_weights

        self.network = getattr(torchvision.models, arch)(weights=None)
        if hparams.get("pretrained", True) or hparams.get("weights"):
            path = hparams.get("weights") or pretrained_weights_path(arch)
            label = (f"--weights {path}" if hparams.get("weights")
                     else f"pretrained {arch} weights {path}")
            load_backbone(self.network, read_weights(path, label), ("fc",), label)
        self.n_outputs = self.network.fc.in_features
        c = input_shape[0]
        if c != 3:  # repeat the RGB filters cyclically over the input channels (as DomainBed)
            old = self.network.conv1.weight.data.clone()
            self.network.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
            for i in range(c):
                self.network.conv1.weight.data[:, i] = old[:, i % 3]
        self.network.fc = nn.Identity()
        self.dropout = nn.Dropout(float(hparams.get("resnet_dropout", 0.0)))
        self.frozen_bn = bool(hparams.get("freeze_bn", False))
        self._freeze_bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.network(x))

    def stages(self) -> list[nn.Module]:
        """stem + layer1, layer2, layer3, layer4 + pooling + dropout."""
        n = self.network
        return [nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool, n.layer1), n.layer2, n.layer3,
                nn.Sequential(n.layer4, n.avgpool, nn.Flatten(1), self.dropout)]


def Featurizer(input_shape: tuple[int, ...], hparams: Mapping[str, Any],  # noqa: N802
               norm: str = "default") -> nn.Module:
    """The featurizer for an input shape; its output size is `.n_outputs`.

    `norm="batch"` asks for BatchNorm layers (the MLP and small CNN otherwise have none / use
    GroupNorm; ResNets always have BatchNorm).
    """
    input_shape = tuple(input_shape)
    if len(input_shape) == 1:
        return MLP(input_shape[0], int(hparams["mlp_width"]), hparams, norm)
    if len(input_shape) == 3 and max(input_shape[1:]) <= 32:
        network = network_name(hparams)
        if network == "dann_digits":
            return DANNDigitsCNN(input_shape, norm, str(hparams.get("network_init", "torch")),
                                 bool(hparams.get("input_center", False)))
        if network == "wrn16_2":
            if tuple(input_shape[1:]) != (32, 32):
                raise ShiftbenchError(f"network 'wrn16_2' needs 32x32 inputs, got {input_shape}")
            return WideResNet(input_shape, 16, 2, 0.0)
        return MNIST_CNN(input_shape, norm, int(hparams.get("cnn_width", 64)))
    if len(input_shape) == 3:
        from shiftbench.backbones import TimmBackbone, backbone_name, is_timm

        if is_timm(backbone_name(hparams)):
            return TimmBackbone(input_shape, hparams, norm)
        return ResNet(input_shape, hparams)
    raise ShiftbenchError(
        f"no featurizer for input shape {input_shape}; supported: (d,) vectors, (C, H, W) images"
    )


def Classifier(in_features: int, out_features: int, nonlinear: bool = False,  # noqa: N802
               hidden: Sequence[int] = (), init: str = "torch") -> nn.Module:
    """A linear head, DomainBed's 3-layer MLP head when `nonlinear`, or, when `hidden` is given
    (`head_hidden(hparams)`), Linear-ReLU layers of those widths, then Linear to the classes;
    `init` (`init_relu_layers`) re-draws those hidden Linear-ReLU layers."""
    if hidden:
        layers: list[nn.Module] = []
        size = in_features
        for width in hidden:
            layers += [nn.Linear(size, int(width)), nn.ReLU()]
            size = int(width)
        init_relu_layers(nn.Sequential(*layers), init)
        return nn.Sequential(*layers, nn.Linear(size, out_features))
    if nonlinear:
        return nn.Sequential(
            nn.Linear(in_features, in_features // 2), nn.ReLU(),
            nn.Linear(in_features // 2, in_features // 4), nn.ReLU(),
            nn.Linear(in_features // 4, out_features),
        )
    return nn.Linear(in_features, out_features)


def check_weights(hparams: Mapping[str, Any], input_shape: tuple[int, ...]) -> None:
    """Build the featurizer `hparams` select on the meta device, loading its `weights` file:
    raises the error a trial would, without allocating or writing anything."""
    try:
        with torch.device("meta"):
            Featurizer(tuple(input_shape), hparams)
    except ShiftbenchError:
        raise
    except (RuntimeError, NotImplementedError):  # a model whose construction needs real values
        Featurizer(tuple(input_shape), hparams)
