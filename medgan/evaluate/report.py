"""Figures and the self-contained HTML report.

`render_report` reads whatever it recognises in each run directory (train, generate, evaluate, enhance)
and writes ONE HTML file with every image embedded as a base64 data URI and inline CSS, so it can be
mailed, uploaded as a single store object, and read offline. Matplotlib runs on the Agg backend.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

MAX_SAMPLE_STEPS = 6  # training sample grids shown, evenly spaced over the run
MAX_GRID = 64  # synthetic images in a generate grid
_IGNORED_STATS = {"step", "total", "time", "epoch", "best_step"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on workers; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def image_grid(images, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """Tile images [N, C, H, W] in [-1, 1] (torch or numpy) into uint8 [H', W'] or [H', W', 3]."""
    x = np.asarray(images, dtype=np.float32)
    x = ((np.clip(x, -1, 1) + 1.0) * 127.5).round().astype(np.uint8)  # [N, C, H, W]
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = (n + cols - 1) // cols
    grid = np.zeros((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[i]
    return grid[0] if c == 1 else grid[:3].transpose(1, 2, 0)


def _per_class_pick(labels, per_class: int) -> np.ndarray:
    """Indices of up to `per_class` images of each class, grouped by class (rows of the grid)."""
    labels = np.asarray(labels)
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])


def side_by_side_figure(real, synthetic, path: Path, real_labels=None, synthetic_labels=None, per_class: int = 8) -> Path:
    """Real (left) and synthetic (right) grids, one row per class, saved as PNG."""
    plt = _plt()
    panels = []
    for imgs, labels in ((real, real_labels), (synthetic, synthetic_labels)):
        idx = _per_class_pick(labels, per_class) if labels is not None else np.arange(min(len(imgs), 16))
        panels.append(image_grid(np.asarray(imgs)[idx], nrow=per_class))
    h = max(g.shape[0] for g in panels) / max(g.shape[1] for g in panels)  # grid aspect, height / width
    fig, axes = plt.subplots(1, 2, figsize=(10, 5 * h + 0.6))
    for ax, grid, name in zip(axes, panels, ("real", "synthetic")):
        ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{name} (one row per class)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def utility_figure(utility: dict[str, dict], path: Path) -> Path:
    """Bars per (metric, condition) with 95% t-interval error bars over seeds."""
    plt = _plt()
    panels = [("classification", ["accuracy", "balanced_accuracy", "auc"]), ("segmentation", ["dice", "dice_global"])]
    panels = [(t, m) for t, m in panels if t in utility]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (task, names) in zip(axes[0], panels):
        conds = utility[task].get("conditions", {})
        width = 0.8 / max(len(conds), 1)
        for j, (cond, ms) in enumerate(conds.items()):
            means = [ms.get(m, {}).get("mean") for m in names]
            lo = [ms.get(m, {}).get("ci_low") for m in names]
            hi = [ms.get(m, {}).get("ci_high") for m in names]
            y = [v if v is not None else np.nan for v in means]
            err = [[(v - a) if None not in (v, a) else 0 for v, a in zip(means, lo)],
                   [(b - v) if None not in (v, b) else 0 for v, b in zip(means, hi)]]
            ax.bar(np.arange(len(names)) + j * width, y, width, yerr=err, capsize=3, label=cond)
        ax.set_xticks(np.arange(len(names)) + width * (len(conds) - 1) / 2, names)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{task} on held-out real images (95% CI over seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------- HTML pieces

CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}
th{background:#eee}img{max-width:100%;border:1px solid #ddd}.flag{color:#a40}.note{color:#666;font-size:13px}
figure{display:inline-block;margin:4px}figcaption{font-size:12px;text-align:center}"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{_data_uri(png)}" alt="{html.escape(alt)}">'


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def _array_png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _read_stats(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash or a concurrent write
        if isinstance(obj, dict) and "step" in obj:
            rows.append(obj)
    return rows


def loss_curves_png(rows: list[dict]) -> bytes | None:
    """One small panel per numeric series in stats.jsonl (losses, throughput) against step."""
    keys = sorted({k for r in rows for k, v in r.items()
                   if k not in _IGNORED_STATS and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not keys:
        return None
    plt = _plt()
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.6 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return _fig_png(fig)


# ---------------------------------------------------------------- sections per run kind


def _step_of(p: Path) -> int:
    m = re.search(r"(\d+)", p.stem)
    return int(m.group(1)) if m else -1


def _train_section(d: Path) -> str:
    parts = []
    result = d / "result.json"
    if result.is_file():
        r = json.loads(result.read_text())
        parts.append(_table(["status", "step", "reason"], [[r.get("status"), r.get("step"), r.get("reason")]]))
    if (d / "config.json").is_file():
        cfg = json.loads((d / "config.json").read_text())
        flat = [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in cfg.items()]
        parts.append("<details><summary>config.json</summary>" + _table(["field", "value"], flat) + "</details>")
    if (d / "best.json").is_file():
        try:
            best = json.loads((d / "best.json").read_text())
            probes = {k: v for k, v in best.get("probes", {}).items() if isinstance(v, (int, float))}
            parts.append(f"<h3>Best checkpoint by the training probes: step {best['step']}</h3>"
                         + _table(["probe", "value"], [[k, round(v, 4)] for k, v in sorted(probes.items())]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a half-written best.json: the curves below still tell the story
    if (d / "stats.jsonl").is_file():
        rows = _read_stats(d / "stats.jsonl")
        alerts = [[r["step"], a] for r in rows for a in (r.get("alerts") or []) if isinstance(a, str)]
        if alerts:
            parts.append(f"<h3>Alerts during training ({len(alerts)})</h3>" + _table(["step", "alert"], alerts))
        png = loss_curves_png(rows)
        if png:
            parts.append(f"<h3>Training curves ({len(rows)} ticks: losses, D(real)/D(fake), ADA p and r_t, "
                         "gradient norms, probes)</h3>" + _img(png, "training curves"))
    samples = sorted((d / "samples").glob("step-*.png"), key=_step_of)
    if samples:
        pick = [samples[int(i)] for i in np.unique(np.linspace(0, len(samples) - 1, MAX_SAMPLE_STEPS).round())]
        figs = "".join(f"<figure>{_img(p.read_bytes(), p.name)}<figcaption>step {_step_of(p)}</figcaption></figure>"
                       for p in pick)
        parts.append(f"<h3>Samples across training ({len(samples)} grids, {len(pick)} shown)</h3>{figs}")
    return "".join(parts)


def _generate_section(d: Path) -> str:
    from PIL import Image

    files = sorted(p for p in d.glob("[0-9]*.png") if not p.stem.endswith("_mask"))
    parts = []
    labels: dict[str, int] = {}
    if (d / "manifest.csv").is_file():
        with open(d / "manifest.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                labels[r.get("label", "")] = labels.get(r.get("label", ""), 0) + 1
        parts.append(_table(["label", "images"], sorted(labels.items())))
    if files:
        arrs = []
        for p in files[:MAX_GRID]:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L"), dtype=np.float32) / 127.5 - 1.0  # [H, W] in [-1, 1]
            arrs.append(a)
        shape = arrs[0].shape
        arrs = np.stack([a for a in arrs if a.shape == shape])[:, None]  # [N, 1, H, W]
        grid = _array_png(image_grid(arrs, nrow=8))
        parts.append(f"<h3>Synthetic images ({len(files)} in folder, {len(arrs)} shown)</h3>" + _img(grid, "synthetic grid"))
    return "".join(parts)


def _interval(s: dict) -> str:
    if s.get("mean") is None:
        return "–"
    txt = f"{s['mean']:.3f}"
    if s.get("ci_low") is not None:
        txt += f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
    if s.get("boot_low") is not None:
        txt += f" (boot {s['boot_low']:.3f}–{s['boot_high']:.3f})"
    return txt


def _quality_rows(q: dict) -> list[list[Any]]:
    rows = []
    for name in ("synthetic_vs_real", "reference_real_train_vs_real_test"):
        m = q.get(name)
        if not m:
            continue
        f, k, pr = m.get("fid", {}), m.get("kid", {}), m.get("precision_recall", {})
        kid = f"{k.get('kid_mean', 0):.4g} ± {k['kid_sd']:.2g}" if k.get("kid_sd") is not None else _fmt(k.get("kid_mean"))
        rows.append([name, f.get("fid"), "; ".join(f.get("flags", [])), kid, k.get("subset_size"),
                     pr.get("precision"), pr.get("recall"), f"{f.get('n_real')} / {f.get('n_synthetic')}"])
    return rows


def _evaluate_section(d: Path) -> str:
    parts = []
    m = json.loads((d / "metrics.json").read_text())
    ext = m.get("extractor", {})
    parts.append(f"<p>Status: <b>{_fmt(m.get('status'))}</b>. Features: <b>{_fmt(ext.get('name'))}</b> "
                 f"<span class=note>({_fmt(ext.get('kind'))})</span></p>")
    q = m.get("quality", {})
    if q:
        parts.append("<h3>Distribution quality</h3>" + _table(
            ["pair", "FID", "FID flags", "KID (mean ± sd)", "KID subset", "precision", "recall", "n real / other"],
            _quality_rows(q)))
        parts.append("<p class=note>The reference row compares two real splits: the floor these figures can reach "
                     "with this extractor and these sample sizes.</p>")
    for task, u in m.get("utility", {}).items():
        conds = u.get("conditions", {})
        names = list(next(iter(conds.values()), {}).keys())
        rows = [[c] + [_interval(ms.get(n, {})) for n in names] for c, ms in conds.items()]
        rows += [[c] + [_interval(ms.get(n, {})) for n in names] for c, ms in u.get("delta", {}).items()]
        meth = u.get("interval_methods", {})
        parts.append(f"<h3>Utility: {html.escape(task)}</h3><p class=note>{_fmt(u.get('network'))}; "
                     f"{u.get('seeds_completed')} seeds; test images {u.get('test_images')}; "
                     f"[..] {_fmt(meth.get('ci'))}; (boot ..) {_fmt(meth.get('boot'))}</p>"
                     + _table(["condition"] + names, rows))
    for png in sorted(d.glob("*.png")):
        parts.append(f"<h3>{html.escape(png.stem.replace('_', ' '))}</h3>" + _img(png.read_bytes(), png.stem))
    return "".join(parts)


def _enhance_section(d: Path) -> str:
    s = json.loads((d / "summary.json").read_text())
    rows = [[k, v.get("mean"), v.get("sd")] for k, v in s.items() if isinstance(v, dict)]
    return f"<p>images: {_fmt(s.get('count'))}</p>" + _table(["metric", "mean", "sd"], rows)


def _sections(d: Path) -> list[tuple[str, str]]:
    """(kind, html) for every kind of output recognised in `d`."""
    found = []
    if (d / "stats.jsonl").is_file() or (d / "samples").is_dir() or (d / "result.json").is_file():
        found.append(("train", _train_section(d)))
    if (d / "manifest.csv").is_file() or any(d.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png")):
        found.append(("generate", _generate_section(d)))
    if (d / "metrics.json").is_file():
        found.append(("evaluate", _evaluate_section(d)))
    if (d / "summary.json").is_file():
        found.append(("enhance", _enhance_section(d)))
    return found


def render_report(run_dirs: dict[str, Path], out_path: Path, title: str) -> Path:
    """Write one self-contained HTML report over named run directories; returns `out_path`.

    Recognises train runs (stats.jsonl, samples/step-*.png, result.json, config.json), generate folders
    (NNNNNN.png, manifest.csv), evaluate outputs (metrics.json, utility figures) and enhance outputs
    (summary.json). Every image is embedded as a data URI; there is no external CSS or JS.
    """
    body = [f"<h1>{html.escape(title)}</h1>"]
    for name, d in run_dirs.items():
        d = Path(d)
        body.append(f"<h2>{html.escape(name)}</h2>")
        if not d.is_dir():
            body.append(f"<p class=flag>directory not found: {html.escape(str(d))}</p>")
            continue
        found = _sections(d)
        if not found:
            body.append(f"<p class=flag>nothing recognised in {html.escape(str(d))}</p>")
        for kind, section in found:
            body.append(f"<div class=section data-kind={kind}>{section}</div>")
    doc = (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(doc, encoding="utf-8")
    return out_path
