"""`medgan enhance --method zerodce|esrgan` with no trained job: the shipped models, as real jobs on a real worker.

Also: the enhance process itself (worker.science, what the job runs) fails in one line when the shipped
file was altered.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from medgan.enhance import models, scenes
from medgan.enhance.pairs import make_sr_pair
from medgan.pngio import write_png
from scheduler.client import Client
from tests.conftest import MEDGAN, medgan_env, worker_process

pytestmark = pytest.mark.slow
SCENES = ("astronaut", "CT_small.dcm")  # one RGB photo, one grey CT slice


def _lowlight(root: Path) -> tuple[Path, Path]:
    dark, ref = root / "dark", root / "ref"
    for p in scenes.pairs(scenes.HELD_OUT[1:2], SCENES, size=128):
        stem = p.scene.replace(".", "_")
        write_png(dark / f"{stem}.png", p.dark)
        write_png(ref / f"{stem}.png", p.ref)
    return dark, ref


def _sr(root: Path) -> tuple[Path, Path]:
    low, ref = root / "low", root / "high"
    for name in SCENES:
        lr, hr = make_sr_pair(scenes.load_scene(name, 128), 4)
        write_png(low / f"{name.replace('.', '_')}.png", lr)
        write_png(ref / f"{name.replace('.', '_')}.png", hr)
    return low, ref


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDGAN, *args], capture_output=True, text=True, env=medgan_env(), timeout=600)


def test_enhance_with_the_shipped_models_from_the_cli_as_jobs(embedded, tmp_path: Path) -> None:
    dark, ref = _lowlight(tmp_path)
    low, high = _sr(tmp_path)
    client = Client(embedded)
    with worker_process("--gpus", "none", "--concurrency", "1", log=tmp_path / "worker.log"):
        for method, inp, reference, base in (("zerodce", dark, ref, "input"), ("esrgan", low, high, "bicubic")):
            proc = _cli("enhance", "--input", str(inp), "--reference", str(reference), "--method", method,
                        "--wait", "--json")
            assert proc.returncode == 0, proc.stderr[-2000:]
            job = json.loads(proc.stdout)
            assert job["status"] == "SUCCEEDED" and job["spec"].get("source_job") is None, job
            summary = json.loads(client.store.get_bytes(f"jobs/{job['id']}/summary.json"))
            assert summary["count"] == len(SCENES) and summary["failed"] == []
            entry = models.read_manifest()["models"][method]
            assert summary["model"] == models.provenance(method) and summary["model"]["sha256"] == entry["sha256"]
            assert summary["psnr"]["mean"] > summary[f"{base}_psnr"]["mean"], summary
            images = [a["key"] for a in client.artifacts(job["id"]) if "/images/" in a["key"]]
            assert len(images) == len(SCENES)


def test_an_altered_shipped_model_fails_the_enhance_process_in_one_line(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import science

    folder = tmp_path / "weights"
    shutil.copytree(models.WEIGHTS_DIR, folder)
    (folder / "zerodce.safetensors").write_bytes(b"\0" * 64)
    monkeypatch.setattr(models, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(models, "MANIFEST", folder / "manifest.json")
    dark, _ = _lowlight(tmp_path)
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({"run_dir": str(tmp_path / "run"), "inputs": [str(p) for p in sorted(dark.glob("*"))],
                               "out_dir": str(tmp_path / "out"), "references": None, "model_dir": None,
                               "config": {"method": "zerodce"}}))
    assert science.main(["enhance", str(inv)]) == 2
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed" and "\n" not in result["reason"]
    assert result["reason"].startswith("shipped zerodce weights zerodce.safetensors do not match the manifest")
