"""A pipeline file runs as dependent jobs (train → generate → evaluate), and the evaluation's report renders."""

from __future__ import annotations

import html.parser
import subprocess
import sys

import yaml

from scheduler.client import Client
from cli.pipeline import run_pipeline
from scheduler.errors import MedganUserError
from tests.conftest import worker_process

PIPELINE = {
    "name": "tiny",
    "steps": [
        {"id": "train", "kind": "train", "config": {
            "model": "cgan", "image_size": 16, "steps": 6, "batch_size": 8, "base_channels": 8, "z_dim": 16,
            "with_masks": True, "checkpoint_every": 3, "sample_every": 3,
            "phantom": {"count": 24, "size": 16, "seed": 0}}},
        {"id": "gen", "kind": "generate", "from": "train", "config": {"count": 24, "with_masks": True},
         "shards": 2},
        {"id": "eval", "kind": "evaluate", "from": "gen", "config": {
            "seeds": 3, "epochs": 2, "image_size": 16, "kid_subsets": 5, "kid_subset_size": 8, "bootstrap": 50,
            "steps": 10, "seg_steps": 10, "eval_every": 5, "judge_steps": 20}},
    ],
}


class _Imgs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))


def test_pipeline_runs_as_dependent_jobs_with_a_report(embedded, tmp_path):
    client = Client(embedded)
    jobs = run_pipeline(client, PIPELINE)
    assert [j["kind"] for j in jobs] == ["train", "generate", "evaluate"]
    assert jobs[1]["depends_on"] == [jobs[0]["id"]] and jobs[2]["depends_on"] == [jobs[1]["id"]]
    assert client.job(jobs[2]["id"])["status"] == "QUEUED"
    with worker_process("--gpus", "none", "--concurrency", "2", log=tmp_path / "worker.log"):
        done = [client.wait(j["id"], timeout=600) for j in jobs]
    assert [j["status"] for j in done] == ["SUCCEEDED"] * 3, [j["message"] for j in done]
    ev = done[2]["id"]
    import json

    metrics = json.loads(client.store.get_bytes(f"jobs/{ev}/metrics.json"))
    cls = metrics["utility"]["classification"]
    assert cls["seeds_completed"] == 3
    assert set(cls["arms"]) >= {"real", "real+aug", "real+synthetic", "real-duplicated", "synthetic"}
    assert {f["steps_run"] for a in cls["arms"].values() for f in a["fits"]} == {10}  # budget parity
    assert metrics["data"]["split"].startswith("the first 24 real images are the GAN's")  # never test images
    assert metrics["gates"]["gates"] and metrics["verdicts"]
    page = client.store.get_bytes(f"jobs/{ev}/report.html").decode()
    parser = _Imgs()
    parser.feed(page)
    assert parser.srcs and all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    assert "Utility: classification" in page and "Training curves" in page


def test_bad_pipeline_files_write_nothing(embedded, tmp_path):
    client = Client(embedded)
    bad = {"steps": [{"id": "a", "kind": "train"}, {"id": "b", "kind": "generate", "from": "zzz"}]}
    try:
        run_pipeline(client, bad)
        raise AssertionError("accepted a step referring to an unknown step")
    except MedganUserError as exc:
        assert "not an earlier step" in str(exc)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"steps": [{"id": "a", "kind": "train", "config": {"steps": -1}}]}))
    proc = subprocess.run([sys.executable, "-m", "cli", "pipeline", "run", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "steps" in proc.stderr
    assert client.jobs() == []
