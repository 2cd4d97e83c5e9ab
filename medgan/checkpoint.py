"""Checkpoints: full training state through Accelerate, plus exported generators.

Layout of one checkpoint (`RUN/checkpoints/step-000500/`):
    model.safetensors, model_1.safetensors, optimizer.bin, ...   accelerator.save_state
    random_states_<rank>.pkl                                      accelerate's RNG snapshot
    <name>.safetensors                                            exported modules (EMA generator, ...)
    config.json                                                   the TrainConfig (for load_generator)
    extra.json                                                    step, config hash, model name, loop state
    COMPLETE                                                      written LAST: file list with sizes

A checkpoint without COMPLETE is an interrupted write and is ignored (and pruned). The worker
uploads only complete ones. Loading never unpickles arbitrary objects: accelerate loads with
weights_only=True and our own modules are safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from medgan.config import TrainConfig, parse_checkpoint_choice
from medgan.errors import CheckpointError

COMPLETE = "COMPLETE"
EXTRA = "extra.json"
CONFIG = "config.json"
BEST = "best.json"  # RUN/best.json: the best-scoring probed checkpoint {"step", "score", "probes"}
_STEP_RE = re.compile(r"^step-(\d{6,})$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives."""
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def config_hash(cfg: TrainConfig) -> str:
    """Short stable hash of a config (sorted JSON), stored with each checkpoint."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        m = _STEP_RE.match(d.name)
        if m and d.is_dir():
            out.append((int(m.group(1)), d))
    return sorted(out)


def is_complete(ckpt_dir: Path) -> bool:
    """True when the checkpoint's COMPLETE marker exists (it is written last)."""
    return (Path(ckpt_dir) / COMPLETE).is_file()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest `checkpoints/step-XXXXXX` directory that has its COMPLETE file, or None."""
    for _, d in reversed(_step_dirs(run_dir)):
        if is_complete(d):
            return d
    return None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def export_generator(module: nn.Module, cfg: TrainConfig | None, ckpt_dir: Path,
                     name: str = "generator_ema") -> Path:
    """Write `module`'s weights as `<name>.safetensors` (+ `config.json`) into `ckpt_dir`.

    Loadable without accelerate by `load_generator`. Shared tensors are handled by
    safetensors' `save_model`.
    """
    from safetensors.torch import save_model

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"{name}.safetensors"
    save_model(_unwrap(module), str(path))
    if cfg is not None:
        _atomic_write(ckpt_dir / CONFIG, cfg.model_dump_json(indent=2))
    return path


def _unwrap(module: nn.Module) -> nn.Module:
    # DDP / torch.compile wrappers keep the real module in .module / ._orig_mod
    while hasattr(module, "module") or hasattr(module, "_orig_mod"):
        module = getattr(module, "module", None) or getattr(module, "_orig_mod")
    return module


def _file_list(ckpt_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(ckpt_dir.iterdir())
            if p.is_file() and p.name != COMPLETE and not p.name.endswith(".tmp")}


def save_checkpoint(accelerator, run_dir: Path, step: int, extra: dict[str, Any], keep: int, *,
                    exports: dict[str, nn.Module] | None = None,
                    config: TrainConfig | None = None, protect: set[int] | None = None) -> Path:
    """Save the full training state of `step` and prune to the `keep` newest checkpoints.

    Must be called on every process (accelerate gathers per-rank RNG states); only the
    main process writes our own files. `extra` must be JSON-serialisable and should hold
    `model` (checked on load) and any loop state; `exports` are modules written as
    safetensors (the EMA generator); `config` is written as config.json. COMPLETE is last.
    Checkpoints whose step is in `protect` (the best snapshot) survive pruning.
    """
    ckpt = checkpoint_dir(run_dir, step)
    if accelerator.is_main_process:
        if ckpt.exists():  # a previous attempt died mid-write: start clean
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(ckpt), safe_serialization=True)
    if accelerator.is_main_process:
        for name, module in (exports or {}).items():
            export_generator(module, config, ckpt, name)
        meta = {"step": int(step), **extra}
        if config is not None:
            meta.setdefault("model", config.model)
            meta["config_hash"] = config_hash(config)
        _atomic_write(ckpt / EXTRA, json.dumps(meta, indent=2, sort_keys=True))
        # COMPLETE lists every file with its size so a truncated upload/copy is detectable
        _atomic_write(ckpt / COMPLETE, json.dumps({"step": int(step), "files": _file_list(ckpt)}, indent=2))
        prune_checkpoints(run_dir, keep, protect)
    accelerator.wait_for_everyone()
    return ckpt


def prune_checkpoints(run_dir: Path, keep: int, protect: set[int] | None = None) -> list[Path]:
    """Delete all but the `keep` newest complete checkpoints (and those in `protect`), and incomplete
    ones older than the newest complete one. Returns the deleted directories."""
    dirs = _step_dirs(run_dir)
    protect = protect or set()
    complete = [(s, d) for s, d in dirs if is_complete(d)]
    newest_step = max((s for s, _ in complete), default=-1)
    doomed = [d for s, d in (complete[:-keep] if keep > 0 else complete) if s not in protect]
    doomed += [d for s, d in dirs if not is_complete(d) and s < newest_step]
    for d in doomed:
        shutil.rmtree(d, ignore_errors=True)
    return doomed


def select_checkpoint(run_dir: Path, which: str = "last") -> Path:
    """The complete checkpoint of a local run chosen by `which`: "last", "best" (RUN/best.json, written
    by the probes) or "step-N". Raises CheckpointError naming what exists when the choice is not there."""
    choice = parse_checkpoint_choice(which)
    have = [s for s, d in _step_dirs(run_dir) if is_complete(d)]
    if not have:
        raise CheckpointError(f"run {run_dir} has no complete checkpoint")
    if choice == "last":
        step = have[-1]
    elif choice == "best":
        try:
            step = int(json.loads((Path(run_dir) / BEST).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"run {run_dir} has no best snapshot ({BEST}: {exc}); "
                                  f"its probes are off or it never reached a checkpoint") from None
    else:
        step = choice
    if step not in have:
        raise CheckpointError(f"run {run_dir} has no complete checkpoint step-{step:06d}; it has "
                              + ", ".join(f"step-{s:06d}" for s in have))
    return checkpoint_dir(run_dir, step)


def verify_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """Check COMPLETE and the files it lists; return extra.json. Raises CheckpointError."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint {ckpt_dir} does not exist")
    if not is_complete(ckpt_dir):
        raise CheckpointError(f"checkpoint {ckpt_dir} is incomplete (no {COMPLETE} file)")
    try:
        listing = json.loads((ckpt_dir / COMPLETE).read_text())
        meta = json.loads((ckpt_dir / EXTRA).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt_dir} is corrupt: {exc}") from exc
    for name, size in listing.get("files", {}).items():
        p = ckpt_dir / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir} is corrupt: {name} is missing")
        if p.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint {ckpt_dir} is corrupt: {name} has {p.stat().st_size} bytes, expected {size}")
    return meta


def load_checkpoint(accelerator, ckpt_dir: Path, expect_model: str, *,
                    modules: dict[str, nn.Module] | None = None) -> dict[str, Any]:
    """Restore the state saved by `save_checkpoint` into the prepared objects of `accelerator`.

    `modules` are exported modules to restore from their safetensors (the EMA generator).
    Returns extra.json. Raises CheckpointError when the checkpoint is incomplete, corrupt
    or belongs to another model.
    """
    from safetensors.torch import load_model

    meta = verify_checkpoint(ckpt_dir)
    if meta.get("model") != expect_model:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} holds model {meta.get('model')!r}, expected {expect_model!r}")
    try:
        accelerator.load_state(str(ckpt_dir))
        for name, module in (modules or {}).items():
            load_model(_unwrap(module), str(Path(ckpt_dir) / f"{name}.safetensors"),
                       device=str(next(module.parameters()).device))
    except CheckpointError:
        raise
    except Exception as exc:  # shape mismatch, truncated safetensors, unpickling refused ...
        raise CheckpointError(f"checkpoint {ckpt_dir} could not be loaded: {type(exc).__name__}: {exc}") from exc
    return meta


def read_config(ckpt_dir: Path) -> TrainConfig:
    """The TrainConfig stored in a checkpoint's config.json."""
    p = Path(ckpt_dir) / CONFIG
    try:
        return TrainConfig.model_validate_json(p.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt_dir} has no readable {CONFIG}: {exc}") from exc


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (provenance of generated images)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_generator(ckpt_dir: Path, name: str = "generator_ema",
                   builder: Callable[[TrainConfig], nn.Module] | None = None,
                   device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Load an exported generator (eval mode) and its TrainConfig; no accelerate needed.

    `builder(cfg) -> nn.Module` builds the empty network; by default the dcgan/cgan
    generators of `medgan.models`. Other model families pass their own builder. Falls back
    to `generator.safetensors` when `name` is absent (EMA off).
    """
    from safetensors.torch import load_model

    ckpt_dir = Path(ckpt_dir)
    verify_checkpoint(ckpt_dir)
    cfg = read_config(ckpt_dir)
    if builder is None:
        if cfg.model not in ("dcgan", "cgan"):
            raise CheckpointError(f"no default builder for model {cfg.model!r}; pass builder=")
        from medgan.models import build_generator

        builder = build_generator
    path = ckpt_dir / f"{name}.safetensors"
    if not path.is_file():
        path = ckpt_dir / "generator.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} has no exported generator ({name}.safetensors)")
    net = builder(cfg)
    try:
        if getattr(net, "uses_bank", False):  # the mask bank's size is the run's: read it before loading
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                net.set_mask_bank(f.get_tensor("mask_bank"), f.get_tensor("lesion_classes"))
        load_model(net, str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"generator weights in {path} do not load: {exc}") from exc
    return net.to(device).eval(), cfg
