"""Sharded generation over 1 vs 2 worker processes on this machine (speed-up of the fan-out)."""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack

from bench._services import apply_env, medgan_worker, services

TRAIN = {"model": "cgan", "image_size": 32, "steps": 20, "batch_size": 16, "base_channels": 16, "z_dim": 32,
         "checkpoint_every": 20, "sample_every": 20, "phantom": {"count": 64, "size": 32, "seed": 0}}


def _generate(client, source: str, count: int, shards: int, seed: int) -> float:
    t0 = time.perf_counter()
    job = client.wait(client.submit("generate", source_job=source, config={"count": count, "seed": seed},
                                    shards=shards)["id"], timeout=1800)
    if job["status"] != "SUCCEEDED":
        raise RuntimeError(f"generation failed: {job['message']}")
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    from scheduler import migrate
    from scheduler.client import Client
    from scheduler.settings import get_settings

    count, shards = (256, 4) if quick else (2048, 8)
    with services() as svc:
        tmp = svc.tmp
        env = svc.medgan_env("home", 0)
        apply_env(env)
        settings = get_settings()
        migrate.upgrade(settings)
        client = Client(settings)
        with medgan_worker(env, tmp / "w0.log"):
            train = client.wait(client.submit("train", config=TRAIN)["id"], timeout=1800)
            one = _generate(client, train["id"], count, shards, seed=1)
        with ExitStack() as stack:
            for i in range(2):
                # Two workers share this host's cores: each job gets its half of the threads.
                threads = str(max(1, (os.cpu_count() or 2) // 2))
                stack.enter_context(medgan_worker(env, tmp / f"w{i + 1}.log", "--hostname", f"bench{i}",
                                                  "--cpu-threads", threads))
            two = _generate(client, train["id"], count, shards, seed=2)
    return [{"name": f"sharded generation, {count} images in {shards} shards, 32 px", "value": round(count / two, 1),
             "unit": "imgs/s with 2 workers", "baseline": round(count / one, 1), "ratio": round(one / two, 2),
             "note": "speed-up of 2 worker processes over 1 on this 2-core machine (each shard a subprocess)"}]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
