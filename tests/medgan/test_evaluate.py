"""evaluate() end to end on the phantom: real vs itself, vs a second draw, vs noise; outputs and callbacks."""

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

REAL = PhantomSpec(count=96, size=32, seed=0)


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
    base = dict(seeds=1, epochs=3, kid_subsets=10, kid_subset_size=30, bootstrap=50, segmentation=False)
    return EvaluateConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    x, y, m = make_phantom(REAL)
    x2, y2, m2 = make_phantom(PhantomSpec(count=64, size=32, seed=11))
    noise = np.random.default_rng(0).random((64, 32, 32)).astype(np.float32)
    return {
        "self": write_synthetic(root / "self", x, y, m),
        "draw": write_synthetic(root / "draw", x2, y2, m2),
        "noise": write_synthetic(root / "noise", noise, y2),
        "root": root,
    }


def test_real_vs_itself_second_draw_and_noise(folders):
    root = folders["root"]
    q = {}
    for name in ("self", "draw", "noise"):
        out = evaluate(_cfg(), None, folders[name], root / f"out-{name}", phantom=REAL)
        q[name] = out["quality"]["synthetic_vs_real"]
        assert q[name]["fid"]["extractor"] == "trained-cnn" == out["extractor"]["name"]
    # the same images (through 8-bit PNG) are at distance ~0; a fresh phantom draw is close; noise is far
    assert q["self"]["fid"]["fid"] < 0.01 * q["noise"]["fid"]["fid"]
    assert q["self"]["precision_recall"]["precision"] == pytest.approx(1.0, abs=0.02)
    assert q["self"]["precision_recall"]["recall"] == pytest.approx(1.0, abs=0.02)
    assert q["draw"]["fid"]["fid"] < 0.2 * q["noise"]["fid"]["fid"]
    assert q["draw"]["kid"]["kid_mean"] < 0.2 * q["noise"]["kid"]["kid_mean"]
    assert q["draw"]["precision_recall"]["precision"] > q["noise"]["precision_recall"]["precision"] + 0.5
    assert "biased: n < 2048" in q["noise"]["fid"]["flags"]


def test_outputs_files_and_progress(folders, tmp_path):
    seen = []
    cb = Callbacks(on_progress=lambda step, total, stats: seen.append((step, total, stats["phase"])))
    cfg = _cfg(seeds=3, epochs=2, segmentation=True, real_per_class=20)
    out = evaluate(cfg, None, folders["draw"], tmp_path, phantom=REAL, callbacks=cb)
    assert out["status"] == "completed"
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["data"] == out["data"] and on_disk["data"]["real_train"] == 40  # 20 per class
    assert (tmp_path / "side_by_side.png").stat().st_size > 0 and (tmp_path / "utility.png").stat().st_size > 0
    with open(tmp_path / "utility.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    acc = [r for r in rows if r["task"] == "classification" and r["metric"] == "accuracy" and r["condition"] == "real"]
    assert len(acc) == 1 and acc[0]["n_seeds"] == "3" and float(acc[0]["ci_low"]) <= float(acc[0]["ci_high"])
    assert any(r["task"] == "segmentation" and r["condition"] == "real+synthetic" for r in rows)
    # 2 (features, quality) + 3 seeds x 3 classifier conditions + 3 seeds x 2 segmenter conditions
    assert [s[0] for s in seen] == list(range(1, 18)) and all(s[1] == 17 for s in seen)


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
    assert data.images.shape == (64, 3, 16, 16) and data.masks.shape == (64, 1, 16, 16)
    assert info["masks"] and float(data.images.min()) >= -1 and float(data.images.max()) <= 1


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
    out = evaluate(_cfg(segmentation=True), real_dir, folders["draw"], tmp_path / "out")
    assert out["data"]["real"]["source"] == str(real_dir)
    assert out["data"]["real"]["class_names"] == ["healthy", "lesion"]
    assert out["data"]["real_train"] + out["data"]["real_test"] == 40
    assert "segmentation" in out["utility"]  # masks/ came through the reader
