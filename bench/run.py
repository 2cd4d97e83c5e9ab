"""`make bench`: run every bench/bench_*.py and write BENCHMARKS.md (machine, date, figures).

Each benchmark measures a ratio against a baseline run in the same process, because this
machine is shared and noisy. `python -m bench.run --quick` runs shorter versions;
`--only NAME` runs one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUTO_START = "<!-- bench:auto:start -->"
AUTO_END = "<!-- bench:auto:end -->"


def machine(load: float) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, {gpu}; load average {load:.1f} when the run "
            f"started (the machine is shared: ratios within one run are the figures to read)")


HEADER = ["benchmark", "figure", "value", "unit", "baseline", "ratio", "measured", "note"]


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        v = round(v, 4)
    return str(v).replace("|", "/")


def table(results: dict[str, list[dict]], stamp: str, old_rows: list[str]) -> str:
    """New rows for the benchmarks just run; the previous rows of the others are kept as they were."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    kept = [r for r in old_rows if r.split("|")[1].strip() not in results]
    for name, rows in results.items():
        for r in rows:
            # Context a benchmark returned beside the standard keys (sizes, seeds...) goes into the note.
            extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("name", "value", "unit", "baseline",
                                                                           "ratio", "note"))
            note = "; ".join(x for x in (r.get("note"), extra) if x)
            lines.append("| " + " | ".join(_cell(x) for x in (
                name, r.get("name"), r.get("value"), r.get("unit"), r.get("baseline"), r.get("ratio"), stamp,
                note)) + " |")
    body = sorted(lines[2:] + kept, key=lambda l: l.split("|")[1].strip())  # stable: order kept within one
    return "\n".join(lines[:2] + body)


def _old_rows(text: str) -> list[str]:
    if AUTO_START not in text:
        return []
    block = text.split(AUTO_START, 1)[1].split(AUTO_END, 1)[0]
    rows = [l for l in block.splitlines() if l.startswith("| ") and not l.startswith("| benchmark")]
    return [r for r in rows if len(r.split("|")) == len(HEADER) + 2]  # rows of the current layout only


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", action="append", default=[])
    args = ap.parse_args()
    names = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
    unknown = [o for o in args.only if o not in names and f"bench_{o}" not in names]
    if unknown:
        ap.error(f"no benchmark {', '.join(unknown)}; there are {', '.join(n.removeprefix('bench_') for n in names)}")
    if args.only:
        names = [n for n in names if n in args.only or n.removeprefix("bench_") in args.only]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # before our own work adds to it
    results: dict[str, list[dict]] = {}
    failed = []
    for name in names:
        t0 = time.time()
        print(f"== {name}", flush=True)
        try:
            rows = importlib.import_module(f"bench.{name}").run(quick=args.quick)
            results[name.removeprefix("bench_")] = rows
            for r in rows:
                print("  ", r, flush=True)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"   ({time.time() - t0:.0f} s)", flush=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC{' quick' if args.quick else ''} @{rev or '?'}"
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = (f"{AUTO_START}\n## Figures\n\nMachine of the latest run: {machine(load)}\n\n"
             f"{table(results, stamp, _old_rows(text))}\n\n{'Failed: ' + ', '.join(failed) if failed else ''}\n"
             f"{AUTO_END}")
    if AUTO_START in text:
        head, rest = text.split(AUTO_START, 1)
        text = head + block + rest.split(AUTO_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
