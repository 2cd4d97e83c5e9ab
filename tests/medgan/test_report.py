"""render_report: one self-contained HTML file over train / generate / evaluate / enhance outputs."""

from __future__ import annotations

import base64
import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgan.config import EvaluateConfig, PhantomSpec
from medgan.evaluate import evaluate
from medgan.evaluate.report import image_grid, render_report
from medgan.phantom import make_phantom

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.kinds, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if "data-kind" in a:
            self.kinds.append(a["data-kind"])

    def handle_data(self, data):
        self.text.append(data)


def _write_generate(folder: Path, n: int = 12) -> Path:
    folder.mkdir(parents=True)
    x, y, _ = make_phantom(PhantomSpec(count=n, size=32, seed=5))
    with open(folder / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "file", "label"])
        for i in range(n):
            Image.fromarray(np.round(x[i] * 255).astype(np.uint8)).save(folder / f"{i:06d}.png")
            w.writerow([i, f"{i:06d}.png", int(y[i])])
    return folder


def _write_train(run: Path) -> Path:
    (run / "samples").mkdir(parents=True)
    lines = [json.dumps({"step": s, "total": 40, "time": s * 0.1, "loss_g": 1.0 / s, "loss_d": 0.5, "imgs_per_s": 100.0})
             for s in range(1, 41)]
    (run / "stats.jsonl").write_text("\n".join(lines) + '\n{"step": 41, "loss_g"')  # last line cut by a crash
    for s in range(0, 50, 10):
        Image.fromarray(np.full((16, 16), s * 4, np.uint8)).save(run / "samples" / f"step-{s:06d}.png")
    (run / "config.json").write_text(json.dumps({"model": "cgan", "steps": 40, "phantom": {"count": 8}}))
    (run / "result.json").write_text(json.dumps({"status": "completed", "step": 40, "reason": None}))
    return run


pytestmark = pytest.mark.usefixtures("one_thread")


def test_report_renders_everything_self_contained(tmp_path):
    train = _write_train(tmp_path / "train")
    gen = _write_generate(tmp_path / "gen")
    ev = tmp_path / "eval"
    real = PhantomSpec(count=80, size=32, seed=0)
    cfg = EvaluateConfig(seeds=2, epochs=1, kid_subsets=5, kid_subset_size=10, bootstrap=20, segmentation=False,
                         steps=10, eval_every=5, judge_steps=20, arms=("real", "real+aug", "real+synthetic"))
    evaluate(cfg, None, gen, ev, phantom=real)
    enh = tmp_path / "enh"
    enh.mkdir()
    (enh / "summary.json").write_text(json.dumps({"psnr": {"mean": 30.1, "sd": 1.2}, "count": 4}))
    empty = tmp_path / "empty"
    empty.mkdir()

    out = render_report({"train <run>": train, "generate": gen, "evaluate": ev, "enhance": enh,
                         "empty": empty, "gone": tmp_path / "gone"}, tmp_path / "report" / "r.html", "Report & test")
    doc = out.read_text(encoding="utf-8")
    p = _Collector()
    p.feed(doc)
    assert p.kinds == ["train", "generate", "evaluate", "enhance"]
    # loss curves + 5 sample grids + synthetic grid + 3 evaluation figures (side by side, learning curves, utility)
    assert len(p.imgs) == 1 + 5 + 1 + 3
    for src in p.imgs:
        if src.startswith("data:image/png;base64,"):
            assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
        else:
            assert (out.parent / src).is_file()
    # offline: no external stylesheet, script or remote resource
    assert not any(t in ("link", "script") for t, _ in p.tags)
    assert "http://" not in doc and "https://" not in doc
    text = " ".join(p.text)
    assert "Report & test" in text and "train <run>" in text  # escaped, not swallowed as a tag
    assert "nothing recognised" in text and "directory not found" in text
    assert "trained-cnn" in text and "biased: n &lt; 2048" in doc and "PROXY" in text
    # arms with their budgets, gates, paired comparisons and verdicts
    for needle in ("Sanity gates", "memorisation", "real+aug", "10 steps of batch 32 for every arm",
                   "paired bootstrap", "Holm p", "Verdicts", "real+synthetic vs real-only (classification)",
                   "Not replicated", "learning curves"):
        assert needle in text, needle
    assert "psnr" in text


def test_image_grid_shapes():
    g = image_grid(np.zeros((5, 1, 8, 8)) - 1, nrow=4, pad=1)
    assert g.shape == (2 * 9 + 1, 4 * 9 + 1) and g.max() == 0
    rgb = image_grid(np.ones((2, 3, 4, 4)), nrow=2, pad=0)
    assert rgb.shape == (4, 8, 3) and rgb.min() == 255


def test_two_data_regimes_give_the_gain_figure_and_every_image_exists(tmp_path):
    gen = _write_generate(tmp_path / "gen", n=24)
    real = PhantomSpec(count=120, size=32, seed=0)
    runs = {}
    for n in (5, 15):
        cfg = EvaluateConfig(seeds=2, epochs=1, kid_subsets=5, kid_subset_size=10, bootstrap=50, segmentation=False,
                             steps=10, eval_every=5, gates="off", real_per_class=n, arms=("real", "real+synthetic"))
        runs[f"evaluate n={n}"] = tmp_path / f"ev{n}"
        evaluate(cfg, None, gen, runs[f"evaluate n={n}"], phantom=real)
    out = render_report(runs, tmp_path / "r.html", "regimes")
    p = _Collector()
    p.feed(out.read_text(encoding="utf-8"))
    text = " ".join(p.text)
    assert "Gain against the data regime" in text
    # the regime figure + per run: side by side, learning curves, utility
    assert len(p.imgs) == 1 + 2 * 3
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    from medgan.evaluate.report import regime_rows

    pts = regime_rows({k: json.loads((d / "metrics.json").read_text()) for k, d in runs.items()})
    assert sorted(p["real_per_class"] for p in pts) == [5, 15]
    # one regime alone draws no regime figure
    single = render_report({"one": runs["evaluate n=5"]}, tmp_path / "s.html", "one")
    assert "Gain against the data regime" not in single.read_text()
