"""Benchmark of the evaluation: distance metrics on feature matrices, and evaluate() on the phantom.

`run(quick)` returns one dict per measurement: {"name", "value", "unit", ...context}.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench._timing import best_of


def _distance_rows(quick: bool) -> list[dict]:
    from medgan.evaluate.distance import fid, kid, precision_recall

    rng = np.random.default_rng(0)
    rows = []
    for n, d in ([(500, 64)] if quick else [(500, 64), (2048, 64), (2048, 2048)]):
        a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.1
        ctx = {"n": n, "dim": d}
        rows.append({"name": "fid_seconds", "value": best_of(lambda: fid(a, b, "bench"), 1)[0], "unit": "s", **ctx})
        rows.append({"name": "kid_seconds", "value": best_of(lambda: kid(a, b, "bench", 50, 100), 1)[0], "unit": "s",
                     "subsets": 50, "subset_size": 100, **ctx})
        rows.append({"name": "precision_recall_seconds", "value": best_of(lambda: precision_recall(a, b, "bench"), 1)[0],
                     "unit": "s", "k": 3, **ctx})
    return rows


def _evaluate_rows(quick: bool) -> list[dict]:
    import csv

    from PIL import Image

    from medgan.config import EvaluateConfig, PhantomSpec
    from medgan.evaluate import evaluate
    from medgan.phantom import make_phantom

    count = 96 if quick else 256
    real = PhantomSpec(count=count, size=32, seed=0)
    x, y, m = make_phantom(PhantomSpec(count=count // 2, size=32, seed=1))
    with tempfile.TemporaryDirectory() as tmp:
        syn = Path(tmp) / "syn"
        syn.mkdir()
        with open(syn / "manifest.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "file", "label"])
            for i in range(len(x)):
                Image.fromarray(np.round(x[i] * 255).astype(np.uint8)).save(syn / f"{i:06d}.png")
                Image.fromarray(m[i] * 255).save(syn / f"{i:06d}_mask.png")
                w.writerow([i, f"{i:06d}.png", int(y[i])])
        cfg = EvaluateConfig(seeds=3, epochs=3 if quick else 15, bootstrap=200 if quick else 1000)
        t0 = time.perf_counter()
        out = evaluate(cfg, None, syn, Path(tmp) / "out", phantom=real)
        wall = time.perf_counter() - t0
    q = out["quality"]["synthetic_vs_real"]
    cls = out["utility"]["classification"]["conditions"]
    ctx = {"real": count, "synthetic": len(x), "size": 32, "seeds": 3, "epochs": cfg.epochs, "extractor": q["fid"]["extractor"]}
    return [
        {"name": "evaluate_seconds", "value": wall, "unit": "s", **ctx},
        {"name": "kid_phantom_vs_phantom", "value": q["kid"]["kid_mean"], "unit": "", **ctx},
        {"name": "fid_phantom_vs_phantom", "value": q["fid"]["fid"], "unit": "", "flags": q["fid"]["flags"], **ctx},
        {"name": "accuracy_real", "value": cls["real"]["accuracy"]["mean"], "unit": "", **ctx},
        {"name": "accuracy_real_plus_synthetic", "value": cls["real+synthetic"]["accuracy"]["mean"], "unit": "", **ctx},
    ]


def run(quick: bool = False) -> list[dict]:
    """Distance-metric timings on random features and one phantom evaluate() (CPU)."""
    return _distance_rows(quick) + _evaluate_rows(quick)


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
