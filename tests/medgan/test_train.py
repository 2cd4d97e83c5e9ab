"""GAN training through train(): run-dir layout, stop, divergence, CLI exit codes, and that
training actually moves the generator toward the data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medgan import gan_loop
from medgan.callbacks import Callbacks
from medgan.checkpoint import latest_checkpoint, load_generator, select_checkpoint
from medgan.config import PhantomSpec, TrainConfig
from medgan.errors import DataError, DivergenceError
from medgan.phantom import make_phantom
from medgan.train import train

REPO = Path(__file__).resolve().parents[2]


def tiny(**kw) -> TrainConfig:
    base = dict(model="cgan", image_size=16, base_channels=8, z_dim=16, batch_size=8, steps=6,
                checkpoint_every=2, sample_every=3, log_every=2, keep_checkpoints=2, mask_segmenter_steps=10,
                probe_judge_steps=20,
                phantom=PhantomSpec(count=16, size=16))
    return TrainConfig(**{**base, **kw})


def _rows(run: Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == kind]


@pytest.mark.parametrize("mask_source", ["generated", "auto"])
def test_cgan_with_masks_run_dir_layout(tmp_path, mask_source):
    cfg = tiny(with_masks=True, r1_gamma=1.0, r1_every=2, diffaug="color,translation,cutout", ada=True,
               mask_coupling="segmenter", mask_source=mask_source)
    follow = "mask_follow_image" if mask_source == "generated" else "image_follow_mask"
    seen = {"progress": [], "ckpt": []}
    cb = Callbacks(on_progress=lambda s, t, st: seen["progress"].append((s, t, st)),
                   on_checkpoint=lambda s, p: seen["ckpt"].append((s, p)))
    result = train(cfg, tmp_path, callbacks=cb)
    best = json.loads((tmp_path / "best.json").read_text())
    assert result == {"status": "completed", "step": 6, "reason": None, "best_step": best["step"]}
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert TrainConfig.model_validate_json((tmp_path / "config.json").read_text()) == cfg
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [2, 4, 6]
    diagnostics = {"total", "time", "loss_d", "loss_g", "imgs_per_s", "d_real", "d_fake", "grad_d", "grad_g",
                   "ada_p", "mask_nonempty", "mask_px", follow, "seg_px"}
    assert all(diagnostics <= set(r) for r in rows), [diagnostics - set(r) for r in rows]
    assert "r1" in rows[0] and "segmenter/dice_train" in rows[0]  # r1 on even steps; fit notes in row 1
    assert [s for s, _, _ in seen["progress"]] == [2, 4, 6]
    assert [s for s, _ in seen["ckpt"]] == [2, 4, 6]
    probes = _rows(tmp_path, "probe")
    assert [p["step"] for p in probes] == [2, 4, 6]
    assert all({"probe/recall", "probe/recall_real", "probe/cond_acc", "probe/mask_nonempty_lesion",
                "probe/mask_contrast", "probe/memorisation_ratio", "probe/score"} <= set(p) for p in probes)
    # keep_checkpoints=2 prunes the oldest, except the best snapshot
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == sorted({"step-000004", "step-000006", f"step-{best['step']:06d}"})
    assert latest_checkpoint(tmp_path).name == "step-000006"
    assert select_checkpoint(tmp_path, "best").name == f"step-{best['step']:06d}"
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step-000003.png", "step-000006.png"]
    with Image.open(tmp_path / "samples" / "step-000006.png") as im:
        assert im.mode == "RGB" and "SYNTHETIC" in im.text
        grid = np.asarray(im)
    assert grid.shape[0] > 2 * 48 and grid.shape[1] > 2 * 6 * 48  # two class rows, real + synthetic halves
    # what `tensorboard --logdir RUN/tensorboard` shows: the diagnostics, the probes and the grids
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [p for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*") if p.parent.name == "tensorboard"]
    acc = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0}).Reload()
    wanted = {"loss_d", "d_real", "ada_p", "grad_g", "mask_nonempty", "probe/score", "probe/cond_acc"}
    assert wanted <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss_d")] == [2, 4, 6]
    assert [e.step for e in acc.Images("samples")] == [3, 6]
    g, loaded_cfg = load_generator(tmp_path / "checkpoints" / "step-000006")
    assert loaded_cfg == cfg
    out = g(torch.randn(3, 16), torch.tensor([0, 1, 1]))
    assert out.shape == (3, 2, 16, 16) and torch.isfinite(out).all()


def test_should_stop_writes_final_checkpoint(tmp_path):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    result = train(tiny(model="dcgan", checkpoint_every=100), tmp_path, callbacks=Callbacks(should_stop=stop))
    assert result["status"] == "stopped" and result["step"] == 3
    assert latest_checkpoint(tmp_path).name == "step-000003"
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "stopped"


def test_divergence_names_loss_and_step(tmp_path, monkeypatch):
    real = gan_loop.d_loss
    monkeypatch.setattr(gan_loop, "d_loss", lambda r, f, k: real(r, f, k) * float("nan"))
    with pytest.raises(DivergenceError, match=r"loss_d.*step 1"):
        train(tiny(probes=False), tmp_path)


def test_bad_data_raises_data_error(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="no image files"):
        train(tiny(), tmp_path / "run", data_dir=tmp_path / "data")
    for k, cls in enumerate(["a", "b", "c"]):  # three classes for a two-class model
        (tmp_path / "data" / cls).mkdir()
        Image.fromarray(np.full((16, 16), 60 * k, np.uint8)).save(tmp_path / "data" / cls / "x.png")
    with pytest.raises(DataError, match="num_classes=2"):
        train(tiny(), tmp_path / "run", data_dir=tmp_path / "data")
    with pytest.raises(DataError, match="no masks"):
        train(tiny(num_classes=3, with_masks=True), tmp_path / "run", data_dir=tmp_path / "data")


def _hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    ha = np.histogram(a, bins=32, range=(0, 1))[0] / a.size
    hb = np.histogram(b, bins=32, range=(0, 1))[0] / b.size
    return float(np.abs(ha - hb).sum())


def _spectrum(x: np.ndarray) -> np.ndarray:
    """Mean radial power spectrum (log) of images [N, S, S]."""
    p = np.abs(np.fft.fftshift(np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True)), axes=(1, 2))) ** 2
    s = x.shape[1]
    yy, xx = np.indices((s, s)) - s // 2
    r = np.hypot(yy, xx).astype(int).ravel()
    return np.log(np.bincount(r, p.mean(0).ravel()) / np.bincount(r) + 1e-8)[: s // 2]


def _distance(fake: np.ndarray, real: np.ndarray) -> float:
    return (_hist_distance(fake, real) + abs(fake.mean() - real.mean()) + abs(fake.std() - real.std())
            + 0.1 * float(np.abs(_spectrum(fake) - _spectrum(real)).mean()))


def test_training_moves_generator_toward_the_data(tmp_path):
    spec = PhantomSpec(count=256, size=32, seed=11)
    cfg = TrainConfig(model="dcgan", image_size=32, base_channels=16, z_dim=32, batch_size=32, steps=120,
                      checkpoint_every=120, sample_every=120, log_every=40, diffaug="", loss="nonsaturating",
                      phantom=spec, ema_decay=0.99)
    real = make_phantom(PhantomSpec(count=128, size=32, seed=99))[0]  # held-out real images

    def samples(g) -> np.ndarray:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            out = g(torch.randn(128, 32, generator=gen), torch.arange(128) % 2)
        return ((out[:, 0].clamp(-1, 1) + 1) / 2).numpy()

    torch.manual_seed(cfg.seed)
    untrained = gan_loop.build_generator(cfg).eval()
    train(cfg, tmp_path)
    trained, _ = load_generator(latest_checkpoint(tmp_path))
    d_untrained, d_trained = _distance(samples(untrained), real), _distance(samples(trained), real)
    assert d_trained < 0.5 * d_untrained, (d_trained, d_untrained)


def _cli(tmp_path: Path, cfg: TrainConfig, extra: list[str] | None = None) -> subprocess.Popen:
    (tmp_path / "config.json").write_text(cfg.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "medgan.train", "--config", str(tmp_path / "config.json"),
                             "--run-dir", str(tmp_path / "run"), *(extra or [])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_cli_sigterm_stops_with_checkpoint_and_exit_0(tmp_path):
    proc = _cli(tmp_path, tiny(model="dcgan", steps=100_000, checkpoint_every=100_000, log_every=1))
    stats = tmp_path / "run" / "stats.jsonl"
    deadline = time.time() + 120
    while not (stats.exists() and stats.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "stopped" and result["step"] >= 1
    assert latest_checkpoint(tmp_path / "run").name == f"step-{result['step']:06d}"


def test_cli_bad_data_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _cli(tmp_path, tiny(), ["--data", str(tmp_path / "empty")])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed" and "DataError" in result["reason"] and "no image files" in result["reason"]


def _small_data_run(tmp_path, **kw):
    cfg = tiny(with_masks=True, mask_coupling="segmenter", ada=True, r1_gamma=0.2, diffaug="", steps=24,
               checkpoint_every=8, sample_every=24, log_every=4, mask_segmenter_steps=60, probe_samples=16,
               probe_judge_steps=30, phantom=PhantomSpec(count=40, size=16),
               tensorboard=False, **kw)
    return cfg, train(cfg, tmp_path)


@pytest.mark.parametrize("mask_source", ["generated", "auto"])
def test_short_run_keeps_its_mask_channel_and_records_recall(tmp_path, caplog, mask_source):
    caplog.set_level("WARNING", logger="medgan.train")
    _small_data_run(tmp_path, mask_source=mask_source)
    probes = _rows(tmp_path, "probe")
    assert [p["step"] for p in probes] == [8, 16, 24]
    assert all(isinstance(p["probe/recall"], float) and isinstance(p["probe/recall_real"], float) for p in probes)
    alerts = [a for r in _rows(tmp_path) + probes for a in r.get("alerts", [])]
    assert not [a for a in alerts if a.startswith("mask channel dead")], alerts
    assert probes[-1]["probe/mask_nonempty_lesion"] >= 0.5  # the phantom: every lesion image has a mask
    assert not [r for r in caplog.records if "mask channel dead" in r.getMessage()]


def test_a_dead_mask_channel_is_reported_as_it_happens(tmp_path, monkeypatch, caplog):
    """The control: the same run with its mask output forced off must say so in stats and log."""
    from medgan.models.cgan import ResGenerator

    real_forward = ResGenerator.forward

    def dead_mask(self, z, y, logits=False):
        out = real_forward(self, z, y, logits=True)
        out = torch.cat([out[:, :1], torch.full_like(out[:, 1:], -20.0) + 0 * out[:, 1:]], 1)
        return out if logits else torch.tanh(out)

    monkeypatch.setattr(ResGenerator, "forward", dead_mask)
    caplog.set_level("WARNING", logger="medgan.train")
    _small_data_run(tmp_path)
    ticks, probes = _rows(tmp_path), _rows(tmp_path, "probe")
    assert ticks[0]["mask_nonempty"] == 0.0 and any("mask channel dead" in a for a in ticks[0]["alerts"])
    assert all(p["probe/mask_nonempty_lesion"] == 0.0 and any("mask channel dead" in a for a in p["alerts"])
               for p in probes)
    assert any("mask channel dead" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("count", [1, 2, 5])
def test_too_few_images_for_the_probes_trains_anyway_and_says_so(tmp_path, caplog, count):
    """A run too small to train the probes' judges on still trains (it once FAILED with the judges' DataError):
    the probes are off, the log says why, and there is no best snapshot to pick."""
    (tmp_path / "data" / "a").mkdir(parents=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "data" / "a" / f"{i}.png")
    with caplog.at_level("WARNING", logger="medgan.train"):
        result = train(tiny(model="dcgan", num_classes=1, steps=2), tmp_path / "run", data_dir=tmp_path / "data")
    assert result["status"] == "completed" and result["step"] == 2
    assert any("quality probes off" in r.getMessage() and "judges need more real images" in r.getMessage()
               for r in caplog.records)
    assert not _rows(tmp_path / "run", "probe")
    with pytest.raises(Exception, match="no best snapshot"):
        select_checkpoint(tmp_path / "run", "best")


def test_mask_first_generator_draws_real_masks_for_lesions_only(tmp_path):
    """mask_source="bank": every lesion-class sample carries one of the run's real lesion masks (never an empty
    one), every healthy sample an empty mask, the choice is a function of the sample's noise (so generation
    stays reproducible), and the exported generator loads with its bank."""
    cfg, result = _small_data_run(tmp_path, mask_source="bank")
    assert result["status"] == "completed"
    g, tcfg = load_generator(select_checkpoint(tmp_path, "last"))
    assert tcfg.mask_source == "bank" and len(g.mask_bank) == 20  # the 20 lesion images of 40
    real = make_phantom(cfg.phantom)
    bank = {m.astype(bool).tobytes() for m, label in zip(real[2], real[1]) if label == 1}
    z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(3))
    y = torch.arange(64) % 2
    with torch.no_grad():
        out, again = g(z, y), g(z, y)
    assert torch.equal(out, again)
    masks = out[:, 1] > 0  # [64, S, S]
    assert not masks[y == 0].any()
    assert all(masks[i].numpy().tobytes() in bank for i in range(64) if y[i] == 1)
    assert len({masks[i].numpy().tobytes() for i in range(64) if y[i] == 1}) >= 8  # the noise picks many masks
    probes = _rows(tmp_path, "probe")
    assert probes and all(p["probe/mask_nonempty_lesion"] == 1.0 for p in probes)
    rows = _rows(tmp_path)
    assert all("image_follow_mask" in r for r in rows if "loss_g" in r)


def test_mask_first_needs_a_conditional_gan_with_masks():
    with pytest.raises(ValueError, match="mask_source='bank' needs"):
        tiny(mask_source="bank")  # with_masks is off
    with pytest.raises(ValueError, match="mask_source='bank' needs"):
        tiny(model="dcgan", with_masks=True, mask_source="bank")
