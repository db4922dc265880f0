"""Segmentation networks: output strides and shapes, the hparam switch, the offline error."""

from __future__ import annotations

import pytest
import torch

from shiftbench.errors import ShiftbenchError
from shiftbench.seg_networks import DeepLabV2, SegNetwork, SmallEncoderDecoder


def test_small_encoder_decoder_shapes():
    net = SegNetwork((3, 32, 64), 5, {"seg_network": "small", "seg_width": 4})
    assert isinstance(net, SmallEncoderDecoder)
    out = net.forward_all(torch.rand(2, 3, 32, 64))
    assert out.logits.shape == (2, 5, 8, 16) and out.aux.shape == (2, 5, 4, 8)  # strides 4 and 8
    assert [f.shape[-1] for f in out.features] == [32, 16, 8, 16]
    assert net(torch.rand(2, 3, 32, 64)).shape == (2, 5, 32, 64)  # upsampled to the input


@pytest.mark.slow
def test_deeplabv2_is_dilated_resnet101_with_aspp():
    net = SegNetwork((3, 64, 64), 3, {"seg_network": "deeplabv2", "pretrained": False})
    assert isinstance(net, DeepLabV2)
    assert sum(len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)) == 3 + 4 + 23 + 3
    # layer3/layer4 keep stride 1 and dilate 2 and 4 in every block (tests/test_seg_official.py)
    assert net.layer3[0].conv2.stride == (1, 1) and net.layer4[0].conv2.stride == (1, 1)
    assert net.layer3[0].conv2.dilation == (2, 2) and net.layer4[0].conv2.dilation == (4, 4)
    assert [b.dilation for b in net.classifier.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    net.eval()
    with torch.no_grad():
        out = net.forward_all(torch.rand(1, 3, 64, 64))
    # output stride 8; the released nets' ceil-mode max-pool rounds 16 -> 9 up, not 8
    assert out.logits.shape == (1, 3, 9, 9) and out.aux.shape == (1, 3, 9, 9)


def test_missing_imagenet_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTBENCH_PRETRAINED_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ShiftbenchError, match=r"resnet101-63fe2227\.pth.*pretrained\": false"):
        SegNetwork((3, 64, 64), 3, {"seg_network": "deeplabv2", "pretrained": True})
    with pytest.raises(ShiftbenchError, match="unknown seg_network 'unet'"):
        SegNetwork((3, 64, 64), 3, {"seg_network": "unet"})
