"""The segmentation methods behave as their released code does (issue 23): DACS's train-mode
teacher and its per-iteration strong augmentation with hue, CRST's MRKLD normaliser, ADVENT's
self-information map, MinEnt on upsampled predictions, DeepLab-v2's dilations and frozen BN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shiftbench.algorithms import ALGORITHM_REGISTRY, create_algorithm
from shiftbench.algorithms.seg_adversarial import self_information
from shiftbench.algorithms.seg_augment import (
    color_jitter,
    dacs_augment,
    draw_strong_params,
    kernel_size,
    shift_hue,
)
from shiftbench.hparams_registry import DatasetInfo
from shiftbench.seg_networks import upsample

SHAPE, K = (3, 32, 64), 4


def _data(seed, bs=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((bs, *SHAPE), generator=g)
    y = torch.randint(K, (bs, *SHAPE[1:]), generator=g)
    return x, y


def _build(name, total=6, **hparams):
    torch.manual_seed(0)
    cls = ALGORITHM_REGISTRY.get(name)
    return create_algorithm(name, SHAPE, K, 1, {"seg_width": 4, "batch_size": 4, **hparams},
                            dataset=DatasetInfo("Tiny", SHAPE, K), setting=cls.SETTINGS[0],
                            total_steps=total)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dacs_teacher_batchnorm_mode(mode):
    alg = _build("SegDACS") if mode == "train" else _build("SegDACS", dacs_teacher_bn="eval")
    assert alg.hparams["dacs_teacher_bn"] == mode
    seen = []
    bns = [m for m in alg.teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    bns[0].register_forward_hook(lambda m, i, o: seen.append(
        (m.training, i[0].detach().clone(), o.detach().clone(), m.weight.clone(), m.bias.clone())))
    xt = _data(1)[0]
    alg.train_step([_data(0)], [xt])
    (training, inp, out, w, b), = seen
    assert training is (mode == "train")
    # train mode: the target batch's own statistics normalise (per channel mean 0, var 1 before
    # the affine), not the running statistics copied from the student
    mean = inp.mean((0, 2, 3), keepdim=True)
    var = inp.var((0, 2, 3), unbiased=False, keepdim=True)
    w, b = w.view(1, -1, 1, 1), b.view(1, -1, 1, 1)
    batch_stats = (inp - mean) / torch.sqrt(var + bns[0].eps) * w + b
    assert torch.allclose(out, batch_stats, atol=1e-4) is (mode == "train")


def test_dacs_refuses_source_and_target_of_different_sizes():
    from shiftbench.errors import ShiftbenchError

    alg = _build("SegDACS")
    xs, ys = _data(0)
    with pytest.raises(ShiftbenchError, match=r"differ in size .*crop_size"):
        alg.train_step([(xs, ys)], [torch.rand(4, 3, 16, 32)])


def test_dacs_strong_augmentation_is_decided_once_per_iteration():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 32, generator=g)
    jittered = blurred = 0
    for _ in range(200):
        p = draw_strong_params(6, 0.25, g)
        assert isinstance(p.jitter, bool) and isinstance(p.blur, bool)  # one draw for the batch
        jittered += p.jitter
        blurred += p.blur
        assert (p.factors[:, :3] >= 0.75).all() and (p.factors[:, :3] <= 1.25).all()
        assert (p.factors[:, 3].abs() <= 0.25).all() and (p.sigma >= 0.15).all() and (p.sigma <= 1.15).all()
        out = dacs_augment(x, p)
        changed = (out - x).flatten(1).abs().amax(1) > 1e-4
        if not (p.jitter or p.blur):
            assert torch.equal(out, x)
        elif p.jitter:
            assert changed.all()  # every image of the batch
        else:
            assert changed[p.sigma > 0.5].all()  # (a tiny sigma hardly blurs)
    assert 140 < jittered < 180 and 75 < blurred < 125  # p = 0.8 and 0.5
    assert kernel_size(512) == 51 and kernel_size(1024) == 103 and kernel_size(64) == 7


def test_dacs_hue_jitter_rotates_the_hue_circle():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    green = shift_hue(red, torch.tensor([1 / 3]))
    assert torch.allclose(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(shift_hue(x, torch.zeros(3)), x, atol=1e-5)
    back = shift_hue(shift_hue(x, torch.full((3,), 0.2)), torch.full((3,), -0.2))
    assert torch.allclose(back, x, atol=1e-4)
    identity = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(3, 1)
    assert torch.allclose(color_jitter(x, identity), x, atol=1e-5)
    hue_only = identity.clone()
    hue_only[:, 3] = 0.25
    assert not torch.allclose(color_jitter(x, hue_only), x, atol=1e-3)


def test_crst_mrkld_is_normalised_by_the_selected_target_pixels():
    for scale, a in (("released", 0.01), ("paper", 0.1)):
        alg = _build("SegCRST", crst_mrkld_scale=scale)
        alg.thresholds.fill_(0.5)
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(2, K, 4, 4, generator=g)
        probs = torch.full((2, K, 4, 4), 0.1)
        probs[0, 1, :2] = 0.7  # 8 pixels of image 0 pass p/lambda >= 1, class 1
        ce_sum, count, extra, _, _ = alg.target_loss(logits, probs, None)
        log_p = F.log_softmax(logits, 1)
        assert int(count) == 8
        assert torch.isclose(ce_sum, -log_p[0, 1, :2].sum())
        expected = a * (-log_p[0, :, :2].mean(0)).sum() / 8  # mean over the 8 target pixels
        assert torch.isclose(extra, expected)


def test_advent_feeds_the_normalised_self_information_map():
    logits = torch.randn(2, 5, 3, 3)
    p = logits.softmax(1)
    assert torch.allclose(self_information(logits), -p * torch.log2(p) / math.log2(5), atol=1e-6)
    alg = _build("ADVENT")
    assert torch.allclose(alg.disc_input(logits), self_information(logits))
    # entropy of a uniform prediction is 1 per pixel after the 1/log2 K normalisation
    assert torch.allclose(self_information(torch.zeros(1, 5, 2, 2)).sum(1), torch.ones(1, 2, 2))


def test_minent_minimises_the_entropy_of_upsampled_predictions(monkeypatch):
    alg = _build("SegMinEnt")
    xs, ys = _data(0)
    xt = _data(1)[0]
    outputs = []
    original = alg.network.forward_all
    monkeypatch.setattr(alg.network, "forward_all", lambda x: outputs.append(original(x)) or outputs[-1])
    out = alg.train_step([(xs, ys)], [xt])
    low = outputs[1].logits.detach()
    up = upsample(low, SHAPE[1:]).float()
    p = up.softmax(1)
    expected = -(p * p.log()).sum(1).mean() / math.log(K)
    assert out["entropy"] == pytest.approx(float(expected), rel=1e-4)
    low_res = -(low.softmax(1) * low.log_softmax(1)).sum(1).mean() / math.log(K)
    assert abs(float(low_res) - float(expected)) > 1e-6  # the two differ: the test can fail


@pytest.mark.slow
def test_deeplabv2_dilates_every_block_and_freezes_bn_affine():
    from shiftbench.seg_networks import SegNetwork

    net = SegNetwork((3, 65, 65), 3, {"seg_network": "deeplabv2", "pretrained": False})
    for layer, d in ((net.layer3, 2), (net.layer4, 4)):
        for block in layer:  # the official nets: every block, the first one included
            assert block.conv2.dilation == (d, d) and block.conv2.padding == (d, d)
            assert block.conv2.stride == (1, 1) and block.conv1.stride == (1, 1)
    for block in (*net.layer1, *net.layer2):
        assert block.conv2.dilation == (1, 1)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 3 * (3 + 4 + 23 + 3) + 4  # stem, 3 per bottleneck, 4 downsamples
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    assert all(p.requires_grad for p in net.classifier.parameters())
    assert net.stem[3].ceil_mode
    net.train()
    before = bns[0].running_mean.clone()
    net.forward_all(torch.rand(2, 3, 65, 65))
    assert not torch.equal(before, bns[0].running_mean)  # still train-mode statistics


def test_released_deeplab_weights_are_mapped_and_switch_to_caffe_input(tmp_path):
    from shiftbench.errors import ShiftbenchError
    from shiftbench.seg_networks import load_deeplab_weights

    class Tiny(nn.Module):  # our DeepLab-v2's key layout in miniature
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 1))
            self.classifier = nn.Module()
            self.classifier.branches = nn.ModuleList([nn.Conv2d(4, 19, 3)])

    torch.save({"conv1.weight": torch.full((4, 3, 3, 3), 0.25)}, tmp_path / "coco.pth")
    assert load_deeplab_weights(Tiny(), str(tmp_path / "coco.pth")) is True  # resnet101COCO's keys
    released = {"Scale.conv1.weight": torch.full((4, 3, 3, 3), 0.5),
                "Scale.bn1.running_mean": torch.full((4,), 2.0),
                "Scale.layer1.0.weight": torch.full((4, 4, 1, 1), 3.0),
                "Scale.layer5.conv2d_list.0.weight": torch.zeros(21, 4, 3, 3)}  # COCO: 21 classes
    torch.save(released, tmp_path / "coco.pth")
    net = Tiny()
    head = net.classifier.branches[0].weight.clone()
    assert load_deeplab_weights(net, str(tmp_path / "coco.pth")) is True
    assert (net.stem[0].weight == 0.5).all() and (net.stem[1].running_mean == 2).all()
    assert (net.layer1[0].weight == 3).all() and torch.equal(net.classifier.branches[0].weight, head)
    torch.save({"conv1.weight": torch.ones(4, 3, 3, 3), "fc.weight": torch.ones(2, 4)},
               tmp_path / "imagenet.pth")
    assert load_deeplab_weights(net, str(tmp_path / "imagenet.pth")) is False
    assert (net.stem[0].weight == 1).all()
    torch.save({"fc.weight": torch.ones(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ShiftbenchError, match="no tensor matches"):
        load_deeplab_weights(net, str(tmp_path / "other.pth"))
    with pytest.raises(ShiftbenchError, match="no such file"):
        load_deeplab_weights(net, str(tmp_path / "missing.pth"))
