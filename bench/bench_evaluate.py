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


def _write_set(folder: Path, spec) -> int:
    import csv

    from PIL import Image

    from medgan.phantom import make_phantom

    x, y, m = make_phantom(spec)
    folder.mkdir(parents=True)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "file", "label"])
        for i in range(len(x)):
            Image.fromarray(np.round(x[i] * 255).astype(np.uint8)).save(folder / f"{i:06d}.png")
            Image.fromarray(m[i] * 255).save(folder / f"{i:06d}_mask.png")
            w.writerow([i, f"{i:06d}.png", int(y[i])])
    return len(x)


def _evaluate_rows(quick: bool) -> list[dict]:
    """Wall time of the default phantom study (what `examples/pipelines/phantom-utility.yaml` queues): 100 real
    images the GAN trained on + 200 fresh ones (as the worker extends the phantom), 400 "synthetic" images
    (a fresh phantom draw stands in for a generator: the cost does not depend on the content), the default
    EvaluateConfig (gates, three feature spaces, 6 arms x 3 seeds x 2 tasks at 600/800 steps). Baseline in the
    same process: ONE real-only classifier at the same step budget."""
    import torch

    from medgan.config import EvaluateConfig, PhantomSpec
    from medgan.evaluate import evaluate
    from medgan.evaluate.downstream import Budget, train_classifier
    from medgan.evaluate.sets import LabeledSet
    from medgan.phantom import make_phantom

    torch.set_num_threads(1)
    real = PhantomSpec(count=300, size=32, seed=0)
    cfg = EvaluateConfig(real_train_count=100)
    if quick:
        cfg = EvaluateConfig(real_train_count=100, seeds=1, steps=60, seg_steps=60, judge_steps=60,
                             bootstrap=200, epochs=3)
    with tempfile.TemporaryDirectory() as tmp:
        n_syn = _write_set(Path(tmp) / "syn", PhantomSpec(count=400, size=32, seed=1))
        t0 = time.perf_counter()
        out = evaluate(cfg, None, Path(tmp) / "syn", Path(tmp) / "out", phantom=real)
        wall = time.perf_counter() - t0
    x, y, m = make_phantom(PhantomSpec(count=100, size=32, seed=0))
    one = LabeledSet(torch.from_numpy(x)[:, None] * 2 - 1, torch.from_numpy(y), torch.from_numpy(m)[:, None].float())
    base, _ = best_of(lambda: train_classifier([(one, 1.0)], 2, Budget(steps=cfg.steps, eval_every=cfg.steps), 0), 1)
    trainings = sum(len(a["fits"]) for u in out["utility"].values() for a in u["arms"].values())
    ctx = {"real_pool": 100, "held_out": 200, "synthetic": n_syn, "size": 32, "seeds": cfg.seeds,
           "steps": cfg.steps, "seg_steps": cfg.seg_steps, "arms": len(cfg.arms), "trainings": trainings,
           "torch_threads": 1}
    q = out["quality"]["spaces"]["pixel-pca"]
    return [
        {"name": "evaluate_seconds", "value": wall, "unit": "s", "baseline": base,
         "ratio": wall / base, "note_baseline": "one real-only classifier at the same steps", **ctx},
        {"name": "kid_pixel_pca_fresh_draw", "value": q["synthetic_vs_real"]["kid"]["kid_mean"], "unit": "",
         "floor": q["real_vs_real_floor"]["kid"]["kid_mean"], **ctx},
    ]


def run(quick: bool = False) -> list[dict]:
    """Distance-metric timings on random features and the default phantom utility study (CPU)."""
    return _distance_rows(quick) + _evaluate_rows(quick)


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
