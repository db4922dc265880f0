"""Segmentation networks: DeepLab-v2 (ResNet-101) for real benchmarks, a small encoder-decoder for
CPU runs. Chosen by the `seg_network` hparam through `SegNetwork(input_shape, num_classes, hparams)`.

Every network returns from `forward_all(x)` a `SegOutput`: `logits` (B x K x h x w at the
network's output stride), `aux` (logits of an auxiliary classifier on an earlier stage, the
"multi-level" output AdaptSegNet adapts, or None) and `features` (intermediate maps, shallow to
deep, for layer-wise activation matching). `forward(x)` returns the main logits upsampled
bilinearly to the input size (B x K x H x W), as DeepLab does at test time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench.errors import ShiftbenchError

SEG_NETWORKS = ("small", "deeplabv2")


@dataclass
class SegOutput:
    logits: torch.Tensor
    aux: torch.Tensor | None
    features: list[torch.Tensor]


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of B x K x h x w maps to `size` (no-op when already there)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class _Seg(nn.Module):
    def forward_all(self, x: torch.Tensor) -> SegOutput:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(self.forward_all(x).logits, x.shape[-2:])


def _conv_bn(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation,
                                   bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallEncoderDecoder(_Seg):
    """A small fully-convolutional encoder-decoder with BatchNorm, for 64x128 images on CPUs.

    Encoder: stem (1/1, w) -> 1/2 (2w) -> 1/4 (4w) -> 1/8 (4w), then a context block of two
    dilated (2, 4) 3x3 convs, i.e. DeepLab's "dilated last stages" in miniature. Decoder: the
    context map upsampled to 1/4, concatenated with the 1/4 encoder map, one 3x3 conv and a 1x1
    classifier: main logits at output stride 4. The auxiliary classifier reads the 1/8 map.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 8):
        super().__init__()
        w = int(width)
        self.stem = _conv_bn(in_channels, w)
        self.down1 = nn.Sequential(_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w))
        self.down2 = nn.Sequential(_conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w))
        self.down3 = nn.Sequential(_conv_bn(4 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w))
        self.context = nn.Sequential(_conv_bn(4 * w, 4 * w, dilation=2), _conv_bn(4 * w, 4 * w, dilation=4))
        self.fuse = _conv_bn(8 * w, 4 * w)
        self.classifier = nn.Conv2d(4 * w, num_classes, 1)
        self.aux_classifier = nn.Conv2d(4 * w, num_classes, 1)

    def forward_all(self, x: torch.Tensor) -> SegOutput:
        f1 = self.down1(self.stem((x - 0.5) / 0.25))
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        f4 = self.context(f3)
        up = F.interpolate(f4, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        f5 = self.fuse(torch.cat([up, f2], dim=1))
        return SegOutput(self.classifier(f5), self.aux_classifier(f3), [f1, f2, f4, f5])


class ASPPClassifier(nn.Module):
    """DeepLab-v2's ASPP head: parallel 3x3 convs with dilations 6, 12, 18, 24, outputs summed."""

    def __init__(self, c_in: int, num_classes: int, rates: tuple[int, ...] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(c_in, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


def resnet101_weights_path() -> Path:
    """The local ImageNet ResNet-101 file: $SHIFTBENCH_PRETRAINED_DIR or torch's hub cache."""
    import torchvision

    url = torchvision.models.ResNet101_Weights.IMAGENET1K_V1.url
    filename = os.path.basename(url)
    folders = ([Path(os.environ["SHIFTBENCH_PRETRAINED_DIR"])]
               if os.environ.get("SHIFTBENCH_PRETRAINED_DIR") else [])
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename
    raise ShiftbenchError(
        f"ImageNet ResNet-101 weights for seg_network=deeplabv2 not found: looked for {filename} in "
        + ", ".join(map(str, folders)) + f". Download {url} into one of them, or pass "
        "--hparams '{\"pretrained\": false}' to train from scratch")


class DeepLabV2(_Seg):
    """DeepLab-v2: ResNet-101 with layer3/layer4 dilated (2, 4) instead of strided (output stride
    8) and the ASPP classifier on layer4; the auxiliary ASPP classifier on layer3 is AdaptSegNet's
    multi-level output. ImageNet weights (the papers start from ImageNet or COCO DeepLab weights)."""

    def __init__(self, in_channels: int, num_classes: int, pretrained: bool = True):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        if pretrained:
            state = torch.load(resnet101_weights_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        if in_channels != 3:
            raise ShiftbenchError(f"seg_network=deeplabv2 takes RGB images, got {in_channels} channels")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.classifier = ASPPClassifier(2048, num_classes)
        self.aux_classifier = ASPPClassifier(1024, num_classes)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward_all(self, x: torch.Tensor) -> SegOutput:
        f1 = self.layer1(self.stem((x - self.mean) / self.std))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return SegOutput(self.classifier(f4), self.aux_classifier(f3), [f1, f2, f3, f4])

    def head_parameters(self) -> list[nn.Parameter]:
        """The classifiers (trained with 10x the backbone's learning rate in DeepLab)."""
        return [*self.classifier.parameters(), *self.aux_classifier.parameters()]


def SegNetwork(input_shape: tuple[int, ...], num_classes: int,  # noqa: N802
               hparams: Mapping[str, Any]) -> _Seg:
    """The network named by `hparams["seg_network"]`."""
    name = hparams.get("seg_network", "small")
    if name == "small":
        return SmallEncoderDecoder(input_shape[0], num_classes, int(hparams.get("seg_width", 8)))
    if name == "deeplabv2":
        return DeepLabV2(input_shape[0], num_classes, bool(hparams.get("pretrained", True)))
    raise ShiftbenchError(f"unknown seg_network {name!r}; valid: {', '.join(SEG_NETWORKS)}")
