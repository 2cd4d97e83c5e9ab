"""`python -m worker.science KIND INVOCATION.json`: the child process for generate/enhance/evaluate.

It runs one science function with callbacks that write `stats.jsonl`, turns SIGTERM into
`should_stop`, and always leaves `result.json` (docs/INTERFACES.md). It imports no database,
broker or store code: the parent worker does all of that.
"""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from medgan.callbacks import Callbacks
from medgan.errors import MedganError


def _callbacks(run_dir: Path, stop: threading.Event) -> Callbacks:
    stats = open(run_dir / "stats.jsonl", "a", buffering=1)
    t0 = time.time()

    def on_progress(step: int, total: int, extra: dict[str, Any]) -> None:
        stats.write(json.dumps({"step": step, "total": total, "time": round(time.time() - t0, 3), **extra}) + "\n")

    return Callbacks(on_progress=on_progress, should_stop=stop.is_set)


def _generate(inv: dict, cb: Callbacks) -> dict:
    from medgan.config import GenerateConfig
    from medgan.generate import generate

    out_dir = Path(inv["out_dir"])
    rows = generate(Path(inv["checkpoint_dir"]), out_dir, GenerateConfig(**inv["config"]),
                    inv["start"], inv["count"], inv["provenance"], cb)
    if rows:
        with open(out_dir / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return {"count": len(rows)}


def _enhance(inv: dict, cb: Callbacks) -> dict:
    from medgan.config import EnhanceConfig
    from medgan.enhance import enhance_dataset

    refs = [Path(p) for p in inv["references"]] if inv.get("references") else None
    model_dir = Path(inv["model_dir"]) if inv.get("model_dir") else None
    return enhance_dataset(EnhanceConfig(**inv["config"]), [Path(p) for p in inv["inputs"]],
                           Path(inv["out_dir"]), refs, model_dir, cb)


def _evaluate(inv: dict, cb: Callbacks) -> dict:
    from medgan.config import EvaluateConfig, PhantomSpec
    from medgan.evaluate import evaluate

    phantom = PhantomSpec(**inv["phantom"]) if inv.get("phantom") else None
    real = Path(inv["real_dir"]) if inv.get("real_dir") else None
    return evaluate(EvaluateConfig(**inv["config"]), real, Path(inv["synthetic_dir"]), Path(inv["out_dir"]),
                    phantom=phantom, callbacks=cb)


KINDS = {"generate": _generate, "enhance": _enhance, "evaluate": _evaluate}


def main(argv: list[str]) -> int:
    kind, inv_path = argv
    inv = json.loads(Path(inv_path).read_text())
    run_dir = Path(inv["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    code = 0
    try:
        summary = KINDS[kind](inv, _callbacks(run_dir, stop))
        result = {"status": "stopped" if stop.is_set() else "completed", "summary": summary, "reason": None}
    except MedganError as exc:
        result, code = {"status": "failed", "reason": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}, 2
    except (ValueError, OSError) as exc:
        result, code = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}, 2
    (run_dir / "result.json").write_text(json.dumps(result, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
