"""2N steps straight == N steps + resume + N steps, bit for bit, on the CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from medgan.callbacks import Callbacks
from medgan.checkpoint import latest_checkpoint, load_checkpoint
from medgan.config import PhantomSpec, TrainConfig
from medgan.errors import CheckpointError
from medgan.train import train

FILES = ["model.safetensors", "model_1.safetensors", "generator_ema.safetensors"]


def _cfg() -> TrainConfig:
    return TrainConfig(model="cgan", image_size=16, base_channels=8, z_dim=16, batch_size=8, steps=6,
                       checkpoint_every=100, sample_every=100, log_every=1, deterministic=True,
                       with_masks=True, r1_gamma=0.5, diffaug="color,translation,cutout",
                       phantom=PhantomSpec(count=16, size=16))


def _stop_after(n: int) -> Callbacks:
    calls = []
    return Callbacks(should_stop=lambda: calls.append(1) or len(calls) >= n)


def test_resume_is_exact(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(_cfg(), straight)["step"] == 6
    first = train(_cfg(), resumed, callbacks=_stop_after(3))
    assert first == {"status": "stopped", "step": 3, "reason": "stop requested"}
    assert train(_cfg(), resumed) == {"status": "completed", "step": 6, "reason": None}
    a, b = latest_checkpoint(straight), latest_checkpoint(resumed)
    assert a.name == b.name == "step-000006"
    for name in FILES:
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{name}:{key} differs after resume"
    oa = torch.load(a / "optimizer.bin", weights_only=True)
    ob = torch.load(b / "optimizer.bin", weights_only=True)
    for k, st in oa["state"].items():
        assert torch.equal(st["exp_avg"], ob["state"][k]["exp_avg"])
    # the losses logged after the resume equal the straight run's, step by step
    rows_a = [json.loads(x) for x in (straight / "stats.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (resumed / "stats.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss_d"], r["loss_g"]) for r in rows_a] == [(r["step"], r["loss_d"], r["loss_g"]) for r in rows_b]


def test_incomplete_and_foreign_checkpoints(tmp_path):
    cfg = _cfg().model_copy(update={"steps": 2, "deterministic": False})
    train(cfg, tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    # a newer checkpoint without COMPLETE (crash mid-write) is ignored
    partial = ckpt.parent / "step-000009"
    shutil.copytree(ckpt, partial)
    (partial / "COMPLETE").unlink()
    assert latest_checkpoint(tmp_path) == ckpt
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(acc, partial, "cgan")
    with pytest.raises(CheckpointError, match="holds model 'cgan', expected 'dcgan'"):
        load_checkpoint(acc, ckpt, "dcgan")
    with open(ckpt / "model.safetensors", "r+b") as fh:  # truncate: size no longer matches COMPLETE
        fh.truncate(100)
    with pytest.raises(CheckpointError, match="model.safetensors has 100 bytes"):
        load_checkpoint(acc, ckpt, "cgan")
