"""Segmentation tables: selection on mIoU under each rule, the mIoU table and the per-class IoU
table (one column per class, mIoU last)."""

from __future__ import annotations

import pytest

from shiftbench.results.seg_tables import selection_view
from shiftbench.results.tables import collect


def _record(alg, trial, step, src_val, tgt_in, road, car, hseed=0, uda_entropy=1.0):
    return {"args": {"dataset": "SyntheticStreets", "algorithm": alg, "task": "uda", "test_envs": [1],
                     "source_envs": [0], "trial_seed": trial, "hparams_seed": hseed, "seed": 0,
                     "output_dir": f"/x/{alg}{trial}{hseed}"},
            "hparams": {}, "step": step, "environments": ["game", "real", "virtual"],
            "env0_out_miou": src_val, "env2_out_miou": 0.1, "env1_in_miou": tgt_in,
            "env1_out_miou": tgt_in + 0.01, "env1_uda_miou": tgt_in,
            "env1_in_iou_road": road, "env1_in_iou_car": car,
            "env1_uda_entropy": uda_entropy, "env1_uda_marginal_entropy": 2.0}


RECORDS = [
    # trial 0: the iid rule must pick step 300 (higher source mIoU) although step 600 is better on target
    _record("SegDACS", 0, 300, 0.70, 0.40, 0.80, 0.20, uda_entropy=0.5),
    _record("SegDACS", 0, 600, 0.60, 0.50, 0.90, 0.30, uda_entropy=0.9),
    _record("SegDACS", 1, 600, 0.65, 0.44, 0.84, 0.24),
    _record("SegSourceOnly", 0, 600, 0.70, 0.30, 0.70, 0.10),
    _record("SegSourceOnly", 1, 600, 0.70, 0.34, 0.74, 0.14),
]


def test_view_presents_miou_as_accuracy():
    view = selection_view(RECORDS[0])
    assert view["env1_in_acc"] == 0.40 and view["env0_out_acc"] == 0.70
    assert view["env1_in_iou_road"] == 0.80


def test_miou_and_per_class_tables_under_every_rule():
    tables = collect(RECORDS, baseline=None).tables
    miou = {t.rule: t for t in tables if t.kind == "seg_miou"}
    iou = {t.rule: t for t in tables if t.kind == "seg_iou"}
    assert {"iid", "oracle", "entropy"} <= set(miou) and set(miou) == set(iou)
    t = miou["iid"]
    assert t.columns == ["game→real", "Avg"]
    dacs = t.row("SegDACS")["game→real"]
    assert dacs.mean == pytest.approx(100 * (0.40 + 0.44) / 2) and dacs.n == 2
    assert miou["oracle"].row("SegDACS")["game→real"].mean == pytest.approx(100 * (0.50 + 0.44) / 2)
    # the entropy rule picks the lowest target entropy: step 300 in trial 0
    assert miou["entropy"].row("SegDACS")["game→real"].mean == pytest.approx(100 * (0.40 + 0.44) / 2)
    table = iou["iid"]
    assert table.columns == ["road", "car", "mIoU"]  # dataset class order, mIoU last
    assert table.row("SegDACS")["road"].mean == pytest.approx(100 * (0.80 + 0.84) / 2)
    assert table.row("SegSourceOnly")["mIoU"].mean == pytest.approx(100 * (0.30 + 0.34) / 2)


def test_classification_records_get_no_segmentation_tables():
    rec = {"args": {"dataset": "Digits", "algorithm": "ERM", "task": "dg", "test_envs": [1],
                    "trial_seed": 0, "hparams_seed": 0, "seed": 0}, "hparams": {}, "step": 1,
           "env0_out_acc": 0.9, "env1_in_acc": 0.5, "env1_out_acc": 0.5}
    assert not [t for t in collect([rec], baseline=None).tables if t.kind.startswith("seg_")]


def test_headline_prints_the_segmentation_tables_not_empty_accuracy_rows():
    from shiftbench.results.headline import render_headline

    text = render_headline(collect(RECORDS, baseline=None))
    assert "SyntheticStreets (uda) mIoU" in text and "per-class IoU" in text
    assert "No setting has results" not in text
    assert "Unsupervised domain adaptation (uda)" not in text  # no accuracy leaderboard of '-'
