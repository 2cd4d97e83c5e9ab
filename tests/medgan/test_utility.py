"""Utility evaluation: metric definitions against scikit-learn/scipy, and tiny end-to-end runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from medgan.config import PhantomSpec
from medgan.evaluate.stats import bootstrap_intervals, t_interval
from medgan.evaluate.utility import (
    LabeledSet,
    classification_metrics,
    dice_per_image,
    limit_per_class,
    run_classification,
    run_segmentation,
    stratified_split,
    utility_rows,
)
from medgan.phantom import make_phantom


pytestmark = pytest.mark.usefixtures("one_thread")


def _phantom_set(count: int, seed: int, size: int = 32) -> LabeledSet:
    x, y, m = make_phantom(PhantomSpec(count=count, size=size, seed=seed))
    return LabeledSet(torch.from_numpy(x)[:, None] * 2 - 1, torch.from_numpy(y), torch.from_numpy(m)[:, None].float())


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p1 = np.clip(0.3 * y + rng.random(60) * 0.7, 0, 1)
    proba = np.stack([1 - p1, p1], 1)
    m = classification_metrics(y, proba)
    pred = proba.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p1))
    tn = ((pred == 0) & (y == 0)).sum()
    assert m["specificity_1"] == pytest.approx(tn / (y == 0).sum())
    assert m["sensitivity_1"] == pytest.approx(((pred == 1) & (y == 1)).sum() / (y == 1).sum())


def test_multiclass_auc_is_macro_ovr_and_ties_handled():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 20)
    logits = rng.normal(size=(60, 3)) + np.eye(3)[y] * 1.0
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    proba = np.round(proba, 1)  # create ties
    proba = proba / proba.sum(1, keepdims=True)
    assert classification_metrics(y, proba)["auc"] == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_t_interval_matches_scipy_and_bootstrap_brackets():
    vals = [0.71, 0.75, 0.69, 0.8]
    s = t_interval(vals)
    lo, hi = sps.t.interval(0.95, df=3, loc=np.mean(vals), scale=sps.sem(vals))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi))
    assert t_interval([0.5])["ci_low"] is None and t_interval([])["mean"] is None
    data = np.random.default_rng(2).normal(1.0, 1.0, 400)
    b = bootstrap_intervals(lambda idx: {"m": data[idx].mean()}, len(data), 400, seed=0)["m"]
    assert b["boot_low"] < data.mean() < b["boot_high"]
    assert b["boot_high"] - b["boot_low"] == pytest.approx(2 * 1.96 * data.std() / 20, rel=0.25)


def test_split_and_limit_are_stratified():
    labels = np.array([0] * 30 + [1] * 10)
    tr, te = stratified_split(labels, 0.3, seed=0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 40
    assert (labels[te] == 0).sum() == 9 and (labels[te] == 1).sum() == 3
    keep = limit_per_class(labels, 4, seed=0)
    assert np.bincount(labels[keep]).tolist() == [4, 4]


def test_dice_per_image():
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2], b[0, :1] = True, True  # 8 vs 4 pixels, overlap 4 -> 8/12
    a[1, 0, 0] = True  # prediction on an empty truth -> 0
    assert dice_per_image(a, b).tolist() == pytest.approx([8 / 12, 0.0, 1.0])


def test_classification_end_to_end_with_intervals_over_three_seeds():
    real = _phantom_set(96, seed=0)
    synth = _phantom_set(48, seed=9)
    tr, te = stratified_split(real.labels.numpy(), 0.3, 0)
    ticks = []
    res = run_classification(real.subset(tr), real.subset(te), synth, 2, seeds=3, epochs=4,
                             bootstrap=100, tick=lambda phase, s: ticks.append((phase, s["condition"])))
    assert res["seeds_completed"] == 3 and len(ticks) == 9
    assert set(res["conditions"]) == {"real", "real+synthetic", "synthetic"}
    assert res["train_images"] == {"real": len(tr), "real+synthetic": len(tr) + 48, "synthetic": 48}
    for cond, ms in res["conditions"].items():
        for name in ("accuracy", "balanced_accuracy", "auc", "sensitivity_1", "specificity_1"):
            s = ms[name]
            assert s["n"] == 3 and 0.0 <= s["mean"] <= 1.0
            assert s["ci_low"] <= s["mean"] <= s["ci_high"]
            assert s["boot_low"] <= s["boot_high"]
        assert len(res["per_seed"][cond]) == 3
    # lesions are visible: the real-only classifier is better than chance
    assert res["conditions"]["real"]["auc"]["mean"] > 0.6
    d = res["delta"]["real+synthetic - real"]["accuracy"]
    assert d["n"] == 3 and d["mean"] == pytest.approx(
        np.mean([a["accuracy"] - b["accuracy"] for a, b in zip(res["per_seed"]["real+synthetic"], res["per_seed"]["real"])]))
    rows = utility_rows(res)
    assert {r["condition"] for r in rows} >= {"real", "synthetic", "real+synthetic - real"}


def test_should_stop_between_seeds_and_segmentation():
    real = _phantom_set(64, seed=1)
    tr, te = stratified_split(real.labels.numpy(), 0.3, 0)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 1  # allow the first seed only

    res = run_classification(real.subset(tr), real.subset(te), None, 2, seeds=3, epochs=1,
                             bootstrap=0, should_stop=stop)
    assert res["stopped"] and res["seeds_completed"] == 1 and set(res["conditions"]) == {"real"}
    seg = run_segmentation(real.subset(tr), real.subset(te), _phantom_set(16, seed=4), seeds=3, epochs=2, bootstrap=20)
    assert set(seg["conditions"]) == {"real", "real+synthetic"} and seg["seeds_completed"] == 3
    dice = seg["conditions"]["real"]["dice"]
    assert dice["n"] == 3 and 0.0 <= dice["mean"] <= 1.0 and dice["ci_low"] <= dice["ci_high"]
