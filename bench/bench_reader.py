"""Decompression bombs: each format's file declaring far more pixels than any limit, refused by the
reader (medgan.data.read_image) from its header. Demand (issue 13): under 1 s and under 100 MB extra.

Each measurement runs in a fresh process so its peak RSS is its own: the process first reads a good
64 x 64 file of the same format (imports and decoder start-up: the baseline), then the bomb, best of 5.
Control: the same 30000 x 30000 PNG given to the decoder without the header check (what the old reader
did), in a process capped at 3 GB, so the memory figure is shown able to see a bomb.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("png", "jpeg", "tiff", "bmp", "dicom", "nifti", "npz")

_PROBE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from medgan.data import read_image, ReadError
good, bomb = sys.argv[1], sys.argv[2]
t0 = time.perf_counter(); read_image(good); t_good = time.perf_counter() - t0
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best, reason = float("inf"), None
for _ in range(5):
    t0 = time.perf_counter()
    try:
        read_image(bomb)
        reason = "READ (not refused)"
    except ReadError as err:
        reason = err.reason + ": " + err.detail
    best = min(best, time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"refuse_s": best, "good_s": t_good, "extra_mb": (peak - base) / 1024, "reason": reason}}))
"""

_CONTROL = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
import cv2, numpy as np
data = np.fromfile(sys.argv[1], dtype=np.uint8)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    out = "decoded" if img is not None else "failed"
except Exception as exc:
    out = type(exc).__name__
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"s": dt, "extra_mb": (peak - base) / 1024, "outcome": out}))
"""


def _run(code: str, *args: str, timeout: float = 300) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                         cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from tests.fault.hostile import EXT, good, huge

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            g, b = Path(tmp) / f"good{EXT[fmt]}", Path(tmp) / f"bomb{EXT[fmt]}"
            g.write_bytes(good(fmt))
            b.write_bytes(huge(fmt))
            r = _run(_PROBE.format(root=str(ROOT)), str(g), str(b))
            rows.append({"name": f"{fmt} bomb refused ({b.stat().st_size:,} B file)", "value": r["refuse_s"] * 1e3,
                         "unit": "ms", "baseline": r["good_s"] * 1e3,
                         "ratio": r["refuse_s"] / max(r["good_s"], 1e-9),
                         "note": f"extra peak RSS {r['extra_mb']:.1f} MB; baseline: reading a good 64x64 {fmt} "
                                 f"in the same process; {r['reason'][:90]}"})
        if not quick:
            b = Path(tmp) / "bomb.png"
            b.write_bytes(huge("png"))
            c = _run(_CONTROL, str(b))
            rows.append({"name": "control: the same PNG bomb decoded without the header check", "value": c["s"] * 1e3,
                         "unit": "ms", "note": f"extra peak RSS {c['extra_mb']:.0f} MB ({c['outcome']}; process capped "
                                               "at 3 GB): the memory figure does see a bomb"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
