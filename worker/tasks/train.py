"""`train` jobs: resume from the newest stored checkpoint, launch `medgan.train` under accelerate
on the leased cards, stream progress, upload checkpoints as they complete, then everything else."""

from __future__ import annotations

import json
import logging
import shutil

from worker.launcher import accelerate_command, free_port
from worker.runtime import JobRun
from worker.subproc import run_science
from worker.tasks._common import fetch_checkpoint, newest_checkpoint, prune_stored_checkpoints, science_config

log = logging.getLogger("medgan.worker")


def handle(run: JobRun) -> None:
    spec = run.spec
    run_dir = run.work_dir / "run"
    # The store is the truth: a run directory left on this host by an earlier attempt (one that lost its
    # lease here, say) may hold checkpoints the job's lineage never accepted; resume only from the store.
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    # A requeued run resumes: its newest checkpoint comes back from the store (maybe another host).
    if newest_checkpoint(run.store, run.job_id, run.settings) is not None:
        fetch_checkpoint(run, run.job_id, run_dir / "checkpoints")
    (run_dir / "config.json").write_text(science_config(run).model_dump_json(indent=2))
    data_dir = run.dataset(spec.dataset) if spec.dataset else None

    uploaded: set[str] = set()
    tb_sizes: dict[str, int] = {}

    def upload_checkpoint(ckpt) -> None:
        if ckpt.name in uploaded or not (ckpt / "COMPLETE").is_file():
            return
        try:
            # COMPLETE goes last, so a checkpoint in the store without it is never used.
            run.upload_tree(ckpt, f"{run.prefix}/checkpoints/{ckpt.name}", "checkpoint",
                            skip=lambda p: p.name == "COMPLETE")
            run.upload(ckpt / "COMPLETE", f"{run.prefix}/checkpoints/{ckpt.name}/COMPLETE", "checkpoint")
            uploaded.add(ckpt.name)
            # The local best.json may name a step the store's does not yet: it is uploaded after its checkpoint.
            prune_stored_checkpoints(run, spec.config.keep_checkpoints, protect={s for s in [local_best()] if s})
        except FileNotFoundError:
            log.info("checkpoint %s was pruned while uploading; the next one will be", ckpt.name)

    def local_best() -> int | None:
        try:
            return int(json.loads((run_dir / "best.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def upload_new() -> None:
        # Only the newest complete checkpoint matters for a resume, and the trainer prunes old ones
        # (keep_checkpoints) while we read: upload the newest; one pruned under us waits for the next.
        # The best snapshot (best.json, never pruned by the trainer) goes up too, for generate --checkpoint best.
        ckpts = run_dir / "checkpoints"
        markers = sorted(ckpts.glob("step-*/COMPLETE")) if ckpts.exists() else []
        if markers:
            upload_checkpoint(markers[-1].parent)
        best = run_dir / "best.json"
        if best.is_file():
            try:
                step = int(json.loads(best.read_text())["step"])
            except (OSError, ValueError, KeyError):
                step = None  # being rewritten: the next tick sees it whole
            if step is not None and (ckpts / f"step-{step:06d}").is_dir():
                upload_checkpoint(ckpts / f"step-{step:06d}")
                if f"step-{step:06d}" in uploaded:  # best.json never names a checkpoint the store lacks
                    run.upload(best, f"{run.prefix}/best.json", "best")
        samples = run_dir / "samples"
        for png in sorted(samples.glob("*.png")) if samples.exists() else []:
            if png.name not in uploaded:
                run.upload(png, f"{run.prefix}/samples/{png.name}", "sample")
                uploaded.add(png.name)
        # TensorBoard event files grow while training: re-upload one whenever its size changed
        tb = run_dir / "tensorboard"
        for ev in sorted(tb.rglob("events.out.tfevents.*")) if tb.exists() else []:
            rel = ev.relative_to(run_dir).as_posix()
            size = ev.stat().st_size
            if tb_sizes.get(rel) != size:
                run.upload(ev, f"{run.prefix}/{rel}", "tensorboard")
                tb_sizes[rel] = size

    nproc = max(1, len(run.cards))
    args = ["--config", str(run_dir / "config.json"), "--run-dir", str(run_dir)]
    if data_dir is not None:
        args += ["--data", str(data_dir)]
    cmd = accelerate_command("medgan.train", args, nproc, run.uses_gpu, port=free_port() if nproc > 1 else None)
    env = run.child_env(processes=nproc)
    try:
        result = run_science(run, cmd, run_dir, env, extra_tick=upload_new)
    finally:
        upload_new()  # a stopped or failed run still keeps its last checkpoint
        for name, kind in (("config.json", "config"), ("stats.jsonl", "stats"), ("result.json", "result")):
            if (run_dir / name).exists():
                run.upload(run_dir / name, f"{run.prefix}/{name}", kind)
        if (run.work_dir / "job.log").exists():
            run.upload(run.work_dir / "job.log", f"{run.prefix}/train.log", "log")
    run.progress(result.get("step", 0), spec.config.steps, force=True)
    run.metric("final_step", result.get("step", 0))
