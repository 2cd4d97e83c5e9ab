"""The same end-to-end flow twice: embedded defaults, and real Redis + PostgreSQL + S3 (moto over HTTP),
each with a real worker process. Artifacts are read back and their sha256 checked."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from medgan.pngio import read_png_text
from scheduler.client import Client
from tests.conftest import worker_process

TRAIN = {"model": "cgan", "image_size": 16, "steps": 4, "batch_size": 8, "base_channels": 8, "z_dim": 16,
         "checkpoint_every": 2, "sample_every": 2, "phantom": {"count": 32, "size": 16, "seed": 1}}


def _images(folder, n=3, size=48):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((size, size)) * 60).astype(np.uint8)  # dark
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def _check_artifacts(client: Client, job_id: str) -> list[dict]:
    arts = client.artifacts(job_id)
    assert arts, f"job {job_id} recorded no artifacts"
    for art in arts:
        data = client.store.get_bytes(art["key"])
        assert len(data) == art["size"] and hashlib.sha256(data).hexdigest() == art["sha256"], art["key"]
    return arts


def run_flow(settings, tmp_path) -> None:
    client = Client(settings)
    with worker_process("--gpus", "none", "--concurrency", "2", log=tmp_path / "worker.log"):
        train = client.wait(client.submit("train", config=TRAIN)["id"], timeout=300)
        assert train["status"] == "SUCCEEDED", train["message"]
        keys = {a["key"].split("/", 2)[2] for a in _check_artifacts(client, train["id"])}
        assert {"config.json", "stats.jsonl", "result.json", "train.log"} <= keys
        assert any(k.startswith("checkpoints/step-000004/") for k in keys)
        assert any(k.startswith("samples/") for k in keys)
        assert any(k.startswith("tensorboard/") and "events.out.tfevents" in k for k in keys)
        best = json.loads(client.store.get_bytes(f"jobs/{train['id']}/best.json"))
        assert f"checkpoints/step-{best['step']:06d}/COMPLETE" in keys  # the best snapshot is stored

        gen = client.submit("generate", source_job=train["id"], config={"count": 6, "seed": 3}, shards=2,
                            checkpoint="best")
        gen = client.wait(gen["id"], timeout=300)
        assert gen["status"] == "SUCCEEDED", gen["message"]
        first = client.store.get_bytes(f"jobs/{gen['id']}/images/shard-0000/000000.png")
        (tmp_path / "first.png").write_bytes(first)
        text = read_png_text(tmp_path / "first.png")
        assert text["checkpoint"] == f"step-{best['step']:06d}" and text["checkpoint_choice"] == "best"
        manifest = client.store.get_bytes(f"jobs/{gen['id']}/manifest.csv").decode()
        rows = list(csv.DictReader(io.StringIO(manifest)))
        assert [int(r["index"]) for r in rows] == list(range(6))
        for row in rows:  # every manifest line names a stored image with its hash
            data = client.store.get_bytes(f"jobs/{gen['id']}/{row['file']}")
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
        _check_artifacts(client, gen["id"])

        enh = client.submit("enhance", dataset=str(_images(tmp_path / "dark")), config={"method": "lime"})
        enh = client.wait(enh["id"], timeout=300)
        assert enh["status"] == "SUCCEEDED", enh["message"]
        keys = {a["key"] for a in _check_artifacts(client, enh["id"])}
        assert f"jobs/{enh['id']}/metrics.csv" in keys and f"jobs/{enh['id']}/summary.json" in keys
        assert sum(k.startswith(f"jobs/{enh['id']}/images/") for k in keys) == 3

        out = client.download(gen["id"], tmp_path / "download", prefix="images/")
        assert sorted(p.name for p in out if p.suffix == ".png") == [f"{i:06d}.png" for i in range(6)]


def test_embedded(embedded, tmp_path):
    run_flow(embedded, tmp_path)


@pytest.mark.services
def test_redis_postgres_s3(services, tmp_path):
    assert services.broker.startswith("redis://") and services.db_url.startswith("postgresql")
    run_flow(services, tmp_path)
