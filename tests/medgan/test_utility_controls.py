"""The utility study validates itself: tests that fail if the instrument rewards steps instead of information.

On the 32 px phantom at a small CPU budget, with real-only as the baseline and every arm at the same
optimiser steps (half of each mixed batch from the added set):
- oracle: extra REAL phantom images (indices no other split uses) as the "synthetic" set must give a
  significant gain at low n, for the classifier and for the segmenter;
- negative controls must never give a significant gain: noise images, real images with shuffled labels
  (classifier), lesion images whose masks are all empty, noise with masks that mark no lesion (segmenter);
- real-duplicated (the same real images as the added part: same steps, no new information) must be
  indistinguishable from real-only.
The old epochs-based protocol failed the empty-mask control (+0.44 Dice, issue 11); these tests are its guard.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgan.config import PhantomSpec
from medgan.evaluate.sets import LabeledSet
from medgan.evaluate.utility import Budget, run_task
from medgan.phantom import make_phantom

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = 3


def _phantom() -> LabeledSet:
    x, y, m = make_phantom(PhantomSpec(count=800, size=32, seed=0))
    return LabeledSet(torch.from_numpy(x)[:, None] * 2 - 1, torch.from_numpy(y), torch.from_numpy(m)[:, None].float())


@pytest.fixture(scope="module")
def data():
    s = _phantom()
    return {"all": s, "val": s.subset(np.arange(100, 120)), "test": s.subset(np.arange(400, 600)),
            "extra": s.subset(np.arange(600, 800))}


def _show(res: dict) -> dict:
    """The verdict lines, for `pytest -s` (the figures quoted in README.md come from this print)."""
    base = res["arms"]["real"]["summary"][res["primary_endpoint"]]["mean"]
    print(f"\n{res['task']}: real-only {res['primary_endpoint']} {base:.3f}")
    for c in res["comparisons"].values():
        print(c["line"])
    return res


def _controls(train: LabeledSet, extra: LabeledSet, seg: bool) -> dict[str, list[tuple[LabeledSet, float]]]:
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(extra.images.shape, generator=g) * 2 - 1
    out = {"oracle": [(train, 0.5), (extra, 0.5)]}
    if seg:
        lesion = extra.subset(np.flatnonzero(extra.labels.numpy() == 1))
        out["empty masks"] = [(train, 0.5), (LabeledSet(lesion.images, lesion.labels, torch.zeros_like(lesion.masks)), 0.5)]
        out["noise"] = [(train, 0.5), (LabeledSet(noise, extra.labels, torch.zeros_like(extra.masks)), 0.5)]
    else:
        shuffled = extra.labels[torch.randperm(len(extra), generator=g)]
        out["shuffled labels"] = [(train, 0.5), (LabeledSet(extra.images, shuffled, extra.masks), 0.5)]
        out["noise"] = [(train, 0.5), (LabeledSet(noise, extra.labels, extra.masks), 0.5)]
    return out


@pytest.fixture(scope="module")
def classification(data):
    torch.set_num_threads(1)
    train = data["all"].subset(np.arange(20))  # 10 real images per class: the low-data regime
    return _show(run_task("classification", train, data["val"], data["test"], None, num_classes=2, seeds=SEEDS,
                          budget=Budget(steps=300, batch=32, eval_every=100), arms=("real", "real-duplicated"),
                          custom=_controls(train, data["extra"], seg=False), bootstrap=1000))


@pytest.fixture(scope="module")
def segmentation(data):
    torch.set_num_threads(1)
    train = data["all"].subset(np.arange(40))  # 20 per class: the segmenter needs a few lesions to start
    return _show(run_task("segmentation", train, data["val"], data["test"], None, num_classes=2, seeds=SEEDS,
                          budget=Budget(steps=400, batch=16, eval_every=100), arms=("real", "real-duplicated"),
                          custom=_controls(train, data["extra"], seg=True), bootstrap=1000))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_oracle_more_real_images_is_a_significant_gain(task, request):
    res = request.getfixturevalue(task)
    c = res["comparisons"]["oracle"]
    assert c["verdict"] == "better", c["line"]
    assert c["primary"]["ci_low"] > 0 and c["p_holm"] < 0.05
    # the baseline is off the floor and the ceiling, so a gain or a loss could both show
    base = res["arms"]["real"]["summary"][res["primary_endpoint"]]["mean"]
    assert (0.55 if task == "classification" else 0.05) < base < 0.9


@pytest.mark.parametrize("task,control", [("classification", "noise"), ("classification", "shuffled labels"),
                                          ("segmentation", "noise"), ("segmentation", "empty masks")])
def test_negative_controls_never_gain(task, control, request):
    res = request.getfixturevalue(task)
    c = res["comparisons"][control]
    assert c["verdict"] != "better", c["line"]
    assert c["primary"]["ci_low"] < 0.02  # not even a borderline gain
    assert c["primary"]["diff"] < res["comparisons"]["oracle"]["primary"]["ci_low"]


def test_empty_masks_are_a_loss_for_the_segmenter(segmentation):
    # the decisive control of issue 11: masks that say "no lesion" on lesion images teach the opposite
    c = segmentation["comparisons"]["empty masks"]
    assert c["primary"]["diff"] < 0 and c["primary"]["ci_high"] < 0.02, c["line"]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_real_duplicated_is_indistinguishable_from_real_only(task, request):
    res = request.getfixturevalue(task)
    c = res["comparisons"]["real-duplicated"]
    assert c["verdict"] == "no detectable difference", c["line"]
    assert c["primary"]["ci_low"] < 0 < c["primary"]["ci_high"]
    assert abs(c["primary"]["diff"]) < 0.05
    # same budget: every arm ran the same number of steps
    steps = {f["steps_run"] for a in res["arms"].values() for f in a["fits"]}
    assert len(steps) == 1
