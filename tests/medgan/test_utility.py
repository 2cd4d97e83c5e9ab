"""Utility study mechanics: metric definitions against scikit-learn/scipy, budget parity, arms, draws, rows.

The self-validation of the instrument (oracle, negative controls) is tests/medgan/test_utility_controls.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from medgan.config import PhantomSpec
from medgan.evaluate.stats import bootstrap_intervals, t_interval
from medgan.errors import DataError
from medgan.evaluate.utility import (
    ARMS,
    Budget,
    LabeledSet,
    arm_parts,
    classification_metrics,
    dice_per_image,
    limit_per_class,
    run_task,
    split_draws,
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


def _splits(n_train: int, seed: int = 0):
    real = _phantom_set(n_train + 20 + 60, seed=seed)
    idx = np.arange(len(real))
    return real.subset(idx[:n_train]), real.subset(idx[n_train:n_train + 20]), real.subset(idx[n_train + 20:])


def test_every_arm_gets_the_same_optimiser_steps_whatever_its_size():
    train, val, test = _splits(24)
    synth = _phantom_set(120, seed=7)
    ticks = []
    res = run_task("classification", train, val, test, [synth], num_classes=2, seeds=2, ratio=0.25,
                   budget=Budget(steps=30, batch=8, eval_every=10), bootstrap=100,
                   tick=lambda task, s: ticks.append((s["arm"], s["seed"])))
    assert list(res["arms"]) == list(ARMS) and len(ticks) == 2 * len(ARMS)
    for arm, a in res["arms"].items():
        assert [f["steps_run"] for f in a["fits"]] == [30, 30], arm
        assert [[p["step"] for p in f["curve"]] for f in a["fits"]] == [[10, 20, 30]] * 2  # learning curve
        assert a["fits"][0]["augment"] == ("aug" in arm)
        assert len(a["per_seed"]) == 2 and 0 <= a["summary"]["balanced_accuracy"]["mean"] <= 1
        wl = a["accuracy_seed_averaged"]
        assert 0 <= wl["wilson_low"] <= wl["value"] <= wl["wilson_high"] <= 1
    # the exposure each part saw: 30 steps x 8 images, a quarter from the synthetic set
    parts = res["arms"]["real+synthetic"]["fits"][0]["parts"]
    assert parts[0]["epochs"] == pytest.approx(30 * 8 * 0.75 / 24) and parts[1]["epochs"] == pytest.approx(30 * 8 * 0.25 / 120)
    assert res["arms"]["real"]["fits"][0]["parts"][0]["epochs"] == pytest.approx(30 * 8 / 24)
    assert set(res["comparisons"]) == set(ARMS) - {"real"}
    for arm, c in res["comparisons"].items():
        assert c["verdict"] in ("better", "worse", "no detectable difference")
        assert c["line"].startswith(f"{arm} vs real-only (classification): {c['verdict']}")
        assert "paired bootstrap" in c["line"] and c["auc_delong"]["test"] == "DeLong"
        assert c["p_holm"] >= c["primary"]["p"]
        lo, hi = c["primary"]["ci_low"], c["primary"]["ci_high"]
        assert -1 <= lo <= hi <= 1
    vs_aug = res["comparison_vs_aug"]
    assert vs_aug["line"].startswith("real+aug+synthetic vs real+aug (classification)")
    assert vs_aug["primary"]["diff"] == pytest.approx(
        res["comparisons"]["real+aug+synthetic"]["primary"]["diff"] - res["comparisons"]["real+aug"]["primary"]["diff"])
    rows = utility_rows(res)
    assert {(r["arm"], r["kind"]) for r in rows} == {(a, "arm") for a in ARMS} | {(a, "vs real") for a in ARMS[1:]}


def test_arms_without_a_synthetic_set_or_masks_are_skipped_and_bad_arms_refused():
    train, val, test = _splits(24, seed=1)
    res = run_task("segmentation", train, val, test, [LabeledSet(train.images, train.labels, None)],
                   num_classes=2, seeds=1, budget=Budget(steps=4, batch=8, eval_every=2), bootstrap=50)
    assert set(res["arms"]) == {"real", "real+aug", "real-duplicated"}
    assert set(res["arms_skipped"]) == {"real+synthetic", "real+aug+synthetic", "synthetic"}
    assert res["test_images_scored"] == int(test.masks.flatten(1).amax(1).sum())
    with pytest.raises(DataError, match="unknown utility arm"):
        arm_parts("real+magic", train, train, 0.5)
    with pytest.raises(DataError, match="primary endpoint"):
        run_task("segmentation", train, val, test, None, num_classes=2, seeds=1, budget=Budget(steps=2),
                 primary="balanced_accuracy")
    healthy = test.subset(np.flatnonzero(test.labels.numpy() == 0))
    with pytest.raises(DataError, match="no real test image holds a lesion"):
        run_task("segmentation", train, val, healthy, None, num_classes=2, seeds=1, budget=Budget(steps=2))


def test_should_stop_between_seeds_keeps_the_pairing():
    train, val, test = _splits(24, seed=2)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 1  # allow the first seed only

    res = run_task("classification", train, val, test, None, num_classes=2, seeds=3, arms=("real", "real+aug"),
                   budget=Budget(steps=4, batch=8, eval_every=2), bootstrap=50, should_stop=stop)
    assert res["stopped"] and res["seeds_completed"] == 1
    assert [len(a["per_seed"]) for a in res["arms"].values()] == [1, 1]
    # one seed samples no training randomness: no verdict, whatever the bootstrap over test images says
    assert res["comparisons"]["real+aug"]["verdict"] == "not judged (one seed)"


@pytest.mark.parametrize("draws", [1, 2, 3, 5])
def test_synthetic_draws_are_disjoint_stratified_and_cover_the_set(draws):
    synth = _phantom_set(60, seed=3)
    parts = split_draws(synth, draws, seed=0)
    assert len(parts) == draws and sum(len(p) for p in parts) == 60
    flat = torch.cat([p.images.flatten(1) for p in parts])
    assert torch.unique(flat, dim=0).shape[0] == 60  # no image in two draws
    for p in parts:
        counts = p.class_counts()
        assert abs(counts.get(0, 0) - counts.get(1, 0)) <= 1
    with pytest.raises(DataError, match="too few"):
        split_draws(synth.subset(np.arange(5)), 4)


def test_early_stopping_on_the_real_validation_split_is_reported_per_arm():
    train, val, test = _splits(24, seed=4)
    budget = Budget(steps=400, batch=8, eval_every=10, select="best", patience=2)
    res = run_task("classification", train, val, test, None, num_classes=2, seeds=2, arms=("real", "real+aug"),
                   budget=budget, bootstrap=50)
    assert "lowest validation loss" in res["budget"]["rule"] and "early stop after 2" in res["budget"]["rule"]
    for a in res["arms"].values():
        for f in a["fits"]:
            steps = [p["step"] for p in f["curve"]]
            losses = [p["val_loss"] for p in f["curve"]]
            assert f["selected_step"] in steps and f["steps_run"] == steps[-1]
            assert losses[steps.index(f["selected_step"])] == min(losses)  # the weights kept are the best
            if f["stopped_early"]:
                assert f["steps_run"] < 400 and steps.index(f["selected_step"]) == len(steps) - 3
