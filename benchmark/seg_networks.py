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
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # the released DeepLab-v2's IMG_MEAN


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


def load_deeplab_weights(net: nn.Module, path: str) -> bool:
    """Load a local DeepLab-v2 / ResNet-101 state dict into `net` (`--weights`).

    Accepts our own keys, torchvision's ResNet keys (`conv1`, `bn1`, `layerN`) and the released
    DeepLab-v2 nets' (`Scale.` prefix of the COCO model, `layer5`/`layer6` = main / auxiliary ASPP
    classifier, `module.` of DataParallel). Tensors that match a parameter by name and shape are
    copied, the rest skipped, as the released scripts' copy loop does (so the 21-class COCO
    head is left at its initialisation); a file that fills no backbone tensor is an error.
    Returns True for a released (Caffe-converted) DeepLab file - neither torchvision's ImageNet
    ResNet (which has `fc`) nor a state of ours (which has the input buffers) - whose input is
    BGR in 0-255 minus the Caffe mean (both DACS's resnet101COCO and AdaptSegNet's init)."""
    file = Path(path)
    if not file.is_file():
        raise ShiftbenchError(f"--weights {path}: no such file")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    rename = (("module.", ""), ("Scale.", ""), ("conv1.", "stem.0."), ("bn1.", "stem.1."),
              ("layer5.conv2d_list.", "classifier.branches."),
              ("layer6.conv2d_list.", "aux_classifier.branches."))
    own = net.state_dict()
    loaded, skipped = {}, []
    for key, value in state.items():
        new = key
        for old, repl in rename:
            if new.startswith(old):
                new = repl + new[len(old):]
        if new in own and own[new].shape == value.shape:
            loaded[new] = value
        else:
            skipped.append(key)
    if not any(k.startswith(("stem.", "layer")) for k in loaded):
        raise ShiftbenchError(f"--weights {path}: no tensor matches the DeepLab-v2 ResNet-101 "
                              f"backbone (first keys: {', '.join(list(state)[:3])})")
    net.load_state_dict(loaded, strict=False)
    # torchvision's ImageNet file has the fc head; our own states carry the input buffers
    return not any(k.endswith(("fc.weight", "channels")) for k in state)


class DeepLabV2(_Seg):
    """DeepLab-v2 as the released AdaptSegNet / ADVENT / DACS code builds it: ResNet-101 whose
    layer3 and layer4 keep stride 1 and dilate *every* block's 3x3 conv by 2 and 4 (output stride
    8; torchvision's `replace_stride_with_dilation` would leave each stage's first block at the
    previous dilation), a ceil-mode max-pool, and BatchNorm whose affine parameters are frozen
    (the layers still run in train mode, as in the released training scripts); the ASPP
    classifier on layer4, the auxiliary ASPP classifier on layer3 (AdaptSegNet's multi-level
    output). Initial weights: ImageNet (`resnet101_weights_path`) or a local file (`weights`:
    a DeepLab / ResNet state dict, e.g. the COCO-pretrained DeepLab-v2 DACS and AdaptSegNet
    start from; keys of the released nets, `layer5`/`layer6` classifiers, are mapped, and such
    a file switches the input to its BGR 0-255 Caffe-mean form and layer2's stride to the first
    1x1 conv, as the released nets are built)."""

    def __init__(self, in_channels: int, num_classes: int, pretrained: bool = True,
                 weights: str | None = None):
        super().__init__()
        import torchvision

        if in_channels != 3:
            raise ShiftbenchError(f"seg_network=deeplabv2 takes RGB images, got {in_channels} channels")
        net = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        if pretrained and not weights:
            state = torch.load(resnet101_weights_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
            for block in layer:
                block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)
        net.maxpool.ceil_mode = True
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.classifier = ASPPClassifier(2048, num_classes)
        self.aux_classifier = ASPPClassifier(1024, num_classes)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.register_buffer("channels", torch.tensor([0, 1, 2]))
        if weights and load_deeplab_weights(self, weights):  # the Caffe DeepLab's input
            # and its ResNet v1: layer2's stride sits on the first 1x1 conv, not on the 3x3
            self.layer2[0].conv1.stride, self.layer2[0].conv2.stride = (2, 2), (1, 1)
            self.channels.copy_(torch.tensor([2, 1, 0]))
            self.mean.copy_(torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1) / 255)
            self.std.fill_(1 / 255)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(False)  # affine frozen; statistics still follow train()

    def forward_all(self, x: torch.Tensor) -> SegOutput:
        f1 = self.layer1(self.stem((x[:, self.channels] - self.mean) / self.std))
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
    weights = hparams.get("weights") or None
    if name == "small":
        if weights:
            raise ShiftbenchError(f"--weights {weights}: seg_network=small trains from scratch; "
                                  "initial weights load into seg_network=deeplabv2")
        return SmallEncoderDecoder(input_shape[0], num_classes, int(hparams.get("seg_width", 8)))
    if name == "deeplabv2":
        return DeepLabV2(input_shape[0], num_classes, bool(hparams.get("pretrained", True)),
                         weights)
    raise ShiftbenchError(f"unknown seg_network {name!r}; valid: {', '.join(SEG_NETWORKS)}")
