"""ESRGAN-style SR: shapes, tiling equals untiled, RaGAN loss, tiny training run and inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data, util

from medgan import metrics as M
from medgan.checkpoint import latest_checkpoint
from medgan.config import EnhanceConfig, PhantomSpec, TrainConfig
from medgan.enhance import enhance_dataset
from medgan.pngio import write_png
from medgan.enhance.pairs import make_sr_pair
from medgan.enhance.sr import (Discriminator, RRDBNet, load_esrgan, ragan_losses, receptive_radius,
                               upscale_bicubic, upscale_tiled)


@pytest.mark.parametrize("scale", [2, 4])
def test_generator_shapes(scale: int) -> None:
    net = RRDBNet(channels=3, scale=scale, nf=8, nb=1)
    y = net(torch.rand(2, 3, 12, 10))
    assert y.shape == (2, 3, 12 * scale, 10 * scale)
    assert Discriminator(3, nf=8)(torch.rand(2, 3, 48, 40)).shape == (2,)


@pytest.mark.parametrize("scale", [2, 4])
def test_tiling_equals_untiled(scale: int) -> None:
    torch.manual_seed(0)
    net = RRDBNet(channels=1, scale=scale, nf=8, nb=1).eval()
    x = torch.rand(1, 1, 45, 37)  # odd sizes: partial tiles at the edges
    r = receptive_radius(net)
    with torch.no_grad():
        full = net(x)
    tiled = upscale_tiled(net, x, scale, tile=16, overlap=r)
    assert tiled.shape == full.shape
    assert (tiled - full).abs().max().item() < 1e-4
    # a margin smaller than the receptive field does change the result: the test has teeth
    short = upscale_tiled(net, x, scale, tile=16, overlap=2)
    assert (short - full).abs().max().item() > 1e-4


def test_ragan_loss_direction() -> None:
    real, fake = torch.tensor([3.0, 2.0]), torch.tensor([-2.0, -3.0])
    d_good = ragan_losses(real, fake, for_generator=False)
    assert d_good < ragan_losses(fake, real, for_generator=False)  # D is rewarded for ranking real higher
    assert ragan_losses(real, fake, for_generator=True) > d_good  # and G for the opposite


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_baseline_on_real_images(scale: int) -> None:
    img = util.img_as_float32(data.camera()[192:320, 192:320])  # the photographer: texture
    lr, ref = make_sr_pair(img, scale)
    up = upscale_bicubic(lr, scale)
    assert up.shape == ref.shape
    nearest = np.kron(lr, np.ones((scale, scale), dtype=np.float32))
    assert M.psnr(up, ref, crop_border=scale).item() > M.psnr(nearest, ref, crop_border=scale).item()


def test_train_and_upscale_dataset(tmp_path: Path) -> None:
    from medgan.enhance.train_sr import train_esrgan

    cfg = TrainConfig(model="esrgan", image_size=32, channels=1, phantom=PhantomSpec(count=8, size=32), steps=3,
                      batch_size=4, checkpoint_every=2, sample_every=3, log_every=1, base_channels=8, sr_scale=2)
    res = train_esrgan(cfg, tmp_path / "run")
    assert res == {"status": "completed", "step": 3, "reason": None}
    rows = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert "omitted" in rows[0]["perceptual"] and all(np.isfinite(r["l1"]) for r in rows)
    ckpt = latest_checkpoint(tmp_path / "run")
    net, tcfg = load_esrgan(ckpt)
    assert tcfg.sr_scale == 2
    # a CT slice, downsampled, upscaled in tiles through enhance_dataset
    import pydicom
    from pydicom.data import get_testdata_file

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float32)
    ct = (ct - ct.min()) / (ct.max() - ct.min())
    lr, ref = make_sr_pair(ct, 2)
    write_png(tmp_path / "lr" / "ct.png", lr, 16)
    write_png(tmp_path / "hr" / "ct.png", ref, 16)
    ecfg = EnhanceConfig(method="esrgan", scale=2, tile=32, tile_overlap=receptive_radius(net))
    summary = enhance_dataset(ecfg, [tmp_path / "lr" / "ct.png"], tmp_path / "out",
                              references=[tmp_path / "hr" / "ct.png"], model_dir=ckpt)
    assert summary["count"] == 1 and summary["psnr"]["mean"] > 20
    with pytest.raises(Exception, match="x2"):
        enhance_dataset(EnhanceConfig(method="esrgan", scale=4), [tmp_path / "lr" / "ct.png"], tmp_path / "o2",
                        model_dir=ckpt)
