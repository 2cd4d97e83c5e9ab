"""Zero-DCE: architecture, losses, a tiny training run (stop, resume) and inference from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medgan.callbacks import Callbacks
from medgan.checkpoint import latest_checkpoint
from medgan.config import EnhanceConfig, PhantomSpec, TrainConfig
from medgan.errors import MedganError
from medgan.enhance import enhance_dataset
from medgan.pngio import write_png
from medgan.enhance.zerodce import (DCENet, apply_curves, build_dce, color_constancy_loss, exposure_loss,
                                    illumination_smoothness_loss, load_zerodce, spatial_consistency_loss)


def test_dce_net_matches_the_paper() -> None:
    net = DCENet(3)
    assert sum(p.numel() for p in net.parameters()) == 79_416  # "79k trainable parameters"
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 7
    x = torch.rand(2, 3, 32, 32)
    y, curves = net(x)
    assert y.shape == x.shape and curves.shape == (2, 24, 32, 32)
    assert curves.abs().max() <= 1 and 0 <= y.min() and y.max() <= 1


def test_curves_from_a_downscaled_copy_cover_the_full_image() -> None:
    """dce_context (Zero-DCE++): same weights, curves estimated at a long side of 16 and upsampled."""
    torch.manual_seed(0)
    full, small = DCENet(3), DCENet(3, context=16)
    small.load_state_dict(full.state_dict())
    x = torch.rand(1, 3, 48, 64)
    y, curves = small(x)
    assert y.shape == x.shape and curves.shape == (1, 24, 48, 64) and 0 <= y.min() and y.max() <= 1
    assert torch.allclose(apply_curves(x, curves, 3), y)
    ref = full.curves(torch.nn.functional.interpolate(x, size=(12, 16), mode="area"))  # [1, 24, 12, 16]
    assert torch.allclose(torch.nn.functional.interpolate(ref, size=(48, 64), mode="bilinear"), curves, atol=1e-6)
    tiny = torch.rand(1, 3, 12, 12)  # no larger than the context: the plain net
    assert torch.equal(small(tiny)[0], full(tiny)[0])
    assert build_dce(TrainConfig(model="zerodce", channels=3, dce_context=32)).context == 32


def test_curve_keeps_range_and_order() -> None:
    x = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    up = apply_curves(x, torch.full((1, 8, 1, 101), 0.8), 1)
    down = apply_curves(x, torch.full((1, 8, 1, 101), -0.8), 1)
    assert (up >= x - 1e-7).all() and (down <= x + 1e-7).all()  # positive a brightens
    assert (up.diff() >= 0).all() and up.min() >= 0 and up.max() <= 1


def test_losses_measure_what_they_claim() -> None:
    flat = torch.full((1, 3, 32, 32), 0.6)
    assert exposure_loss(flat).item() == pytest.approx(0.0, abs=1e-6)
    assert exposure_loss(torch.full((1, 3, 32, 32), 0.2)).item() == pytest.approx(0.4, abs=1e-6)
    tinted = flat.clone()
    tinted[:, 0] = 0.9
    assert color_constancy_loss(flat).item() == 0.0 < color_constancy_loss(tinted).item()
    assert illumination_smoothness_loss(torch.zeros(1, 24, 8, 8)).item() == 0.0
    noisy = torch.rand(1, 24, 8, 8, generator=torch.Generator().manual_seed(0))
    assert illumination_smoothness_loss(noisy).item() > 0.0
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert spatial_consistency_loss(img, img).item() == 0.0
    assert spatial_consistency_loss(img * 0 + 0.5, img).item() > 0.0


def _cfg(steps: int) -> TrainConfig:
    return TrainConfig(model="zerodce", image_size=32, channels=1, phantom=PhantomSpec(count=8, size=32),
                       steps=steps, batch_size=4, checkpoint_every=2, sample_every=4, log_every=1, lr_g=1e-3)


def test_train_stop_resume_and_enhance(tmp_path: Path) -> None:
    from medgan.enhance.train_zerodce import train_zerodce

    run = tmp_path / "run"
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    res = train_zerodce(_cfg(6), run, None, Callbacks(should_stop=stop_after_three))
    assert res == {"status": "stopped", "step": 3, "reason": "stop requested"}
    assert latest_checkpoint(run).name == "step-000003"
    res = train_zerodce(_cfg(6), run, None)
    assert res["status"] == "completed" and res["step"] == 6
    assert json.loads((run / "result.json").read_text()) == res
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and {"spa", "exp", "col", "tv"} <= set(r) for r in rows)
    assert (run / "samples" / "step-000004.png").is_file()
    ckpt = latest_checkpoint(run)
    net, cfg = load_zerodce(ckpt)
    assert cfg.model == "zerodce" and net.channels == 1
    # inference through enhance_dataset with model_dir
    src = tmp_path / "in"
    write_png(src / "a.png", np.linspace(0.02, 0.2, 48 * 48, dtype=np.float32).reshape(48, 48))
    summary = enhance_dataset(EnhanceConfig(method="zerodce"), [src / "a.png"], tmp_path / "out", model_dir=ckpt)
    assert summary["count"] == 1 and (tmp_path / "out" / "images" / "a.png").is_file()
    assert summary["model"] == {"source": str(ckpt)}
    # without model_dir: the shipped model (tests/medgan/test_shipped_models.py); a folder that is no
    # checkpoint is refused by name
    summary = enhance_dataset(EnhanceConfig(method="zerodce"), [src / "a.png"], tmp_path / "out2")
    assert summary["count"] == 1 and summary["model"]["source"] == "shipped with medgan"
    with pytest.raises(MedganError, match="not_a_checkpoint"):
        enhance_dataset(EnhanceConfig(method="zerodce"), [src / "a.png"], tmp_path / "out3",
                        model_dir=tmp_path / "not_a_checkpoint")
