"""`medgan evaluate --synthetic DIR`: judge any generator's output on this machine, no job system needed.

The same science as an evaluate job (`medgan.evaluate.evaluate`): sanity gates, distribution metrics
with their real-vs-real floor, and the utility study, then report.html beside metrics.json. The real
images are a folder (read by `medgan.data`) or, by default, the bundled phantom.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.errors import MedganUserError


def evaluate_local(synthetic: Path, real: Path | None, out: Path, config: dict[str, Any],
                   phantom: dict[str, Any] | None, progress: Any = None) -> dict[str, Any]:
    """Run the evaluation in this process; returns {"out", "report", "status", "verdicts", "gates"}."""
    from pydantic import ValidationError

    from medgan.callbacks import Callbacks
    from medgan.config import EvaluateConfig, PhantomSpec
    from medgan.errors import MedganError
    from medgan.evaluate import evaluate
    from medgan.evaluate.report import render_report

    if not Path(synthetic).is_dir():
        raise MedganUserError(f"--synthetic {synthetic}: not a folder")
    if real is not None and not Path(real).exists():
        raise MedganUserError(f"--real {real}: not found")
    try:
        cfg = EvaluateConfig(**config)
        spec = None if real is not None else PhantomSpec(**(phantom or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MedganUserError(f"config {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    cb = Callbacks(on_progress=progress) if progress else Callbacks()
    try:
        metrics = evaluate(cfg, Path(real) if real else None, Path(synthetic), Path(out), phantom=spec, callbacks=cb)
    except MedganError as exc:
        raise MedganUserError(str(exc)) from None
    report = render_report({f"evaluate {Path(synthetic).name}": Path(out)}, Path(out) / "report.html",
                           f"medgan evaluate: {Path(synthetic)}")
    gates = metrics.get("gates") or {}
    return {"out": str(out), "report": str(report), "status": metrics["status"], "verdicts": metrics["verdicts"],
            "gates": gates.get("line"), "gates_passed": gates.get("passed"), "flag": metrics.get("flag")}
