"""Science subprocesses: started in their own process group, watched, and always cleaned up.

The Celery process never touches CUDA: every job's science runs in a child process whose
`CUDA_VISIBLE_DEVICES` is the job's lease. Training goes through `accelerate launch`.

Every command runs under a small guardian (`python -m worker.launcher PARENT -- CMD…`): it is the
process group leader and a child subreaper, so the launcher's grandchildren (the training
ranks, which torchrun even puts in sessions of their own) stay its descendants. When the
worker dies without cleaning up (SIGKILL, OOM killer), the guardian sees its parent change and
kills the whole tree: no orphan keeps training and writing into a run directory that the
requeued attempt may already be using.
"""

from __future__ import annotations

import ctypes
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
    return [*launch_prefix(num_processes, use_gpu, port), "-m", script_module, *args]


def launch_prefix(num_processes: int, use_gpu: bool, port: int | None = None) -> list[str]:
    """`accelerate launch` and its options, before the target (`-m module`, `script.py` or `--no_python prog`)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    if num_processes > 1:
        # `--cpu --num_processes 2` silently runs one process; --multi_gpu + Accelerator(cpu=True) gives gloo ranks.
        cmd += ["--multi_gpu"]
        if port is not None:
            cmd += ["--main_process_port", str(port)]
    elif not use_gpu:
        cmd += ["--cpu"]
    return [*cmd, "--mixed_precision", "no"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(visible_gpus: Sequence[int] | None, cpu_threads: int | None = None,
              processes: int = 1) -> dict[str, str]:
    """The environment of a job's science: its cards only, and its share of the CPU threads.

    `cpu_threads` is what one job may use (the worker's cores over its concurrency); a job of
    `processes` ranks splits it, so jobs side by side never oversubscribe the cores.
    """
    env = dict(os.environ)
    # The lease decides which cards the child sees; an empty string hides every card.
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in visible_gpus) if visible_gpus else ""
    env.setdefault("PYTHONUNBUFFERED", "1")
    budget = cpu_threads or os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, budget // max(1, processes))))
    return env


def run_watched(cmd: Sequence[str], *, env: dict[str, str], log_path: Path,
                on_tick: Callable[[], str | None], poll: float = C.PROGRESS_POLL_SECONDS,
                grace: float = C.CANCEL_GRACE_SECONDS, cwd: Path | None = None, lease_file: Path | None = None,
                on_start: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run `cmd`, calling `on_tick()` every `poll` seconds; when it returns STOP the child gets SIGTERM
    (it writes a final checkpoint), then SIGKILL after `grace`. Returns the exit code.
    With `lease_file`, the guardian also kills the command when the file's mtime (the renewal deadline
    the worker sets at each lease renewal) has passed: a frozen worker cannot leave it running."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(guarded(cmd, lease_file), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=cwd)
        if on_start is not None:
            on_start(proc)
        stop_sent: float | None = None
        try:
            while proc.poll() is None:
                time.sleep(poll)
                if on_tick() == STOP and stop_sent is None:
                    _signal_group(proc, signal.SIGTERM)
                    stop_sent = time.monotonic()
                if stop_sent is not None and time.monotonic() - stop_sent > grace:
                    kill_tree(proc.pid)
            on_tick()
            return proc.returncode
        finally:
            # Whatever happened (an exception in on_tick, the worker being stopped), no orphan survives.
            # The guardian ends only when its whole tree has; while it is unreaped its pid cannot be reused.
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    kill_tree(proc.pid)
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- the guardian -----------------------------------------------------------------------------
_PR_SET_CHILD_SUBREAPER = 36
GUARD_POLL_SECONDS = 0.2  # how often the guardian checks that the worker still lives


def guarded(cmd: Sequence[str], lease_file: Path | None = None) -> list[str]:
    """`cmd` wrapped in the guardian, which watches this (the worker) process and `lease_file`'s deadline."""
    lease = ["--lease", str(lease_file)] if lease_file is not None else []
    return [sys.executable, "-m", "worker.launcher", str(os.getpid()), *lease, "--", *cmd]


def lease_expired(lease_file: Path | None, now: float | None = None) -> bool:
    """Whether the renewal deadline the worker wrote (the file's mtime) has passed. A missing file is not
    expired (the worker writes it before starting the command; a clean-up may remove it at the end)."""
    if lease_file is None:
        return False
    try:
        deadline = os.stat(lease_file).st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) > deadline


def _descendants(root: int) -> list[int]:
    """Every live descendant of `root` (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])  # the name may hold spaces and ')'
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


def kill_tree(root: int, sig: int = signal.SIGKILL) -> None:
    """Signal every descendant of `root` (ranks in sessions of their own included), then its group and it."""
    for _ in range(3):  # again, for anything forked while we listed
        for pid in _descendants(root):
            _kill(pid, sig)
    try:
        os.killpg(root, sig)
    except (ProcessLookupError, PermissionError):
        pass
    _kill(root, sig)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _guard(parent: int, cmd: list[str], lease_file: Path | None = None) -> int:
    """Run `cmd`; reap it and every orphan it leaves; kill them all if `parent` dies, or stops renewing
    its lease (`lease_file`'s deadline passes: the worker is frozen or cut off). Returns its exit code."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent check below still works for direct children
        pass
    # A Python-level handler (not SIG_IGN, which exec would pass on): the group's SIGTERM is for
    # the science, which stops gracefully; the guardian waits for it.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    child = subprocess.Popen(cmd)
    code: int | None = None
    while True:
        if os.getppid() != parent:  # the worker is gone: nobody will upload or finish this run
            kill_tree(os.getpid())
            return 137
        if lease_expired(lease_file):  # the worker lives but renews nothing: another may get the job
            print(f"medgan guardian: the lease was not renewed by its deadline ({lease_file}); stopping the "
                  "science (self-fencing)", file=sys.stderr, flush=True)
            kill_tree(os.getpid())
            return 137
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # the command and every orphan it left have ended
            break
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)
            child.returncode = code
        if pid == 0:
            time.sleep(GUARD_POLL_SECONDS)
    code = 1 if code is None else code
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    _args = sys.argv[1:]
    _lease = None
    if len(_args) > 2 and _args[1] == "--lease":
        _lease = Path(_args[2])
        _args = [_args[0], *_args[3:]]
    if len(_args) < 3 or _args[1] != "--":
        sys.exit("usage: python -m worker.launcher PARENT_PID [--lease FILE] -- CMD ...")
    sys.exit(_guard(int(_args[0]), _args[2:], _lease))
