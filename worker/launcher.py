"""Science subprocesses: started in their own process group, watched, and always cleaned up.

The Celery process never touches CUDA: every job's science runs in a child process whose
`CUDA_VISIBLE_DEVICES` is the job's lease. Training goes through `accelerate launch`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from scheduler import constants as C

# Returned by the watcher to ask the child to stop (cancel, lost lease).
STOP = "stop"


def accelerate_command(script_module: str, args: Sequence[str], num_processes: int, use_gpu: bool,
                       port: int | None = None) -> list[str]:
    """The `accelerate launch` command line for `num_processes` processes (see PITFALLS for the CPU case)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    if num_processes > 1:
        # `--cpu --num_processes 2` silently runs one process; --multi_gpu + Accelerator(cpu=True) gives gloo ranks.
        cmd += ["--multi_gpu"]
        if port is not None:
            cmd += ["--main_process_port", str(port)]
    elif not use_gpu:
        cmd += ["--cpu"]
    cmd += ["--mixed_precision", "no", "-m", script_module, *args]
    return cmd


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(visible_gpus: Sequence[int] | None) -> dict[str, str]:
    env = dict(os.environ)
    # The lease decides which cards the child sees; an empty string hides every card.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in visible_gpus) if visible_gpus else ""
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, len(visible_gpus or [0])))))
    return env


def run_watched(cmd: Sequence[str], *, env: dict[str, str], log_path: Path,
                on_tick: Callable[[], str | None], poll: float = C.PROGRESS_POLL_SECONDS,
                grace: float = C.CANCEL_GRACE_SECONDS) -> int:
    """Run `cmd`, calling `on_tick()` every `poll` seconds; when it returns STOP the child gets SIGTERM
    (it writes a final checkpoint), then SIGKILL after `grace`. Returns the exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        stop_sent: float | None = None
        try:
            while proc.poll() is None:
                time.sleep(poll)
                if on_tick() == STOP and stop_sent is None:
                    _signal_group(proc, signal.SIGTERM)
                    stop_sent = time.monotonic()
                if stop_sent is not None and time.monotonic() - stop_sent > grace:
                    _signal_group(proc, signal.SIGKILL)
            on_tick()
            return proc.returncode
        finally:
            # Whatever happened (an exception in on_tick, the worker being stopped), no orphan survives.
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
