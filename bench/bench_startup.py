"""Start-up cost of the client and the CLI: `import scheduler.client` and `medgan --help`.

Each is a fresh interpreter, timed wall-clock against a bare `python -c pass` (the interpreter's own start)
in alternating runs, best of N; `python -X importtime` lists what each imported, so the figures say whether
torch (and SQLAlchemy, Celery) stayed out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench._timing import alternate

HEAVY = ("torch", "numpy", "sqlalchemy", "celery", "kombu", "alembic", "minio", "psycopg", "redis", "accelerate")
CASES = {  # name: (interpreter arguments, the module whose cumulative import time -X importtime reports)
    "import scheduler.client": (["-c", "import scheduler.client"], "scheduler.client"),
    "medgan --help": (["-m", "cli", "--help"], "cli"),
}


def _env() -> dict[str, str]:
    # No MEDGAN_ settings: neither command may need any to start.
    return {k: v for k, v in os.environ.items() if not k.startswith("MEDGAN_")}


def imported(argv: list[str], module: str) -> tuple[set[str], float]:
    """Top-level packages `python -X importtime *argv` imported, and the cumulative import time (s) it
    reports for `module`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True,
                          env=_env(), timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed: {proc.stderr[-2000:]}")
    packages, seconds = set(), 0.0
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        packages.add(name.split(".")[0])
        if name == module:
            seconds = int(parts[1]) / 1e6
    return packages, seconds


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], capture_output=True, env=_env(), timeout=120, check=True)
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    rounds = 3 if quick else 7
    rows = []
    for name, (argv, module) in CASES.items():
        got = alternate({"cmd": lambda: _wall(argv), "bare": lambda: _wall(["-c", "pass"])}, rounds)
        modules, import_s = imported(argv, module)
        present = [m for m in HEAVY if m in modules]
        t, base = min(got["cmd"]), min(got["bare"])
        rows.append({"name": f"{name} wall", "value": round(t * 1000, 1), "unit": "ms", "baseline": round(base * 1000, 1),
                     "ratio": round(t / base, 2),
                     "note": f"fresh interpreter, best of {rounds} alternating with `python -c pass` (baseline); "
                             f"-X importtime: {module} {import_s * 1000:.0f} ms cumulative, {len(modules)} top-level packages; "
                             f"torch {'PRESENT' if 'torch' in modules else 'absent'}; "
                             f"heavy packages loaded: {', '.join(present) or 'none'}"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
