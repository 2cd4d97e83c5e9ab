"""Sanity gates: real held-out images pass every gate; each kind of broken synthetic set fails its gate."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from medgan.config import PhantomSpec
from medgan.errors import DataError
from medgan.evaluate import sanity
from medgan.evaluate.sets import LabeledSet
from medgan.phantom import make_phantom

pytestmark = pytest.mark.usefixtures("one_thread")


def _phantom(count: int, seed: int = 0, start: int = 0) -> LabeledSet:
    x, y, m = make_phantom(PhantomSpec(count=start + count, size=32, seed=seed))
    x, y, m = x[start:], y[start:], m[start:]
    return LabeledSet(torch.from_numpy(x)[:, None] * 2 - 1, torch.from_numpy(y), torch.from_numpy(m)[:, None].float())


@pytest.fixture(scope="module")
def judges():
    torch.set_num_threads(1)
    train = _phantom(160)  # the "GAN training set"
    return sanity.train_judges(train.images, train.labels, train.masks, steps=300, seed=0)


@pytest.fixture(scope="module")
def fresh():
    return _phantom(200, start=400)  # real images of indices the judges never saw


def _gate(result: dict, name: str) -> dict:
    return next(g for g in result["gates"] if g["name"] == name)


def test_fresh_real_images_pass_every_gate(judges, fresh):
    t0 = time.perf_counter()
    r = sanity.check(judges, fresh.images, fresh.labels, fresh.masks)
    elapsed = time.perf_counter() - t0
    assert r["passed"], sanity.summary_line(r)
    assert {g["name"] for g in r["gates"]} == {"empty_masks", "mask_contrast", "mask_dice", "conditioning",
                                              "diversity", "fidelity", "memorisation"}
    assert all(g["passed"] is True for g in r["gates"]), sanity.summary_line(r)
    assert elapsed < 20  # generous on a loaded 2-core machine; about 0.3 s when quiet
    assert "FAIL" not in sanity.summary_line(r)


def test_empty_masks_fail_the_mask_gates(judges, fresh):
    r = sanity.check(judges, fresh.images, fresh.labels, torch.zeros_like(fresh.masks))
    assert _gate(r, "empty_masks")["passed"] is False
    assert _gate(r, "empty_masks")["value"] == 1.0
    assert "empty_masks" in r["failed"] and not r["passed"]


def test_masks_away_from_the_lesions_fail_agreement(judges, fresh):
    moved = torch.roll(fresh.masks, shifts=(11, 13), dims=(2, 3))  # same shapes, wrong place
    r = sanity.check(judges, fresh.images, fresh.labels, moved)
    assert _gate(r, "empty_masks")["passed"] is True
    assert _gate(r, "mask_dice")["passed"] is False
    assert _gate(r, "mask_contrast")["passed"] is False


def test_swapped_labels_fail_conditioning(judges, fresh):
    r = sanity.check(judges, fresh.images, 1 - fresh.labels, fresh.masks.flip(0))
    assert _gate(r, "conditioning")["passed"] is False
    assert _gate(r, "conditioning")["worst_ratio"] < 0.6


def test_mode_collapse_fails_diversity(judges, fresh):
    idx = torch.tensor([int(torch.nonzero(fresh.labels == c)[0, 0]) for c in fresh.labels.tolist()])
    collapsed = fresh.subset(idx)  # every sample of a class is the same image
    noise = 0.01 * torch.randn(collapsed.images.shape, generator=torch.Generator().manual_seed(0))
    r = sanity.check(judges, (collapsed.images + noise).clamp(-1, 1), collapsed.labels, collapsed.masks)
    assert _gate(r, "diversity")["passed"] is False
    assert _gate(r, "diversity")["worst_ratio"] < 0.2


def test_copies_of_training_images_fail_memorisation(judges):
    copies = _phantom(160)
    noise = 0.01 * torch.randn(copies.images.shape, generator=torch.Generator().manual_seed(1))
    r = sanity.check(judges, (copies.images + noise).clamp(-1, 1), copies.labels, copies.masks)
    g = _gate(r, "memorisation")
    assert g["passed"] is False and g["near_copy_share"] > 0.9 and g["ratio"] < 0.3


def test_noise_images_fail(judges, fresh):
    noise = torch.rand(fresh.images.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    r = sanity.check(judges, noise, fresh.labels, fresh.masks)
    assert not r["passed"]
    assert _gate(r, "mask_contrast")["passed"] is False or _gate(r, "mask_dice")["passed"] is False
    assert _gate(r, "fidelity")["passed"] is False
    assert _gate(r, "diversity")["passed"] is False  # coverage: noise lands in no real image's neighbourhood


def test_gan_style_mask_channel_and_bad_inputs(judges, fresh):
    # a GAN's mask channel in [-1, 1] is accepted once thresholded; wrong shapes and labels are one clear error
    mask_channel = fresh.masks * 2 - 1
    r = sanity.check(judges, fresh.images, fresh.labels, (mask_channel > 0).float())
    assert _gate(r, "empty_masks")["passed"] is True
    with pytest.raises(DataError, match="labels outside"):
        sanity.check(judges, fresh.images, fresh.labels + 5)
    with pytest.raises(DataError, match="masks must be"):
        sanity.check(judges, fresh.images, fresh.labels, fresh.masks[:, :, :16])
    with pytest.raises(DataError, match="non-finite"):
        sanity.check(judges, fresh.images * float("nan"), fresh.labels)


def test_without_masks_the_mask_gates_say_so(judges, fresh):
    r = sanity.check(judges, fresh.images, fresh.labels, None)
    g = _gate(r, "empty_masks")
    assert g["passed"] is None and "no masks" in g["rule"]
    assert r["passed"]  # an unmeasurable gate fails nothing; the report shows it as not applicable


def test_probe_functions_on_known_inputs():
    img = -torch.ones(2, 1, 16, 16)
    m = torch.zeros(2, 1, 16, 16)
    m[:, :, 6:10, 6:10] = 1
    img[0, :, 6:10, 6:10] = 0.5  # a bright lesion exactly under the mask
    c = sanity.mask_contrast(img, m)
    assert c[0] == pytest.approx(1.5) and c[1] == pytest.approx(0.0)
    e = sanity.empty_mask_share(torch.cat([m[:1], torch.zeros(1, 1, 16, 16)]), torch.tensor([1, 1]), [1])
    assert e == {"share": 0.5, "empty": 1, "n": 2}
    pool = np.zeros((5, 3))
    pool[:, 0] = np.arange(5)
    mem = sanity.memorisation(pool[:2] + 1e-6, pool, np.full(10, 1.0))
    assert mem["near_copy_share"] == 1.0 and mem["ratio"] < 1e-3
