"""The learned models shipped with medgan: files, manifest, held-out figures, and use without a trained job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medgan import metrics as M
from medgan.checkpoint import file_sha256
from medgan.config import EnhanceConfig, TrainConfig
from medgan.enhance import enhance_image, models, scenes
from medgan.enhance.models import NoShippedModel, load_shipped
from medgan.enhance.pairs import make_sr_pair
from medgan.enhance.sr import RRDBNet, upscale_bicubic, upscale_with
from medgan.errors import DataError


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("method", models.METHODS)
def test_shipped_weights_load_with_safetensors_and_match_the_manifest(method: str) -> None:
    entry = models.read_manifest()["models"][method]
    path = models.WEIGHTS_DIR / entry["file"]
    assert file_sha256(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
    assert path.stat().st_size < 2 * 1024 * 1024  # small: under 2 MB
    tensors = load_file(str(path))  # safetensors: no pickle involved
    net, cfg = load_shipped(method)
    assert cfg == TrainConfig(**entry["config"]) and cfg.model == method
    state = net.state_dict()
    assert set(tensors) == set(state) and all(torch.equal(tensors[k], state[k]) for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == entry["parameters"]
    # the manifest says how it was made: the command, the data, the steps, the held-out figures
    assert entry["command"].startswith("python -m medgan.enhance.models retrain " + method)
    assert entry["steps"] == cfg.steps and entry["train_cpu_seconds"] > 0
    assert set(entry["data"]["sources"]) == {"skimage", "pydicom-data", "nibabel", "phantom"}
    assert not set(entry["data"]["sources"]["skimage"]) & set(scenes.SCENES)  # never a benchmark scene
    assert not set(entry["data"]["sources"]["pydicom-data"]) & set(scenes.MEDICAL_SCENES)


@pytest.mark.parametrize("method", models.METHODS)
def test_the_shipped_models_beat_their_baseline_held_out(method: str) -> None:
    held = models.read_manifest()["models"][method]["held_out"]
    rows, base = held["per_pair"], held["baseline"]
    assert held["count"] == len(rows) == len(scenes.SCENES) * (len(scenes.HELD_OUT) if method == "zerodce" else 1)
    for key in ("psnr", "ssim", f"{base}_psnr", f"{base}_ssim"):  # the means are the rows' means
        assert held["mean"][key] == pytest.approx(np.mean([r[key] for r in rows]), abs=1e-3)
    assert held["below_baseline_psnr"] == sum(r["psnr"] < r[f"{base}_psnr"] for r in rows)
    assert held["below_baseline_ssim"] == sum(r["ssim"] < r[f"{base}_ssim"] for r in rows)
    assert models.beats_baseline(held)


@pytest.mark.parametrize("method, scenes, base", [("zerodce", ("retina", "CT_small.dcm"), "input"),
                                                   ("esrgan", ("astronaut", "camera"), "bicubic")])
def test_the_manifest_figures_are_what_the_shipped_model_scores(method: str, scenes: tuple[str, ...], base: str
                                                                ) -> None:
    net, _ = load_shipped(method)
    got = getattr(models, f"score_{method}")(net, scenes)["per_pair"]
    want = {r["pair"]: r for r in models.read_manifest()["models"][method]["held_out"]["per_pair"]}
    for row in got:
        for key in ("psnr", "ssim", f"{base}_psnr", f"{base}_ssim"):
            assert row[key] == pytest.approx(want[row["pair"]][key], abs=2e-3), (row["pair"], key)


@pytest.mark.parametrize("scene", ["astronaut", "CT_small.dcm"])
def test_enhance_zerodce_without_a_model_dir_uses_the_shipped_model(scene: str) -> None:
    pair = scenes.pairs(scenes.HELD_OUT[1:2], (scene,))[0]
    out, _ = enhance_image(pair.dark, EnhanceConfig(method="zerodce"))
    assert out.shape == pair.dark.shape  # RGB stays RGB, grey stays grey
    assert M.psnr(out, pair.ref).item() > M.psnr(pair.dark, pair.ref).item() + 3


@pytest.mark.parametrize("scene", ["coffee", "camera"])
def test_enhance_esrgan_without_a_model_dir_keeps_the_channels_and_beats_bicubic(scene: str) -> None:
    lr, ref = make_sr_pair(scenes.load_scene(scene), 4)
    out, _ = enhance_image(lr, EnhanceConfig(method="esrgan", scale=4))
    assert out.shape == ref.shape
    kw = {"crop_border": 4, "y_channel": True}
    assert M.psnr(out, ref, **kw).item() > M.psnr(upscale_bicubic(lr, 4), ref, **kw).item()


def test_shipped_sr_is_x4_only() -> None:
    with pytest.raises(DataError, match="upsamples x4, but scale=2.*--model"):
        enhance_image(np.zeros((16, 16), np.float32), EnhanceConfig(method="esrgan", scale=2))


def test_a_single_channel_model_upscales_rgb_through_its_luma() -> None:
    """Chroma is upsampled bicubically: a model that adds nothing to bicubic gives bicubic RGB."""
    torch.manual_seed(0)
    net = RRDBNet(1, 4, nf=8, nb=1).eval()
    torch.nn.init.zeros_(net.conv_last.weight)
    torch.nn.init.zeros_(net.conv_last.bias)
    rgb = np.random.default_rng(0).random((12, 10, 3)).astype(np.float32)
    out = upscale_with(net, rgb, 4)
    assert out.shape == (48, 40, 3)
    np.testing.assert_allclose(out, upscale_bicubic(rgb, 4), atol=1e-5)
    grey = upscale_with(net, rgb[..., 0], 4)
    assert grey.shape == (48, 40)


@pytest.fixture
def weights_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped files copied to tmp_path, and the loader pointed there."""
    folder = tmp_path / "weights"
    shutil.copytree(models.WEIGHTS_DIR, folder)
    monkeypatch.setattr(models, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(models, "MANIFEST", folder / "manifest.json")
    return folder


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("method", models.METHODS)
def test_a_tampered_weights_file_is_one_clear_line(weights_copy: Path, method: str) -> None:
    path = weights_copy / f"{method}.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(NoShippedModel) as exc:
        load_shipped(method)
    assert "do not match the manifest" in _one_line(exc) and f"retrain {method}" in str(exc.value)
    with pytest.raises(DataError, match="do not match the manifest"):  # the enhance path says the same
        enhance_image(np.zeros((16, 16), np.float32), EnhanceConfig(method=method))


@pytest.mark.parametrize("method", models.METHODS)
def test_a_missing_weights_file_is_one_clear_line(weights_copy: Path, method: str) -> None:
    (weights_copy / f"{method}.safetensors").unlink()
    with pytest.raises(NoShippedModel) as exc:
        load_shipped(method)
    assert "are missing" in _one_line(exc)


def test_a_manifest_that_matches_a_wrong_file_still_fails_in_one_line(weights_copy: Path) -> None:
    """The zerodce file under the esrgan entry (sha256 updated too): the shapes do not fit."""
    manifest = json.loads((weights_copy / "manifest.json").read_text())
    shutil.copyfile(weights_copy / "zerodce.safetensors", weights_copy / "esrgan.safetensors")
    manifest["models"]["esrgan"]["sha256"] = file_sha256(weights_copy / "esrgan.safetensors")
    (weights_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NoShippedModel) as exc:
        load_shipped("esrgan")
    assert "do not load" in _one_line(exc)


def test_a_missing_manifest_or_entry_is_one_clear_line(weights_copy: Path) -> None:
    manifest = json.loads((weights_copy / "manifest.json").read_text())
    del manifest["models"]["zerodce"]
    (weights_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NoShippedModel) as exc:
        load_shipped("zerodce")
    assert "no zerodce model ships" in _one_line(exc)
    (weights_copy / "manifest.json").unlink()
    with pytest.raises(NoShippedModel) as exc:
        load_shipped("esrgan")
    assert "no shipped-model manifest" in _one_line(exc)


def test_check_command(weights_copy: Path, capsys: pytest.CaptureFixture) -> None:
    assert models.main(["check"]) == 0
    assert "zerodce: zerodce.safetensors matches the manifest" in capsys.readouterr().out
    (weights_copy / "esrgan.safetensors").write_bytes(b"not a model")
    assert models.main(["check"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: shipped esrgan weights") and "\n" not in err


def test_the_training_folder_holds_tiles_of_the_sources_only(tmp_path: Path) -> None:
    info = models.write_training_folder(tmp_path, 64)
    files = sorted(tmp_path.glob("*.png"))
    assert len(files) == info["tiles"] == sum(info["tiles_per_source"].values()) > 1000
    assert all(n > 0 for n in info["tiles_per_source"].values())
    assert not any(f.name.startswith(tuple(s.replace(".", "_") for s in scenes.SCENES)) for f in files)


def test_retrain_trains_scores_and_writes_its_entry(weights_copy: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The retrain path end to end at toy size (ship=False): trained, scored, its entry made, nothing replaced."""
    monkeypatch.setattr(models, "write_training_folder",
                        lambda out, tile: _tiny_folder(Path(out), tile))
    before = (weights_copy / "zerodce.safetensors").read_bytes()
    entry = models.retrain("zerodce", steps=2, work=tmp_path / "work", ship=False, log=lambda s: None,
                           held_out_scenes=("camera",))
    assert entry["steps"] == 2 and entry["held_out"]["count"] == len(scenes.HELD_OUT)
    assert entry["command"] == "python -m medgan.enhance.models retrain zerodce --steps 2"
    assert entry["shipped"] is False and (weights_copy / "zerodce.safetensors").read_bytes() == before


def _tiny_folder(out: Path, tile: int) -> dict:
    from medgan.pngio import write_png

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        write_png(out / f"t{i}.png", rng.random((tile, tile, 3)).astype(np.float32))
    return {"sources": {}, "tiles": 4, "tiles_per_source": {"noise": 4}}
