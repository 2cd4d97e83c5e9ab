"""evaluate() end to end on the phantom: splits, gates, distribution metrics with their floor, outputs, callbacks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medgan.callbacks import Callbacks
from medgan.config import EvaluateConfig, PhantomSpec
from medgan.errors import DataError
from medgan.evaluate import evaluate, load_synthetic
from medgan.evaluate.features import TorchScriptExtractor, train_cnn_extractor
from medgan.phantom import make_phantom
from tests.conftest import write_masks_beside

REAL = PhantomSpec(count=200, size=32, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def write_synthetic(folder: Path, images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None = None) -> Path:
    """A generation-style folder: {i:06d}.png (+ _mask.png) and manifest.csv, images [N, H, W] in [0, 1]."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "file", "label", "seed", "sha256"])
        for i, (img, lab) in enumerate(zip(images, labels)):
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / f"{i:06d}.png")
            if masks is not None:
                Image.fromarray(masks[i] * 255).save(folder / f"{i:06d}_mask.png")
            w.writerow([i, f"{i:06d}.png", int(lab), 0, ""])
    return folder


def _cfg(**kw) -> EvaluateConfig:
    base = dict(seeds=1, epochs=3, kid_subsets=10, kid_subset_size=20, bootstrap=50, segmentation=False,
                steps=20, seg_steps=20, eval_every=10, judge_steps=40, arms=("real", "real+synthetic"))
    return EvaluateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    x, y, m = make_phantom(REAL)
    x2, y2, m2 = make_phantom(PhantomSpec(count=120, size=32, seed=11))
    noise = np.random.default_rng(0).random((120, 32, 32)).astype(np.float32)
    return {
        "self": write_synthetic(root / "self", x, y, m),
        "draw": write_synthetic(root / "draw", x2, y2, m2),
        "noise": write_synthetic(root / "noise", noise, y2, m2),
        "root": root,
    }


def test_splits_are_disjoint_and_the_gan_pool_never_reaches_test_or_features(folders, tmp_path):
    out = evaluate(_cfg(real_train_count=80, gates="off"), None, folders["draw"], tmp_path, phantom=REAL)
    d = out["data"]
    assert d["real_gan_pool"] == 80 and d["real_train"] + d["real_val"] == 80
    assert d["real_feature"] + d["real_test"] == 120 and d["real_feature"] == 36
    assert "GAN's training images" in d["split"]
    assert out["extractor"]["trained_on"].startswith("feature split")
    thin = evaluate(_cfg(real_train_count=80, real_per_class=10, gates="off"), None, folders["draw"],
                    tmp_path / "thin", phantom=REAL)["data"]
    assert thin["real_train"] + thin["real_val"] == 20 and thin["real_test"] == d["real_test"]


def test_distribution_metrics_have_a_floor_three_spaces_and_proxy_labels(folders):
    root = folders["root"]
    q = {}
    for name in ("draw", "noise"):
        out = evaluate(_cfg(gates="off"), None, folders[name], root / f"out-{name}", phantom=REAL)
        q[name] = out["quality"]
    assert set(q["draw"]["spaces"]) == {"trained-cnn", "pixel-pca", "random-cnn"}
    assert q["draw"]["proxy"] and "PROXY" in q["draw"]["label"] and "2048" in q["draw"]["flag"]
    for space in q["draw"]["spaces"]:
        draw, noise = q["draw"]["spaces"][space], q["noise"]["spaces"][space]
        floor = draw["real_vs_real_floor"]
        # the same real-vs-real floor whatever the synthetic set; equal n on both sides
        assert floor == noise["real_vs_real_floor"]
        assert floor["fid"]["n_synthetic"] == draw["synthetic_vs_real"]["fid"]["n_synthetic"] == q["draw"]["n_compared"]
        assert "biased: n < 2048" in draw["synthetic_vs_real"]["fid"]["flags"]
        # a fresh phantom draw sits near the floor; noise is far above it in every space
        assert noise["synthetic_vs_real"]["fid"]["fid"] > 3 * draw["synthetic_vs_real"]["fid"]["fid"], space
        assert draw["synthetic_vs_real"]["fid"]["fid"] < 3 * floor["fid"]["fid"] + 1e-6, space


def test_gates_pass_fresh_images_flag_noise_and_copies_and_refuse_when_asked(folders, tmp_path):
    fresh = evaluate(_cfg(), None, folders["draw"], tmp_path / "fresh", phantom=REAL)
    assert fresh["gates"]["passed"], fresh["gates"]["line"]
    assert "flag" not in fresh and not any("FAILED" in v for v in fresh["verdicts"])
    noisy = evaluate(_cfg(), None, folders["noise"], tmp_path / "noise", phantom=REAL)
    assert not noisy["gates"]["passed"] and "conditioning" in noisy["gates"]["failed"]
    assert "FAILED sanity gates" in noisy["flag"] and all("FAILED" in v for v in noisy["verdicts"])
    copies = evaluate(_cfg(), None, folders["self"], tmp_path / "self", phantom=REAL)
    assert "memorisation" in copies["gates"]["failed"]
    with pytest.raises(DataError, match="refusing"):
        evaluate(_cfg(gates="refuse"), None, folders["noise"], tmp_path / "refused", phantom=REAL)
    on_disk = json.loads((tmp_path / "refused" / "metrics.json").read_text())
    assert on_disk["status"] == "refused" and "utility" not in on_disk


def test_outputs_files_and_progress(folders, tmp_path):
    seen = []
    cb = Callbacks(on_progress=lambda step, total, stats: seen.append((step, total, stats["phase"])))
    cfg = _cfg(seeds=2, segmentation=True, real_per_class=20, arms=("real", "real+aug", "real+synthetic"), draws=2)
    out = evaluate(cfg, None, folders["draw"], tmp_path, phantom=REAL, callbacks=cb)
    assert out["status"] == "completed"
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["data"] == out["data"] and out["data"]["real_train"] + out["data"]["real_val"] == 40
    for fig in ("side_by_side", "learning_curves", "utility"):
        assert (tmp_path / out["figures"][fig]).stat().st_size > 0
    with open(tmp_path / "utility.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    base = [r for r in rows if r["task"] == "classification" and r["arm"] == "real" and r["kind"] == "arm"]
    assert len(base) == 1 and base[0]["n_seeds"] == "2" and base[0]["steps"] == "20"
    assert any(r["task"] == "segmentation" and r["arm"] == "real+synthetic" and r["kind"] == "vs real" for r in rows)
    assert "generator sampling (2 disjoint synthetic draws" in out["replication"]["replicated"][1]
    assert any("GAN training" in s for s in out["replication"]["not_replicated"])
    # gates, features, quality + 2 seeds x 3 arms x 2 tasks
    assert [s[0] for s in seen] == list(range(1, 16)) and all(s[1] == 15 for s in seen)


def test_should_stop_gives_stopped_status(folders, tmp_path):
    out = evaluate(_cfg(seeds=3, segmentation=True), None, folders["draw"], tmp_path, phantom=REAL,
                   callbacks=Callbacks(should_stop=lambda: True))
    assert out["status"] == "stopped"
    assert out["utility"]["classification"]["seeds_completed"] == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "stopped"


def test_errors_and_synthetic_reader(folders, tmp_path):
    with pytest.raises(DataError):
        evaluate(_cfg(), None, folders["draw"], tmp_path)  # neither real_dir nor phantom
    with pytest.raises(DataError):
        evaluate(_cfg(), None, tmp_path / "missing", tmp_path, phantom=REAL)
    data, info = load_synthetic(folders["draw"], 16, 3)
    assert data.images.shape == (120, 3, 16, 16) and data.masks.shape == (120, 1, 16, 16)
    assert info["masks"] and float(data.images.min()) >= -1 and float(data.images.max()) <= 1


def test_any_generator_folder_class_subfolders_and_masks_beside(tmp_path):
    """A folder that is not a generate job's: class sub-folders named like the real classes (in another
    order), masks as <stem>_mask.png beside the images."""
    write_masks_beside(tmp_path / "other", 40, seed=21, prefix="s")
    data, info = load_synthetic(tmp_path / "other", 32, 1)
    assert len(data) == 40 and data.masks is not None and info["class_names"] == ["healthy", "lesion"]
    out = evaluate(_cfg(gates="off", segmentation=True), None, tmp_path / "other", tmp_path / "out", phantom=REAL)
    assert out["data"]["synthetic_used"] == 40 and "segmentation" in out["utility"]
    assert "real+synthetic" in out["utility"]["segmentation"]["arms"]
    # sub-folders named after no real class are refused with their names
    (tmp_path / "other" / "tumour").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "other" / "tumour" / "t.png")
    with pytest.raises(DataError, match="tumour"):
        evaluate(_cfg(gates="off"), None, tmp_path / "other", tmp_path / "out2", phantom=REAL)


class _Net(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], 1)  # [N, 6]


class _NetKw(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if return_features else x[:, :1, 0, 0]


def test_torchscript_extractor(tmp_path):
    imgs = torch.rand(5, 1, 20, 20) * 2 - 1
    for cls, dim in ((_Net, 6), (_NetKw, 3)):
        path = tmp_path / f"{cls.__name__}.pt"
        torch.jit.script(cls()).save(str(path))
        f = TorchScriptExtractor(path)(imgs)
        assert f.shape == (5, dim)
        # inputs reach the network as [N, 3, 299, 299] in [0, 255]
        assert np.allclose(f[:, 0], ((imgs.mean(dim=(1, 2, 3)) + 1) * 127.5).numpy(), atol=2.0)
    with pytest.raises(DataError):
        TorchScriptExtractor(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(DataError):
        TorchScriptExtractor(tmp_path / "bad.pt")


def test_cnn_extractor_is_seeded_and_handles_one_class():
    x = torch.rand(24, 1, 16, 16) * 2 - 1
    a = train_cnn_extractor(x, torch.zeros(24, dtype=torch.long), epochs=1, seed=3)
    b = train_cnn_extractor(x, torch.zeros(24, dtype=torch.long), epochs=1, seed=3)
    assert a.describe()["tasks"] == ["rotation"]
    assert np.array_equal(a(x), b(x)) and a(x).shape == (24, a.model.feature_dim)


def test_real_folder_through_medgan_data(folders, tmp_path):
    from medgan.phantom import write_phantom_folder

    real_dir = write_phantom_folder(PhantomSpec(count=40, size=32, seed=2), tmp_path / "real")
    out = evaluate(_cfg(segmentation=True, gates="off"), real_dir, folders["draw"], tmp_path / "out")
    assert out["data"]["real"]["source"] == str(real_dir)
    assert out["data"]["real"]["class_names"] == ["healthy", "lesion"]
    d = out["data"]
    assert d["real_train"] + d["real_val"] + d["real_feature"] + d["real_test"] == 40
    assert "segmentation" in out["utility"]  # masks/ came through the reader
