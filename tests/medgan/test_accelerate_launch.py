"""A 2-process CPU (gloo) run through `accelerate launch -m medgan.train` trains and checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from medgan.checkpoint import latest_checkpoint
from medgan.config import PhantomSpec, TrainConfig

REPO = Path(__file__).resolve().parents[2]


def test_two_cpu_processes(tmp_path):
    cfg = TrainConfig(model="cgan", image_size=16, base_channels=8, z_dim=16, batch_size=8, steps=4,
                      checkpoint_every=2, sample_every=4, log_every=1, phantom=PhantomSpec(count=16, size=16),
                      ada=True, ada_p=0.5, ada_kimg=0.05, ada_interval=1, with_masks=True, mask_coupling="segmenter",
                      mask_segmenter_steps=5)
    (tmp_path / "config.json").write_text(cfg.model_dump_json())
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "medgan.train", "--config", str(tmp_path / "config.json"), "--run-dir", str(run)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result == {"status": "completed", "step": 4, "reason": None, "best_step": result["best_step"]}
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step-000004"
    # both ranks saved their RNG state; the rank-0 writer saved the rest once
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    probes = [r for r in rows if r.get("kind") == "probe"]
    rows = [r for r in rows if r.get("kind") != "probe"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # one writer, not two
    assert [r["step"] for r in probes] == [2, 4] and all("probe/recall" in r for r in probes)
    assert rows[-1]["ada_p"] != rows[0]["ada_p"]  # ADA moved p (its r_t is reduced over both ranks)
    assert all(r["imgs_per_s"] > 0 for r in rows)
    weights = load_file(ckpt / "generator_ema.safetensors")
    assert weights and all(v.isfinite().all() for v in weights.values())
