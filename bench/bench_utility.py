"""The data-regime sweep of the utility study: GAN per regime -> synthetic set -> evaluate, and the figure.

For each number n of real images per class: train the mask-emitting conditional GAN on the first 2n phantom
images (the small-data switches of bench_gan_quality's "new" arm), sample `--synthetic` image+mask pairs from
its probes' best checkpoint, and run `medgan.evaluate.evaluate` with `real_train_count = 2n` on a phantom
extended by 200 fresh images (the held-out feature and test splits, as the worker does for a phantom GAN).
Then one report.html over every regime, with the gain-versus-n figure (`regime.png`), and a JSON of the points.
The same chain as a job pipeline: examples/pipelines/phantom-utility-regimes.yaml. Regimes can run as separate
processes (`--regimes 10 --out A` ...) and be joined with `--combine A B C --out D`.

    nice -n 10 python -m bench.bench_utility --regimes 10,25,50 --gan-steps 600 --out /tmp/regimes

Replication: `--gan-seeds 0,1` trains several GANs per regime (GAN training randomness); `--draws` cuts each
synthetic set into independent draws (generator sampling); `--seeds` downstream seeds. `run(quick)` is the
`make bench` entry: one tiny regime, its wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import torch

from medgan.config import EvaluateConfig, GenerateConfig, PhantomSpec, TrainConfig

HELD_OUT = 200  # fresh phantom images beyond the GAN's: feature split + test split
SIZE = 32  # the phantom at 32 px: real-only is off the floor and the ceiling at 10-50 images per class


def gan_config(n: int, steps: int, seed: int) -> TrainConfig:
    from bench.bench_gan_quality import NEW_DEFAULT

    return TrainConfig(model="cgan", image_size=SIZE, with_masks=True, steps=steps, batch_size=32, base_channels=16,
                       z_dim=64, checkpoint_every=max(1, steps // 4), sample_every=max(1, steps // 4),
                       log_every=max(1, steps // 20), keep_checkpoints=2, seed=seed,
                       phantom=PhantomSpec(count=2 * n, size=SIZE, seed=0), **NEW_DEFAULT)


def synthesise(n: int, steps: int, gan_seed: int, count: int, root: Path) -> tuple[Path, dict]:
    """Train the GAN of regime n and write `count` image+mask pairs with manifest.csv; returns (folder, info)."""
    from medgan.checkpoint import select_checkpoint
    from medgan.generate import generate
    from medgan.train import train

    run = root / f"gan-n{n}-s{gan_seed}"
    t0 = time.perf_counter()
    train(gan_config(n, steps, gan_seed), run)
    seconds = time.perf_counter() - t0
    try:
        ckpt = select_checkpoint(run, "best")
    except Exception:  # noqa: BLE001 - a run whose probes never picked a best: its last checkpoint
        ckpt = select_checkpoint(run, "last")
    out = root / f"synthetic-n{n}-s{gan_seed}"
    rows = generate(ckpt, out, GenerateConfig(count=count, seed=1, with_masks=True), 0, count, {"job": run.name})
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return out, {"gan_steps": steps, "gan_seed": gan_seed, "checkpoint": ckpt.name, "gan_seconds": round(seconds, 1)}


def study(n: int, synthetic: Path, out: Path, cfg: dict) -> dict:
    from medgan.evaluate import evaluate

    ecfg = EvaluateConfig(**{**cfg, "real_train_count": 2 * n, "image_size": SIZE})
    return evaluate(ecfg, None, synthetic, out, phantom=PhantomSpec(count=2 * n + HELD_OUT, size=SIZE, seed=0))


def sweep(regimes: list[int], gan_steps: int, gan_seeds: list[int], synthetic: int, eval_cfg: dict,
          out: Path) -> dict:
    from medgan.evaluate.report import regime_rows, render_report

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    runs: dict[str, Path] = {}
    log = []
    for n in regimes:
        for s in gan_seeds:
            t0 = time.perf_counter()
            folder, info = synthesise(n, gan_steps, s, synthetic, work)
            ev = out / f"evaluate-n{n}-s{s}"
            metrics = study(n, folder, ev, eval_cfg)
            (ev / "gan.json").write_text(json.dumps(info))
            info.update(n=n, seconds=round(time.perf_counter() - t0, 1), gates=metrics.get("gates", {}).get("line"),
                        verdicts=metrics["verdicts"])
            log.append(info)
            runs[f"evaluate: {n} real images per class (GAN seed {s})"] = ev
            print(json.dumps(info), flush=True)
    report = render_report(runs, out / "report.html", f"utility vs data regime: {regimes} real images per class")
    points = regime_rows({k: json.loads((d / "metrics.json").read_text()) for k, d in runs.items()})
    (out / "regimes.json").write_text(json.dumps({"runs": log, "points": points}, indent=2))
    shutil.rmtree(work, ignore_errors=True)  # GAN runs and PNGs: the evaluate folders keep what the report needs
    return {"report": str(report), "runs": log, "points": points}


def combine(folders: list[Path], out: Path) -> dict:
    """One report.html, regimes.json and regime.png over the evaluate-* folders under `folders` (runs of
    single regimes made in parallel: `--regimes 10 --out A`, `--regimes 50 --out B`, then `--combine A B`)."""
    from medgan.evaluate.report import regime_figure, regime_rows, render_report

    runs: dict[str, Path] = {}
    for f in folders:
        for ev in sorted(Path(f).glob("evaluate-n*-s*")):
            n, s = ev.name.split("-")[1][1:], ev.name.split("-")[2][1:]
            runs[f"evaluate: {n} real images per class (GAN seed {s})"] = ev
    runs = dict(sorted(runs.items(), key=lambda kv: int(kv[0].split()[1])))
    out.mkdir(parents=True, exist_ok=True)
    report = render_report(runs, out / "report.html", "utility vs data regime (phantom, 32 px)")
    points = regime_rows({k: json.loads((d / "metrics.json").read_text()) for k, d in runs.items()})
    regime_figure(points, out / "regime.png")
    gans = {k: json.loads((d / "gan.json").read_text()) for k, d in runs.items() if (d / "gan.json").is_file()}
    (out / "regimes.json").write_text(json.dumps({"gans": gans, "points": points}, indent=2))
    return {"report": str(report), "figure": str(out / "regime.png"), "points": points}


def run(quick: bool = False) -> list[dict]:
    """`make bench`: wall time of one regime's chain (GAN, generate, evaluate) at a small budget."""
    import tempfile

    n, steps = (10, 40) if quick else (25, 200)
    cfg = {"seeds": 1 if quick else 2, "steps": 60 if quick else 300, "seg_steps": 60 if quick else 400,
           "judge_steps": 60 if quick else 200, "bootstrap": 200, "epochs": 3}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = sweep([n], steps, [0], 100, cfg, Path(tmp))
        wall = time.perf_counter() - t0
    r = res["runs"][0]
    return [{"name": "regime_chain_seconds", "value": wall, "unit": "s", "n_per_class": n, "gan_steps": steps,
             "gan_seconds": r["gan_seconds"], **{k: v for k, v in cfg.items() if k != "epochs"}}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regimes", default="10,25,50", help="real images per class, comma separated")
    ap.add_argument("--gan-steps", type=int, default=600)
    ap.add_argument("--gan-seeds", default="0", help="GAN runs per regime (seeds), comma separated")
    ap.add_argument("--synthetic", type=int, default=400, help="synthetic image+mask pairs per GAN")
    ap.add_argument("--set", action="append", default=[], help="EvaluateConfig field key=value (JSON value)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--combine", type=Path, nargs="+", help="only combine earlier --out folders into --out")
    a = ap.parse_args()
    if a.combine:
        res = combine(a.combine, a.out)
        print(json.dumps({"report": res["report"], "figure": res["figure"]}))
        return
    cfg = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        try:
            cfg[k] = json.loads(v)
        except json.JSONDecodeError:
            cfg[k] = v
    res = sweep([int(x) for x in a.regimes.split(",")], a.gan_steps, [int(x) for x in a.gan_seeds.split(",")],
                a.synthetic, cfg, a.out)
    print(json.dumps({"report": res["report"], "points": res["points"]}, indent=1))


if __name__ == "__main__":
    main()
