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
    """Per task: each arm's paired difference to real-only on the primary endpoint, with its 95% paired
    bootstrap interval (test images x seeds); markers coloured by verdict."""
    plt = _plt()
    tasks = [t for t in ("classification", "segmentation") if utility.get(t, {}).get("comparisons")]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.6), squeeze=False)
    colour = {"better": "tab:green", "worse": "tab:red", "no detectable difference": "tab:grey",
              "not judged (one seed)": "tab:olive"}
    for ax, task in zip(axes[0], tasks):
        u = utility[task]
        comps = u["comparisons"]
        for i, (arm, c) in enumerate(comps.items()):
            p = c["primary"]
            if p.get("ci_low") is not None:
                ax.plot([p["ci_low"], p["ci_high"]], [i, i], color=colour[c["verdict"]], lw=2)
            ax.plot([p["diff"]], [i], "o", color=colour[c["verdict"]])
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(comps)), list(comps))
        ax.set_xlabel(f"{u['primary_endpoint']}: arm - real-only")
        ax.set_title(f"{task} ({u['seeds_completed']} seeds, {u['test_images_scored']} test images)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def learning_curve_figure(utility: dict[str, dict], path: Path) -> Path:
    """Per task: validation metric (mean over seeds) against optimiser step for every arm."""
    plt = _plt()
    tasks = [t for t in ("classification", "segmentation") if t in utility]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        u = utility[task]
        for arm, a in u.get("arms", {}).items():
            curves = [f["curve"] for f in a.get("fits", []) if f.get("curve")]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [c["step"] for c in curves[0][:n]]
            vals = np.nanmean([[np.nan if p["val_metric"] is None else p["val_metric"] for p in c[:n]]
                               for c in curves], 0)
            ax.plot(steps, vals, marker=".", label=arm)
        ax.set_xlabel("optimiser step (the same budget for every arm)")
        ax.set_ylabel("validation " + ("lesion Dice" if task == "segmentation" else "balanced accuracy"))
        ax.set_title(f"{task}: learning curves on the real validation split", fontsize=10)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def regime_rows(metrics: dict[str, dict]) -> list[dict]:
    """Points of the data-regime figure from several evaluate results ({run name: metrics.json}): one per
    (run, task, arm) with the paired difference to real-only on the primary endpoint and its interval."""
    points = []
    for name, m in metrics.items():
        d = m.get("data", {})
        k = max(len(d.get("classes") or [1]), 1)
        n = m.get("config", {}).get("real_per_class") or (d.get("real_train", 0) + d.get("real_val", 0)) / k
        for task, u in m.get("utility", {}).items():
            for arm, c in u.get("comparisons", {}).items():
                p = c["primary"]
                points.append({"run": name, "task": task, "arm": arm, "metric": u["primary_endpoint"],
                               "real_per_class": n, "diff": p["diff"], "ci_low": p["ci_low"],
                               "ci_high": p["ci_high"], "verdict": c["verdict"], "p_holm": c.get("p_holm"),
                               "baseline": u["arms"]["real"]["summary"][u["primary_endpoint"]]["mean"]})
    return points


def regime_figure(points: list[dict], path) -> object:
    """Gain over real-only (primary endpoint, 95% paired interval) against real images per class.

    points: {"task", "arm", "real_per_class", "diff", "ci_low", "ci_high"} rows (from `regime_rows`)."""
    plt = _plt()
    tasks = sorted({p["task"] for p in points})
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(5.5 * max(len(tasks), 1), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [p for p in points if p["task"] == task]
        arms = list(dict.fromkeys(p["arm"] for p in rows))
        for j, arm in enumerate(arms):
            mine = sorted((p for p in rows if p["arm"] == arm), key=lambda p: p["real_per_class"])
            x = np.array([p["real_per_class"] for p in mine], float) * (1 + 0.03 * (j - len(arms) / 2))
            y = np.array([p["diff"] for p in mine], float)
            lo = np.array([p["ci_low"] if p["ci_low"] is not None else np.nan for p in mine], float)
            hi = np.array([p["ci_high"] if p["ci_high"] is not None else np.nan for p in mine], float)
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=arm)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("real training images per class")
        ax.set_ylabel(f"{rows[0].get('metric', '')} gain over real-only")
        ax.set_title(f"{task}: gain vs data regime (95% paired bootstrap)", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


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


def _gate_rows(g: dict) -> list[list[Any]]:
    rows = []
    for gate in g.get("gates", []):
        v = gate.get("value")
        shown = gate.get("worst_ratio") if isinstance(v, dict) else v
        ref = gate.get("reference")
        mark = "n/a" if gate["passed"] is None else ("pass" if gate["passed"] else "FAIL")
        rows.append([gate["name"], shown, None if isinstance(ref, dict) else ref, gate.get("rule"), mark])
    return rows


def _arm_rows(u: dict) -> list[list[Any]]:
    metric = u.get("primary_endpoint")
    rows = []
    for arm, a in u.get("arms", {}).items():
        fits = a.get("fits") or [{}]
        parts = "; ".join(f"{p['images']} img x{p['share']:.2f} = {p['epochs']:.1f} ep" for p in fits[0].get("parts", []))
        s = a.get("summary", {}).get(metric, {})
        rows.append([arm, fits[0].get("steps_run"), fits[0].get("selected_step"), parts,
                     "yes" if fits[0].get("augment") else "no", _interval(s)])
    return rows


def _comparison_rows(u: dict) -> list[list[Any]]:
    rows = []
    pairs = [(f"{arm} vs real-only", c) for arm, c in u.get("comparisons", {}).items()]
    if u.get("comparison_vs_aug"):
        pairs.append(("real+aug+synthetic vs real+aug", u["comparison_vs_aug"]))
    for arm, c in pairs:
        p = c["primary"]
        ci = "–" if p.get("ci_low") is None else f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
        extra = []
        if c.get("auc_delong", {}).get("p") is not None:
            d = c["auc_delong"]
            extra.append(f"AUC {d['diff']:+.3f} (DeLong p={d['p']:.3g})")
        if c.get("accuracy_mcnemar"):
            m = c["accuracy_mcnemar"]
            extra.append(f"McNemar p={m['p']:.3g} ({m['a_only_correct']} vs {m['b_only_correct']})")
        rows.append([arm, p["diff"], ci, c.get("p_holm"), c.get("effect_size_dz"), "; ".join(extra), c["verdict"]])
    return rows


def _quality_section(q: dict) -> str:
    rows = []
    for name, sp in q.get("spaces", {}).items():
        for pair in ("synthetic_vs_real", "real_vs_real_floor"):
            m = sp.get(pair, {})
            f, k, pr = m.get("fid", {}), m.get("kid", {}), m.get("precision_recall", {})
            kid = (f"{k.get('kid_mean', 0):.4g} ± {k['kid_sd']:.2g}" if k.get("kid_sd") is not None
                   else _fmt(k.get("kid_mean")))
            rows.append([name, pair, f.get("fid"), "; ".join(f.get("flags", [])), kid, pr.get("precision"),
                         pr.get("recall"), f"{f.get('n_real')} / {f.get('n_synthetic')}"])
    out = "<h3>Distribution metrics</h3>"
    for key in ("label", "flag"):
        if q.get(key):
            out += f"<p class=flag>{html.escape(q[key])}</p>"
    out += _table(["space", "pair", "FID", "FID flags", "KID (mean ± sd)", "precision", "recall",
                   "n real / other"], rows)
    return out + f"<p class=note>{_fmt(q.get('rule'))}</p>"


def _evaluate_section(d: Path) -> str:
    parts = []
    m = json.loads((d / "metrics.json").read_text())
    ext = m.get("extractor", {})
    parts.append(f"<p>Status: <b>{_fmt(m.get('status'))}</b>. Proxy features: <b>{_fmt(ext.get('name'))}</b> "
                 f"<span class=note>({_fmt(ext.get('kind'))}; {_fmt(ext.get('trained_on'))})</span></p>")
    data = m.get("data", {})
    if data.get("split"):
        parts.append(f"<p class=note>Real splits: pool {_fmt(data.get('real_gan_pool'))}, train "
                     f"{_fmt(data.get('real_train'))}, validation {_fmt(data.get('real_val'))}, feature "
                     f"{_fmt(data.get('real_feature'))}, test {_fmt(data.get('real_test'))}; "
                     f"{_fmt(data.get('split'))}.</p>")
    if m.get("flag"):
        parts.append(f"<p class=flag><b>{html.escape(m['flag'])}</b></p>")
    g = m.get("gates")
    if g:
        parts.append("<h3>Sanity gates of the synthetic set</h3>" + _table(
            ["gate", "value (worst ratio)", "real reference", "rule", "result"], _gate_rows(g)))
    if m.get("quality"):
        parts.append(_quality_section(m["quality"]))
    verdicts = m.get("verdicts") or []
    if verdicts:
        parts.append("<h3>Verdicts</h3><ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdicts) + "</ul>")
    for task, u in m.get("utility", {}).items():
        b = u.get("budget", {})
        parts.append(f"<h3>Utility: {html.escape(task)}</h3><p class=note>{_fmt(u.get('network'))}; primary "
                     f"endpoint {_fmt(u.get('primary_endpoint'))} ({_fmt(u.get('primary_endpoint_rule'))}); "
                     f"budget {_fmt(b.get('steps'))} steps of batch {_fmt(b.get('batch'))} for every arm, "
                     f"{_fmt(b.get('rule'))}; synthetic share of mixed batches {_fmt(u.get('synthetic_share'))}; "
                     f"{u.get('seeds_completed')} seeds; {u.get('test_images_scored')} test images scored</p>"
                     + _table(["arm", "steps", "selected step", "parts (images x share = epochs)",
                               "classical aug", "primary endpoint [t 95% over seeds]"], _arm_rows(u))
                     + _table(["comparison", "difference", "95% paired bootstrap", "Holm p", "effect d_z",
                               "secondary tests", "verdict"], _comparison_rows(u)))
    rep = m.get("replication")
    if rep:
        parts.append("<p class=note>Replicated: " + html.escape("; ".join(rep.get("replicated", [])))
                     + ". Not replicated: " + html.escape("; ".join(rep.get("not_replicated", []))) + ".</p>")
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


def _regime_section(run_dirs: dict[str, Path]) -> list[str]:
    """With evaluate outputs at two or more data regimes: the gain-vs-n figure (also saved as regime.png
    beside them) and its table."""
    found = {name: json.loads((Path(d) / "metrics.json").read_text()) for name, d in run_dirs.items()
             if (Path(d) / "metrics.json").is_file()}
    points = regime_rows(found)
    if len({p["real_per_class"] for p in points}) < 2:
        return []
    buf = io.BytesIO()
    regime_figure(points, buf)
    rows = [[p["task"], p["arm"], p["real_per_class"], p["baseline"], p["diff"],
             "–" if p["ci_low"] is None else f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]", p["verdict"]]
            for p in sorted(points, key=lambda q: (q["task"], q["arm"], q["real_per_class"]))]
    return ["<h2>Gain against the data regime</h2>", _img(buf.getvalue(), "gain vs real images per class"),
            _table(["task", "arm", "real / class", "real-only", "gain", "95% paired bootstrap", "verdict"], rows)]


def render_report(run_dirs: dict[str, Path], out_path: Path, title: str) -> Path:
    """Write one self-contained HTML report over named run directories; returns `out_path`.

    Recognises train runs (stats.jsonl, samples/step-*.png, result.json, config.json), generate folders
    (NNNNNN.png, manifest.csv), evaluate outputs (metrics.json, utility figures) and enhance outputs
    (summary.json). Every image is embedded as a data URI; there is no external CSS or JS.
    """
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += _regime_section(run_dirs)
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
