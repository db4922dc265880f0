"""Segmentation algorithms: every one trains, predicts B x K x H x W and checkpoints on tiny
label maps; mechanism tests for ClassMix, CBST thresholds, TPLD voting; the mIoU metric."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from shiftbench.algorithms import ALGORITHM_REGISTRY, create_algorithm
from shiftbench.algorithms.round_self_training import class_balanced_thresholds
from shiftbench.algorithms.seg_self_training import (
    classmix_masks,
    image_confidence,
    window_vote,
)
from shiftbench.hparams_registry import DatasetInfo
from shiftbench.seg_metrics import SegmentationScores, confusion_matrix, iou_per_class

SHAPE, K = (3, 32, 64), 4
SEG = sorted(n for n, c in ALGORITHM_REGISTRY.items() if "segmentation" in c.TASK_TYPES)


def _data(seed, bs=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((bs, *SHAPE), generator=g)
    y = torch.randint(K, (bs, *SHAPE[1:]), generator=g)
    y[:, :2] = 255
    return x, y


def _build(name, total=6):
    torch.manual_seed(0)
    ds = DatasetInfo("Tiny", SHAPE, K)
    cls = ALGORITHM_REGISTRY.get(name)
    return create_algorithm(name, SHAPE, K, 1, {"seg_width": 4, "batch_size": 4}, dataset=ds,
                            setting=cls.SETTINGS[0], total_steps=total)


def test_all_expected_algorithms_registered():
    assert set(SEG) >= {"SegSourceOnly", "AdaptSegNet", "ADVENT", "SegMinEnt", "SegDACS", "SegCBST",
                        "SegCRST", "SegCRSTLRENT", "SegTPLD", "SegGAM", "SegAdaBN", "SegBNAdapt", "SegTent"}
    for name in SEG:
        assert ALGORITHM_REGISTRY.get(name).PAPER


@pytest.mark.parametrize("shape", [SHAPE, (3, 512, 1024), (3, 32, 32)])
def test_segmentation_spaces_un_declare_nothing(shape):
    """The segmentation base declares its own hparams: no class of a segmentation algorithm
    removes (None) an hparam a base declared, and the classification base's hparams reach
    segmentation spaces only where both tasks declare them (plus three kept for records)."""
    from shiftbench.algorithms.base import Algorithm, AlgorithmBase

    ds = DatasetInfo("Tiny", shape, K)
    assert AlgorithmBase.hparam_space(ds) == {}
    shared = {"lr", "weight_decay", "batch_size", "momentum", "weights", "pretrained",
              "hue", "network_init", "input_center"}
    for name in SEG:
        cls = ALGORITHM_REGISTRY.get(name)
        assert not issubclass(cls, Algorithm), name
        assert set(cls.hparam_space(ds)) & set(Algorithm.hparam_space(ds)) <= shared, name
        declared: set[str] = set()
        for klass in reversed(cls.__mro__):
            for key, spec in vars(klass).get("HPARAMS", {}).items():
                hp = spec(ds) if callable(spec) else spec
                assert hp is not None or key not in declared, (name, klass.__name__, key)
                if hp is not None:
                    declared.add(key)


@pytest.mark.parametrize("name", SEG)
def test_train_predict_checkpoint(name):
    alg = _build(name)
    tx, _ = _data(99, 6)
    for step in range(6):
        x, y = _data(step)
        if alg.round_interval() and step % alg.round_interval() == 0:
            alg.on_round(lambda: iter([tx[:3], tx[3:]]))
        values = alg.train_step([(x, y)], [_data(50 + step)[0]] if alg.task == "uda" else None)
        assert all(isinstance(v, float) and math.isfinite(v) for v in values.values()), values
    alg.eval()
    with torch.no_grad():
        logits = alg.predict(tx)
        assert logits.shape == (6, K, *SHAPE[1:])
        assert torch.equal(logits, alg.predict(tx))
    fresh = _build(name)
    fresh.load_full_state(copy.deepcopy(alg.full_state()))
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.predict(tx), logits)
    if alg.task == "tta":
        assert alg.adapt(tx).shape == logits.shape
        alg.reset_adaptation()


def test_round_based_methods_reach_their_target_phase():
    alg = _build("SegTPLD", total=12)
    tx = _data(7, 6)[0]
    seen = {}
    for step in range(12):
        seen.update(alg.on_round(lambda: iter([tx])))
        seen.update(alg.train_step([_data(step)], [_data(30 + step)[0]]))
    assert "round_q" in seen and "labelled" in seen and "easy" in seen  # phase 1 and phase 2 ran


def test_seg_gam_adapts_from_the_first_step_whose_progress_reaches_the_fraction():
    alg = _build("SegGAM", total=9)  # pretrain_fraction 0.5: 4/9 < 0.5 <= 5/9
    phases = [alg.train_step([_data(s)], [_data(20 + s)[0]])["phase"] for s in range(6)]
    assert phases == [1.0] * 5 + [2.0]


def test_classmix_masks_hold_exactly_the_chosen_source_classes():
    y = torch.tensor([[[0, 0, 1, 1, 2, 2, 3, 255]] * 3, [[5, 5, 5, 255, 255, 7, 7, 7]] * 3])
    g = torch.Generator().manual_seed(0)
    masks, picked = classmix_masks(y, g)
    for yi, mi, chosen in zip(y, masks, picked):
        present = set(yi.unique().tolist()) - {255}
        assert len(chosen) == math.ceil(len(present) / 2)
        assert set(chosen.tolist()) <= present and 255 not in chosen.tolist()
        assert torch.equal(mi, torch.isin(yi, chosen))  # exactly the pixels of the chosen classes
        assert not mi[yi == 255].any()


def test_dacs_mixes_source_pixels_and_teacher_labels():
    alg = _build("SegDACS")
    x, y = _data(0)
    out = alg.train_step([(x, y)], [_data(1)[0]])
    assert 0 < out["mixed_source_share"] < 1 and 0 <= out["confident_fraction"] <= 1


def test_cbst_thresholds_equal_per_class_quantiles():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(5000, generator=g)
    pred = torch.randint(3, (5000,), generator=g)
    for q in (0.2, 0.5):
        lam = class_balanced_thresholds(conf, pred, 4, q)
        for c in range(3):
            values = conf[pred == c].sort(descending=True).values
            assert lam[c] == values[int(q * len(values)) - 1]  # rank floor(qN) from the top
            kept = (values >= lam[c]).float().mean()
            assert abs(kept - q) < 2 / len(values)  # the top q of the class is kept
        assert lam[3] == 1.0  # no pixel predicted as class 3


def test_cbst_round_thresholds_match_the_snapshot_quantiles():
    alg = _build("SegCRST", total=4)
    alg.num_updates.fill_(2)  # the first round starts at 50% of the budget
    tx = _data(3, 5)[0]
    alg.on_round(lambda: iter([tx]))
    with torch.no_grad():
        conf, pred = alg.scores(tx)[..., ::2, ::2].max(1)
    q = alg.portion(0)
    for c in range(K):
        values = conf[pred == c].sort(descending=True).values
        rank = int(q * len(values))
        assert alg.thresholds[c] == (values[rank - 1] if rank else 1.0)


def test_tpld_vote_fills_a_pixel_only_from_confident_pixels_in_its_window():
    norm = torch.full((1, 3, 1, 9), 0.2)
    norm[0, 1, 0, 4] = 0.9                   # centre pixel: unsure, leans to class 1
    norm[0, 2, 0, 4] = 0.8
    confident = torch.zeros(1, 1, 9, dtype=torch.bool)
    # a confident class-1 pixel just outside a 3-wide window, a confident class-2 one inside
    norm[0, 1, 0, 6], confident[0, 0, 6] = 2.0, True
    norm[0, 2, 0, 3], confident[0, 0, 3] = 1.6, True
    labels, done = window_vote(norm, confident, 3, 0.7, iters=1)
    assert done[0, 0, 4] and labels[0, 0, 4] == 2  # 0.7*0.8 + 0.3*1.6 = 1.04 >= 1
    # an unsure pixel with no confident neighbour in its window is left unlabelled
    assert not done[0, 0, 0] and not done[0, 0, 1]
    # with the class-2 voter removed, the class-1 voter outside the window does not count
    confident2 = confident.clone()
    confident2[0, 0, 3] = False
    _, done2 = window_vote(norm, confident2, 3, 0.7, iters=1)
    assert not done2[0, 0, 4]
    # a wider window reaches it
    labels3, done3 = window_vote(norm, confident2, 5, 0.7, iters=1)
    assert done3[0, 0, 4] and labels3[0, 0, 4] == 1  # 0.7*0.9 + 0.3*2.0 = 1.23
    assert torch.equal(done3 & confident2, confident2)  # confident pixels keep their labels


def test_tpld_image_confidence():
    norm = torch.zeros(1, 2, 1, 4)
    norm[0, 0, 0, :3] = torch.tensor([1.5, 0.5, 1.2])  # 3 pixels predicted 0, 2 above lambda
    norm[0, 1, 0, 3] = 0.9                               # 1 pixel predicted 1, below
    lam = torch.tensor([0.5, 0.25])
    assert torch.allclose(image_confidence(norm, lam), torch.tensor([(2 / 3 / 0.5 + 0) / 2]))


def test_miou_from_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.sum() == 5 and cm[0, 0] == 1 and cm[0, 1] == 1 and cm[2, 0] == 1
    iou = iou_per_class(cm)
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == 0
    assert torch.isnan(iou[3])  # absent from labels and predictions
    scores = SegmentationScores(4, ["road", "traffic light", "car", "bus"], entropy=True)
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 2, 1)[..., None].float() * 10
    scores.update(logits.permute(0, 1, 3, 2), target[:, None, :])
    out = scores.results(1, "in")
    assert out["env1_in_miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert out["env1_in_iou_traffic_light"] == pytest.approx(2 / 3) and "env1_in_iou_bus" not in out
    assert out["env1_in_entropy"] < 0.01
