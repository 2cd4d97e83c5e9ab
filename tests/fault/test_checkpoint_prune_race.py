"""The trainer prunes old checkpoints (keep_checkpoints) while the worker may still be uploading them.

Found by the SIGKILL test: with fast steps, the worker's tick lists several COMPLETE checkpoints, the
trainer deletes the older ones meanwhile, and the upload's FileNotFoundError failed the whole job as an
"internal error" (and stopped a healthy run). A pruned checkpoint is superseded by a newer one: the
upload now takes only the newest and skips one pruned under it.
"""

from __future__ import annotations

from scheduler.client import Client
from tests.fault.conftest import TINY_TRAIN


def test_training_that_prunes_every_step_succeeds(cluster, figures):
    client = Client(cluster.settings)
    cluster.start_worker("w0", "--queues", "medgan.train")
    cfg = {**TINY_TRAIN, "steps": 40, "checkpoint_every": 1, "keep_checkpoints": 1}
    job = client.wait(client.submit("train", config=cfg)["id"], timeout=180)
    figures.add("checkpoint pruned while being uploaded (keep_checkpoints=1, every step)", tried=1,
                survived=int(job["status"] == "SUCCEEDED"),
                notes="SUCCEEDED" if job["status"] == "SUCCEEDED" else f"{job['status']}: {job['message'][:120]}")
    assert job["status"] == "SUCCEEDED", job["message"]
    keys = [a["key"] for a in client.artifacts(job["id"])]
    assert f"jobs/{job['id']}/checkpoints/step-000040/COMPLETE" in keys
