"""`script` jobs (`medgan run`): a user's own code, run under `accelerate launch` on the leased cards.

What the script gets (its working directory is a fresh copy of the code snapshot):

| variable | what |
|---|---|
| `CUDA_VISIBLE_DEVICES` | exactly the leased cards (empty on a CPU job) |
| `MEDGAN_JOB_ID`, `MEDGAN_ATTEMPT` | the job and which run of it this is (1, 2, … after requeues) |
| `MEDGAN_OUTPUT_DIR` | write results here: every file becomes an artifact under `jobs/<id>/outputs/` (synced while it runs and at the end) |
| `MEDGAN_CHECKPOINT_DIR` | write checkpoints here: synced to the store while it runs, and restored (the newest snapshot) when the job is requeued or preempted, on any host; resume from what you find in it |
| `MEDGAN_DATA_DIR` | the `--data` dataset, downloaded and checked (unset without `--data`) |
| `MEDGAN_STATS_FILE` | optional: append JSON lines `{"step": 10, "total": 100, "loss_g": 1.2}` for progress, ETA and metrics |

Its stdout and stderr stream into the job's live log (`medgan jobs logs ID -f`) and `jobs/<id>/job.log`. The
worker's own MEDGAN_* settings (database URL, store keys) are not passed on.

Checkpoint snapshots: the folder is snapshotted when it has been quiet (no file changed) for a moment and
differs from the last snapshot; a file changing during the upload abandons that snapshot. Each snapshot is
a manifest `jobs/<id>/checkpoints/snapshot-NNNNNN.jsonl` (path, size, sha256) over content-addressed
`jobs/<id>/checkpoints/blobs/<sha256>` objects, written last, so a half-uploaded snapshot is never restored.
Write checkpoints atomically (to a temporary name, then rename) and a snapshot never holds a torn file.
Only the attempt that holds the job writes: a stale one (lease lost) uploads nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

from scheduler.code import materialise_code, safe_relpath
from scheduler.datasets import object_key
from scheduler.db import Artifact, session_scope
from scheduler.store import sha256_file
from worker.launcher import free_port, launch_prefix
from worker.runtime import JobFailed, JobRun
from worker.subproc import run_science

log = logging.getLogger("medgan.worker")
_SNAPSHOT = re.compile(r"/checkpoints/snapshot-(\d{6})\.jsonl$")
QUIET_SECONDS = 1.0  # a checkpoint folder unchanged this long is snapshotted
OUTPUT_SYNC_SECONDS = 5.0  # outputs are uploaded at most this often while the script runs
KEEP_SNAPSHOTS = 2  # newest snapshots kept in the store; blobs only they use are deleted with the others
PYTHONS = re.compile(r"^(python(3(\.\d+)?)?)$")


def launch_target(command: list[str]) -> list[str]:
    """What follows `accelerate launch …` for a user's argv: `python x.py a` → `x.py a`; `python -m m a` →
    `-m m a`; anything else (`bash run.sh`, `./train`) → `--no_python prog …`, started once per process."""
    prog, *rest = command
    if PYTHONS.match(os.path.basename(prog)) or prog == sys.executable:
        if not rest:
            raise JobFailed("the command is a bare `python`: name a script (python train.py) or a module (python -m pkg)")
        if rest[0] == "-m" and len(rest) > 1:
            return ["-m", *rest[1:]]
        if rest[0].startswith("-"):
            raise JobFailed(f"python option {rest[0]!r} before the script is not supported; put the script first")
        return rest
    return ["--no_python", *command]


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            out[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


class CheckpointSync:
    """Snapshots of $MEDGAN_CHECKPOINT_DIR in the store, and the restore of the newest one."""

    def __init__(self, run: JobRun, root: Path):
        self.run, self.root = run, root
        self.prefix = f"{run.prefix}/checkpoints"
        self.committed: dict[str, tuple[int, int]] | None = None
        self.seen: tuple[float, dict[str, tuple[int, int]]] | None = None
        self.blobs = {o.key.rsplit("/", 1)[1] for o in run.store.list(f"{self.prefix}/blobs/")}
        self.snapshots = sorted(int(m.group(1)) for o in run.store.list(f"{self.prefix}/")
                                if (m := _SNAPSHOT.search(o.key)))

    def restore(self) -> int | None:
        """Fill the (emptied) folder from the newest snapshot; returns its number, or None."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        if not self.snapshots:
            return None
        seq = self.snapshots[-1]
        raw = self.run.store.get_bytes(f"{self.prefix}/snapshot-{seq:06d}.jsonl").decode()
        for entry in (json.loads(line) for line in raw.splitlines() if line.strip()):
            target = self.root / safe_relpath(entry["path"])
            self.run.store.get_file(f"{self.prefix}/blobs/{entry['sha256']}", target)
            if sha256_file(target) != entry["sha256"]:
                raise JobFailed(f"checkpoint snapshot {seq} of job {self.run.job_id}: {entry['path']} is corrupt")
        self.committed = _listing(self.root)
        return seq

    def tick(self, final: bool = False) -> bool:
        """Snapshot the folder if it changed and has been quiet (always, when `final`); True if one was made."""
        now = time.monotonic()
        listing = _listing(self.root) if self.root.exists() else {}
        if not listing or listing == self.committed:
            self.seen = (now, listing)
            return False
        if not final:
            if self.seen is None or self.seen[1] != listing:
                self.seen = (now, listing)
                return False
            if now - self.seen[0] < QUIET_SECONDS:
                return False
        return self._snapshot(listing)

    def _snapshot(self, listing: dict[str, tuple[int, int]]) -> bool:
        if not self.run.holds_lease():
            return False  # fencing: a stale attempt never writes into the job's prefix
        entries = []
        for rel, (size, _mtime) in listing.items():
            path = self.root / rel
            try:
                digest = sha256_file(path)
                if digest not in self.blobs:
                    self.run.upload(path, f"{self.prefix}/blobs/{digest}", "checkpoint")
                    self.blobs.add(digest)
            except FileNotFoundError:  # the script pruned or renamed it while we read the folder: not quiet yet
                self.seen = None
                return False
            entries.append({"path": rel, "size": size, "sha256": digest})
        if _listing(self.root) != listing:
            return False  # a file changed while we read it: the next quiet moment makes a whole snapshot
        seq = (self.snapshots[-1] + 1) if self.snapshots else 1
        manifest = self.run.work_dir / "snapshot.jsonl"
        manifest.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        if not self.run.holds_lease():
            return False
        self.run.upload(manifest, f"{self.prefix}/snapshot-{seq:06d}.jsonl", "checkpoint")
        self.snapshots.append(seq)
        self.committed = listing
        self._prune()
        return True

    def _prune(self) -> None:
        """Keep the newest KEEP_SNAPSHOTS snapshots and the blobs they use (objects and their rows)."""
        old, keep = self.snapshots[:-KEEP_SNAPSHOTS], self.snapshots[-KEEP_SNAPSHOTS:]
        if not old:
            return
        used: set[str] = set()
        for seq in keep:
            raw = self.run.store.get_bytes(f"{self.prefix}/snapshot-{seq:06d}.jsonl").decode()
            used |= {json.loads(line)["sha256"] for line in raw.splitlines() if line.strip()}
        gone = [f"{self.prefix}/snapshot-{seq:06d}.jsonl" for seq in old]
        gone += [f"{self.prefix}/blobs/{b}" for b in self.blobs - used]
        with session_scope(self.run.settings.db_url) as s:
            s.query(Artifact).filter(Artifact.job_id == self.run.job_id, Artifact.key.in_(gone)).delete(
                synchronize_session=False)
        for key in gone:
            self.run.store.delete(key)
        self.blobs &= used
        self.snapshots = keep


class OutputSync:
    """$MEDGAN_OUTPUT_DIR → artifacts under jobs/<id>/outputs/ (new or changed files, once quiet)."""

    def __init__(self, run: JobRun, root: Path):
        self.run, self.root = run, root
        self.sent: dict[str, tuple[int, int]] = {}
        self.last = 0.0
        self.previous: dict[str, tuple[int, int]] = {}

    def tick(self, final: bool = False) -> int:
        now = time.monotonic()
        if not final and now - self.last < OUTPUT_SYNC_SECONDS:
            return 0
        self.last = now
        listing = _listing(self.root) if self.root.exists() else {}
        # While it runs, a file is sent once it looked the same on two syncs; at the end, everything.
        ready = {r: sig for r, sig in listing.items() if self.sent.get(r) != sig and (final or self.previous.get(r) == sig)}
        self.previous = listing
        if not ready or not self.run.holds_lease():
            return 0
        for rel, sig in ready.items():
            key = f"{self.run.prefix}/outputs/{object_key(rel)}"  # odd file names get safe keys
            try:
                self.run.upload(self.root / rel, key, "output")
            except Exception as exc:  # noqa: BLE001 - an odd file name must not lose the run
                if final:
                    raise JobFailed(f"output {rel!r} could not be stored: {exc}") from None
                continue
            self.sent[rel] = sig
        return len(ready)


def handle(run: JobRun) -> None:
    spec = run.spec
    code_dir = materialise_code(run.store, spec.code, run.work_dir / "code")
    out_dir, ckpt_dir, run_dir = run.work_dir / "output", run.work_dir / "checkpoint", run.work_dir / "run"
    for d in (out_dir, run_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    ckpts, outputs = CheckpointSync(run, ckpt_dir), OutputSync(run, out_dir)
    restored = ckpts.restore()
    if restored is not None:
        log.info("job %s: checkpoint snapshot %d restored into $MEDGAN_CHECKPOINT_DIR", run.job_id, restored)
    nproc = max(1, len(run.cards))
    env = {k: v for k, v in run.child_env(processes=nproc).items() if not k.startswith("MEDGAN_")}
    env.update(spec.env)
    env.update(MEDGAN_JOB_ID=run.job_id, MEDGAN_ATTEMPT=str(run.attempt), MEDGAN_OUTPUT_DIR=str(out_dir),
               MEDGAN_CHECKPOINT_DIR=str(ckpt_dir), MEDGAN_STATS_FILE=str(run_dir / "stats.jsonl"))
    if spec.dataset:
        env["MEDGAN_DATA_DIR"] = str(run.dataset(spec.dataset))
    if restored is not None:
        env["MEDGAN_RESTORED_SNAPSHOT"] = str(restored)
    cmd = [*launch_prefix(nproc, run.uses_gpu, free_port() if nproc > 1 else None), *launch_target(spec.command)]

    def tick() -> None:
        ckpts.tick()
        outputs.tick()

    try:
        run_science(run, cmd, run_dir, env, extra_tick=tick, cwd=code_dir, expect_result=False)
    finally:
        # Stopped (cancel, preemption) or failed: its last checkpoint and outputs are kept, if it still owns
        # the job; after a lost lease nothing is written.
        if run.holds_lease():
            ckpts.tick(final=True)
            outputs.tick(final=True)
            for path, key, kind in ((run.work_dir / "job.log", "job.log", "log"),
                                    (run_dir / "stats.jsonl", "stats.jsonl", "stats")):
                if path.exists():
                    run.upload(path, f"{run.prefix}/{key}", kind)
