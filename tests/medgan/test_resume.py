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


def _cfg(**kw) -> TrainConfig:
    # ADA moves p fast (0.32 per 2-step interval) so its state matters; stopping after 3 steps leaves
    # the sign accumulators of an unfinished interval in the checkpoint.
    return TrainConfig(model="cgan", image_size=16, base_channels=8, z_dim=16, batch_size=8, steps=6,
                       checkpoint_every=100, sample_every=100, log_every=1, deterministic=True,
                       with_masks=True, r1_gamma=0.5, r1_every=2, diffaug="color,translation,cutout",
                       ada=True, ada_p=0.5, ada_kimg=0.05, ada_interval=2, mask_coupling="segmenter",
                       mask_segmenter_steps=5, probes=False, tensorboard=False,
                       phantom=PhantomSpec(count=16, size=16), **kw)


def _stop_after(n: int) -> Callbacks:
    calls = []
    return Callbacks(should_stop=lambda: calls.append(1) or len(calls) >= n)


def _differences(a, b) -> list[str]:
    out = []
    for name in FILES:
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        out += [f"{name}:{key}" for key in ta if not torch.equal(ta[key], tb[key])]
    return out


def _stats(run) -> list[tuple]:
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss_d"], r["loss_g"], r["ada_p"], r.get("ada_rt")) for r in rows]


@pytest.mark.parametrize("mask_source", ["generated", "bank"])
def test_resume_is_exact(tmp_path, mask_source):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(_cfg(mask_source=mask_source), straight)["step"] == 6
    first = train(_cfg(mask_source=mask_source), resumed, callbacks=_stop_after(3))
    assert first == {"status": "stopped", "step": 3, "reason": "stop requested"}
    ada = json.loads((latest_checkpoint(resumed) / "extra.json").read_text())["loop"]["ada"]
    assert ada["count"] == 8 and ada["p"] != 0.5  # mid-interval: one step's signs are part of the state
    assert train(_cfg(mask_source=mask_source), resumed) == {"status": "completed", "step": 6, "reason": None}
    a, b = latest_checkpoint(straight), latest_checkpoint(resumed)
    assert a.name == b.name == "step-000006"
    assert _differences(a, b) == []
    oa = torch.load(a / "optimizer.bin", weights_only=True)
    ob = torch.load(b / "optimizer.bin", weights_only=True)
    for k, st in oa["state"].items():
        assert torch.equal(st["exp_avg"], ob["state"][k]["exp_avg"])
    # the losses and ADA's p logged after the resume equal the straight run's, step by step
    assert _stats(straight) == _stats(resumed)
    assert len({p for _, _, _, p, _ in _stats(straight)}) >= 3  # p really moved during the run
    assert json.loads((a / "extra.json").read_text())["loop"] == json.loads((b / "extra.json").read_text())["loop"]


def test_resume_without_ada_state_differs(tmp_path, monkeypatch):
    """The control: the same comparison catches a resume that forgets ADA's state."""
    from medgan.gan_loop import GanTrainer

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_cfg(), straight)
    train(_cfg(), resumed, callbacks=_stop_after(3))
    monkeypatch.setattr(GanTrainer, "load_state_dict", lambda self, state: None)
    train(_cfg(), resumed)
    assert _differences(latest_checkpoint(straight), latest_checkpoint(resumed))


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
