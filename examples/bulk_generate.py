#!/usr/bin/env python
"""Bulk synthetic data with the Python client: train (or reuse) a small class-conditional GAN on the bundled
phantom, generate a class-balanced dataset fanned out in shards over every worker, wait with progress, download
it and check it.

    medgan db upgrade                      # once (embedded mode: $MEDGAN_HOME, default ./.medgan)
    medgan worker --gpus none &            # at least one worker, here or anywhere on the same broker
    python examples/bulk_generate.py --count 200 --shards 4 --steps 300 --out synthetic/

The same script runs against the production stack: set MEDGAN_DATABASE_URL, MEDGAN_BROKER_URL and the
MEDGAN_S3_* variables (or an .env file), nothing else changes.

Re-running is cheap and safe: both jobs are submitted with an idempotency key derived from their settings,
so a second run with the same arguments finds the same training run and the same generation and only
downloads and checks again (pass another --seed for new images; a failed job is retried, not duplicated).

What it checks in the downloaded folder (exit status 1 if anything is wrong):
- manifest.csv lists images 0..count-1, each once;
- labels are balanced: class 0 and class 1 have count/2 each (class 0 takes the odd one);
- every file the manifest names is there and its sha256 is the manifest's.

The defaults are tiny (16x16 images, a few training steps) so that it finishes in about a minute on a CPU;
the images are noise-like at that size. For real use raise --steps and --image-size.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from scheduler.client import Client  # noqa: E402


def train_config(steps: int, image_size: int) -> dict[str, Any]:
    """A small class-conditional GAN (2 classes: with / without lesion) on the bundled phantom."""
    return {
        "model": "cgan", "num_classes": 2, "image_size": image_size, "steps": steps, "batch_size": 8,
        "base_channels": 8, "z_dim": 16, "checkpoint_every": steps, "sample_every": steps,
        "phantom": {"count": 64, "size": image_size, "seed": 1},
    }


def balanced(count: int) -> dict[int, int]:
    """count images split over classes 0 and 1 (class 0 takes the odd one)."""
    return {0: count - count // 2, 1: count // 2}


def key_for(what: str, payload: dict[str, Any]) -> str:
    """An idempotency key from the settings that define a job: same settings, same job."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    return f"examples.bulk_generate.{what}.{digest}"


class Progress:
    """Prints one line whenever a job's status or progress changes (not at every poll)."""

    def __init__(self, label: str, unit: str):
        self.label, self.unit, self.last = label, unit, None
        self.t0 = time.monotonic()

    def __call__(self, job: dict[str, Any]) -> None:
        state = (job["status"], job["step"], job["total"])
        if state == self.last:
            return
        self.last = state
        done = f" {job['step']}/{job['total']} {self.unit}" if job["total"] else ""
        print(f"[{time.monotonic() - self.t0:6.1f}s] {self.label} {job['id']}: {job['status']}{done}", flush=True)


def run_job(client: Client, kind: str, key: str, timeout: float, unit: str, **fields: Any) -> dict[str, Any]:
    """Submit (or find, by key) a job, retry it if an earlier run of it failed, and wait for it."""
    job = client.submit(kind, idempotency_key=key, **fields)
    if job["status"] in ("FAILED", "CANCELLED"):
        print(f"{kind} {job['id']} was {job['status']} ({job['message']}): retrying it", flush=True)
        job = client.retry(job["id"])
    elif job["status"] == "SUCCEEDED":
        print(f"{kind} {job['id']}: reusing the finished job (same settings)", flush=True)
    job = client.wait(job["id"], timeout=timeout, poll=0.5, on_progress=Progress(kind, unit))
    if job["status"] != "SUCCEEDED":
        raise SystemExit(f"{kind} job {job['id']} ended {job['status']}: {job['message']}")
    return job


def check_output(out: Path, count: int) -> dict[str, Any]:
    """Check the downloaded dataset; returns a summary. Raises SystemExit with every problem found."""
    problems = []
    manifest = out / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"no manifest.csv in {out}")
    rows = list(csv.DictReader(manifest.open(newline="")))
    indices = sorted(int(r["index"]) for r in rows)
    if indices != list(range(count)):
        problems.append(f"manifest lists {len(rows)} images, expected indices 0..{count - 1}")
    labels = Counter(int(r["label"]) for r in rows)
    want = {k: v for k, v in balanced(count).items() if v}
    if dict(labels) != want:
        problems.append(f"labels {dict(labels)}, expected {want}")
    for row in rows:
        path = out / row["file"]
        if not path.is_file():
            problems.append(f"missing {row['file']}")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
            problems.append(f"{row['file']}: sha256 differs from the manifest")
    if problems:
        raise SystemExit("output check failed:\n  " + "\n  ".join(problems[:20]))
    return {"images": len(rows), "labels": dict(sorted(labels.items())),
            "shards": len({Path(r["file"]).parent.as_posix() for r in rows}), "manifest": str(manifest)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=8, help="images to generate (default 8)")
    ap.add_argument("--shards", type=int, default=2, help="shard jobs to fan out over the workers (default 2)")
    ap.add_argument("--out", type=Path, default=Path("synthetic"), help="download folder (default ./synthetic)")
    ap.add_argument("--steps", type=int, default=4, help="training steps (default 4: a smoke test)")
    ap.add_argument("--image-size", type=int, default=16, help="image side in pixels (default 16)")
    ap.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each job (default 1800)")
    args = ap.parse_args(argv)
    if args.count < 2 or not 1 <= args.shards <= args.count:
        ap.error("need --count >= 2 and 1 <= --shards <= --count")

    client = Client()
    tcfg = train_config(args.steps, args.image_size)
    train = run_job(client, "train", key_for("train", tcfg), args.timeout, "steps", config=tcfg,
                    name=f"bulk_generate train ({args.steps} steps)")

    gcfg = {"count": args.count, "seed": args.seed, "class_counts": balanced(args.count)}
    gkey = key_for("generate", {"train": train["id"], "shards": args.shards, **gcfg})
    gen = run_job(client, "generate", gkey, args.timeout, "shards", source_job=train["id"], config=gcfg,
                  shards=args.shards, name=f"bulk_generate {args.count} images")

    t0 = time.monotonic()
    files = client.download(gen["id"], args.out)  # checks each file's sha256 against its database record
    print(f"downloaded {len(files)} files to {args.out} in {time.monotonic() - t0:.1f}s", flush=True)
    summary = check_output(args.out, args.count)
    print(json.dumps({"train_job": train["id"], "generate_job": gen["id"], **summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
