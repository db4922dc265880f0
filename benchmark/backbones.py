"""Featurizers from timm, the model library current DG papers use (ViT, ConvNeXt, RegNet, ...).

The `backbone` hparam names the network for images larger than 32x32: `resnet18` and `resnet50`
are DomainBed's torchvision ResNets (`shiftbench.networks.ResNet`, unchanged); any other name is
a timm model (`timm.list_models()`), and `timm:<name>` asks timm for a name torchvision also
has (e.g. `timm:resnet50`, with timm's own weights).

A timm featurizer is the model without its classifier (`num_classes=0`: pooled features of
size `num_features`), followed by dropout (`resnet_dropout`), with BatchNorm statistics frozen
when `freeze_bn` is set, as DomainBed's ResNet does. Pretrained weights (`pretrained`, default
true) come through timm's own mechanism: downloaded from the Hugging Face Hub (or the model's
URL) into its cache the first time, read from the cache afterwards; `weights` (the `--weights`
flag) loads a local file instead, strictly (`load_timm_weights`, `shiftbench.weights`): a file
that does not cover the backbone, the classifier excepted, is refused naming the keys.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from shiftbench.errors import IncompatibleBackbone, ShiftbenchError


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer of `module` in eval mode: its running statistics stay fixed
    (DomainBed's `freeze_bn`); call it again after each `train()`."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

TORCHVISION_BACKBONES = ("resnet18", "resnet50")
TIMM_PREFIX = "timm:"


class FrozenBatchNormMixin:
    """`freeze_bn`: the wrapped `self.network`'s BatchNorm layers stay in eval mode through every
    `train()` call (set `self.frozen_bn`, then call `self._freeze_bn()` once at construction)."""

    frozen_bn = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_bn()
        return self

    def _freeze_bn(self) -> None:
        if self.frozen_bn:
            freeze_batchnorm(self.network)


def backbone_name(hparams: Mapping[str, Any]) -> str:
    """The backbone an hparams dict selects (`resnet18: true` is DomainBed's ResNet-18 switch)."""
    name = str(hparams.get("backbone") or "resnet50")
    if name == "resnet50" and hparams.get("resnet18", False):
        return "resnet18"
    return name


def merge_backbone_flags(hparams: str | None, backbone: str | None, weights: str | None,
                         ) -> str | None:
    """`--hparams` JSON with `--backbone` / `--weights` merged in (the flags win)."""
    import json

    from shiftbench.hparams import parse_overrides

    if backbone is None and weights is None:
        return hparams
    merged = parse_overrides(hparams)
    if backbone is not None:
        merged["backbone"] = backbone
    if weights is not None:
        merged["weights"] = os.path.abspath(weights)
    return json.dumps(merged, sort_keys=True)


def is_timm(name: str) -> bool:
    return name not in TORCHVISION_BACKBONES


def _timm():
    try:
        import timm
    except ImportError:
        raise ShiftbenchError("backbones other than resnet18/resnet50 come from timm: "
                              "pip install timm (or pip install 'shiftbench[timm]')") from None
    return timm


def check_timm_name(name: str) -> str:
    """The timm model name of a `backbone` value, or a clear error with close matches."""
    timm = _timm()
    model = name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else name
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.6)
        raise ShiftbenchError(
            f"unknown backbone {name!r}: not resnet18/resnet50 and not a timm model"
            + (f" (close: {', '.join(close)})" if close else "")
            + "; see timm.list_models() for the valid names")
    return model


def weights_cache_hint(model: str) -> str:
    """Which file timm fetches for `model`'s pretrained weights, and where it caches it."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None:
        return f"timm has no pretrained weights for {model}"
    if cfg.hf_hub_id:
        try:
            from huggingface_hub.constants import HF_HUB_CACHE
        except ImportError:  # pragma: no cover - a dependency of timm
            HF_HUB_CACHE = "~/.cache/huggingface/hub"  # noqa: N806
        folder = "models--" + cfg.hf_hub_id.split("@")[0].replace("/", "--")
        return (f"https://huggingface.co/{cfg.hf_hub_id} (model.safetensors or "
                f"pytorch_model.bin), cached in {os.path.join(HF_HUB_CACHE, folder)}")
    return f"{cfg.url}, cached in {os.path.join(torch.hub.get_dir(), 'checkpoints')}"


def load_timm_weights(network: nn.Module, path: str, in_chans: int) -> None:
    """A local weights file into a timm model (strictly, see `shiftbench.weights`): read without
    running code, passed through the model family's checkpoint filter (timm's conversions, e.g.
    resampling a ViT's position embedding to another image size), the first convolution adapted
    to `in_chans` as timm does, the classifier dropped."""
    import sys

    from shiftbench.weights import load_backbone, read_weights

    label = f"--weights {path}"
    state = read_weights(path, label)
    cfg = getattr(network, "pretrained_cfg", None) or {}
    convert = getattr(sys.modules.get(type(network).__module__), "checkpoint_filter_fn", None)
    if convert is not None and state:
        try:
            state = convert(state, network)
        except Exception:  # noqa: S110 - a file of another architecture: reported by key below
            pass
    first = cfg.get("first_conv")
    for conv in ((first,) if isinstance(first, str) else tuple(first or ())):
        key = conv + ".weight"
        target = network.state_dict().get(key)
        if (key in state and target is not None and state[key].ndim == 4 and state[key].shape[1] == 3
                and tuple(state[key].shape) != tuple(target.shape) and in_chans != 3):
            state[key] = _timm().models.adapt_input_conv(in_chans, state[key].float())
    head = cfg.get("classifier") or ()
    load_backbone(network, state, (head,) if isinstance(head, str) else tuple(head), label)


class _Head(nn.Module):
    """timm's `forward_head` (global pooling, its own norm/flatten; no classifier) and dropout."""

    def __init__(self, network: nn.Module, dropout: nn.Module):
        super().__init__()
        self.forward_head = network.forward_head  # a bound method: no second registration
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.forward_head(x))


class TimmBackbone(FrozenBatchNormMixin, nn.Module):
    """A timm model as a featurizer: pooled features (`n_outputs`), dropout, optional frozen BN."""

    def __init__(self, input_shape: tuple[int, ...], hparams: Mapping[str, Any],
                 norm: str = "default"):
        super().__init__()
        timm = _timm()
        name = backbone_name(hparams)
        model = check_timm_name(name)
        weights = str(hparams.get("weights") or "")
        pretrained = bool(hparams.get("pretrained", True)) and not weights
        kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": int(input_shape[0])}
        size = tuple(input_shape[1:])
        cfg = timm.models.get_pretrained_cfg(model)
        default_size = tuple(cfg.input_size[1:]) if cfg is not None else None
        try:
            self.network = self._create(timm, model, pretrained, size, default_size, kwargs)
        except (OSError, RuntimeError, ValueError) as e:
            if not pretrained:
                raise
            raise ShiftbenchError(
                f"pretrained weights of backbone {model} could not be fetched "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). timm downloads "
                f"{weights_cache_hint(model)}; fetch that file on a machine with network access "
                "into the same cache, or pass --weights PATH (a local checkpoint), or "
                "--hparams '{\"pretrained\": false}' to train from scratch") from None
        if weights:
            load_timm_weights(self.network, weights, int(input_shape[0]))
        self.model_name = model
        self.input_shape = tuple(input_shape)
        self.n_outputs = int(self.network.num_features)
        self.dropout = nn.Dropout(float(hparams.get("resnet_dropout", 0.0)))
        self.frozen_bn = bool(hparams.get("freeze_bn", False))
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())
        if norm == "batch" and not has_bn:
            raise ShiftbenchError(f"this algorithm adapts BatchNorm layers, and backbone {model} "
                                  "has none; choose a backbone with BatchNorm (e.g. resnet50)")
        self._freeze_bn()

    @staticmethod
    def _create(timm, model: str, pretrained: bool, size: tuple[int, ...],
                default_size: tuple[int, ...] | None, kwargs: dict[str, Any]) -> nn.Module:
        if default_size is not None and size != default_size:
            try:  # models with a fixed token grid (ViT, Swin, ...) take the input size
                return timm.create_model(model, pretrained=pretrained, img_size=size, **kwargs)
            except TypeError:
                pass  # convolutional models take any size and no img_size argument
        return timm.create_model(model, pretrained=pretrained, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.network(x))

    def stages(self) -> list[nn.Module]:
        """The network cut into four consecutive stages sharing its modules (for MixStyle and
        SagNet), for the timm families laid out as a stem and four stages: ResNet-style
        (`conv1` ... `layer4`), ConvNeXt-style (`stem`, `stages`) and RegNet-style (`stem`,
        `s1` ... `s4`). Running them in order is checked once against `forward`; other models
        (ViT, ...) raise IncompatibleBackbone (a ShiftbenchError and a TypeError)."""
        n = self.network
        head = _Head(n, self.dropout)
        if all(hasattr(n, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer4")):
            stages = [nn.Sequential(n.conv1, n.bn1, n.act1, n.maxpool, n.layer1), n.layer2,
                      n.layer3, nn.Sequential(n.layer4, head)]
        elif hasattr(n, "stem") and isinstance(getattr(n, "stages", None), nn.Sequential) \
                and len(n.stages) == 4:
            norm = getattr(n, "norm_pre", nn.Identity())
            stages = [nn.Sequential(n.stem, n.stages[0]), n.stages[1], n.stages[2],
                      nn.Sequential(n.stages[3], norm, head)]
        elif all(hasattr(n, a) for a in ("stem", "s1", "s2", "s3", "s4", "final_conv")):
            stages = [nn.Sequential(n.stem, n.s1), n.s2, n.s3,
                      nn.Sequential(n.s4, n.final_conv, head)]
        else:
            raise IncompatibleBackbone(
                f"backbone {self.model_name} is not cut into stages here (ResNet-, ConvNeXt- and "
                "RegNet-style timm models are, e.g. resnet50, convnext_tiny, regnety_016); "
                "MixStyle and SagNet need one")
        if not getattr(self, "_stages_checked", False):
            self._check_stages(stages)
        return stages

    def _check_stages(self, stages: list[nn.Module]) -> None:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            x = torch.randn(2, *self.input_shape)
            y = x
            for stage in stages:
                y = stage(y)
            same = y.shape == self(x).shape and torch.allclose(y, self(x), atol=1e-4, rtol=1e-4)
        self.train(was_training)
        if not same:
            raise IncompatibleBackbone(f"backbone {self.model_name}: its stages do not reproduce "
                                       "its forward pass; MixStyle and SagNet cannot use it")
        self._stages_checked = True
