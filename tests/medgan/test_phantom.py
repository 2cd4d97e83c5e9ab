"""The procedural phantom: determinism, prefix property, classes, masks, folder export."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medgan.config import PhantomSpec
from medgan.data import load_dataset
from medgan.phantom import make_phantom, phantom_image, write_phantom_folder


def test_shapes_ranges_and_determinism():
    spec = PhantomSpec(count=12, size=32, seed=5)
    images, labels, masks = make_phantom(spec)
    assert images.shape == (12, 32, 32) and images.dtype == np.float32
    assert labels.shape == (12,) and labels.dtype == np.int64
    assert masks.shape == (12, 32, 32) and masks.dtype == np.uint8
    assert images.min() >= 0.0 and images.max() <= 1.0
    again = make_phantom(spec)
    assert np.array_equal(images, again[0]) and np.array_equal(masks, again[2])
    other = make_phantom(PhantomSpec(count=12, size=32, seed=6))[0]
    assert np.abs(images - other).mean() > 0.01  # a different seed gives different anatomy


def test_any_count_is_a_prefix_of_a_bigger_one():
    small = make_phantom(PhantomSpec(count=5, size=24, seed=1))
    big = make_phantom(PhantomSpec(count=9, size=24, seed=1))
    for a, b in zip(small, big):
        assert np.array_equal(a, b[:5])
    image, label, mask = phantom_image(PhantomSpec(count=9, size=24, seed=1), 7)
    assert np.array_equal(image, big[0][7]) and label == big[1][7] and np.array_equal(mask, big[2][7])


def test_lesion_fraction_and_masks():
    spec = PhantomSpec(count=40, size=48, seed=2, lesion_fraction=0.25)
    images, labels, masks = make_phantom(spec)
    assert labels.sum() == 10  # exact fraction, not a random draw
    assert all(masks[k].sum() == 0 for k in np.flatnonzero(labels == 0))
    assert all(masks[k].sum() > 0 for k in np.flatnonzero(labels == 1))
    # every lesion differs visibly from its surroundings (a ring 2 px outside the mask)
    contrasts = []
    for k in np.flatnonzero(labels == 1):
        m = masks[k].astype(bool)
        ring = ndimage.binary_dilation(m, iterations=3) & ~ndimage.binary_dilation(m, iterations=1)
        contrasts.append(abs(images[k][m].mean() - images[k][ring].mean()))
    assert np.median(contrasts) > 0.1
    # images vary: per-image std of the whole set is not tiny
    assert images.reshape(40, -1).mean(1).std() > 0.005


def test_size_changes_resolution_not_anatomy():
    spec = PhantomSpec(count=4, seed=4)
    lo = make_phantom(spec, size=32)[0]
    hi = make_phantom(spec, size=64)[0]
    down = hi.reshape(4, 32, 2, 32, 2).mean(axis=(2, 4))
    assert np.abs(down - lo).mean() < 0.05


def test_write_phantom_folder_reads_back(tmp_path):
    spec = PhantomSpec(count=6, size=32, seed=3)
    write_phantom_folder(spec, tmp_path)
    assert (tmp_path / "labels.csv").is_file()
    assert len(list((tmp_path / "healthy").glob("*.png"))) == 3
    assert len(list((tmp_path / "masks").glob("*.png"))) == 6
    ds = load_dataset(tmp_path, 32, 1)
    images, labels, masks = make_phantom(spec)
    order = [int(f.split("_")[1][:6]) for f in ds.files]
    assert ds.class_names == ["healthy", "lesion"]
    assert ds.labels.tolist() == labels[order].tolist()
    assert np.abs(ds.images[:, 0].numpy() - (images[order] * 2 - 1)).max() <= 1.01 / 255 * 2
    assert np.array_equal(ds.masks[:, 0].numpy().astype(np.uint8), masks[order])
