"""Does the conditional GAN hold up on 100 images? The small-data switches against the previous default.

Both arms train the pipeline's conditional GAN with masks (examples/pipelines/phantom-utility.yaml: the
phantom, 50 real images per class, 32 px) for the same steps, batch and width, in the same process,
then are judged by one instrument that never saw them train:
- a classifier/feature CNN (medgan.evaluate.features) trained on 1,000 OTHER phantom images (seed 1) and
  checked on 200 more (seed 2): its accuracy there says whether it converged;
- conditioning accuracy: that CNN's class head on 100 synthetic images per class;
- recall / precision (k = 3, medgan.evaluate.distance) of 100 synthetic images against the 100 training
  images, beside the real-vs-real value (100 held-out real images, seed 2, against the same training set);
- masks: share of lesion-class samples with a non-empty mask, share of healthy samples with an empty one,
  and mask/lesion agreement as the contrast the mask marks (medgan.evaluate.sanity.mask_contrast) beside the real
  masks' value on the held-out images; a control moves each real mask to another image (a mask that does
  not sit on a lesion), which must score far lower;
- memorisation: median pixel distance of synthetic images to their nearest training image over the same
  median for held-out real images (1 = as novel as new real data; near 0 = copies).
Every figure is also computed for an oracle arm (held-out real images in place of synthetic ones), which
must pass every line, so a failing line is the GAN's, not the instrument's.

`make bench BENCH_ARGS="--only gan_quality"` runs it (both arms, one after the other); on a shared machine run
the arms as two processes and merge them:
    python -m bench.bench_gan_quality --arms new --json-out /tmp/new.json &
    python -m bench.bench_gan_quality --arms default --json-out /tmp/default.json
    python -m bench.bench_gan_quality --write /tmp/new.json /tmp/default.json
CPU budget: each row's note gives the steps and the training seconds of its arm on the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from medgan.checkpoint import load_generator, select_checkpoint
from medgan.config import PhantomSpec, TrainConfig
from medgan.data import phantom_dataset
from medgan.evaluate.distance import precision_recall
from medgan.evaluate.features import train_cnn_extractor
from medgan.coupling import fit_segmenter
from medgan.evaluate import sanity


def mask_contrast(images: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean over images with a mask of sanity.mask_contrast (the contrast a mask marks); NaN if none has one."""
    per_image = sanity.mask_contrast(images, masks.float())
    return float(per_image.mean()) if len(per_image) else float("nan")


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice of two boolean mask sets, pooled over all pixels (1 when both are empty)."""
    inter, total = (a & b).sum().item(), a.sum().item() + b.sum().item()
    return 2 * inter / total if total else 1.0
from medgan.train import train

SIZE, PER_CLASS = 32, 50
TRAIN_SPEC = PhantomSpec(count=2 * PER_CLASS, size=SIZE, seed=0)  # the pipeline's training set
STEPS, QUICK_STEPS = 480, 120

# What the pipeline trained before this benchmark existed (TrainConfig's defaults until the mask-first arm met
# every line of issue 12 here: `--arms bank --variant 'bank:mask_source="bank"'`, 1,500 steps).
PREVIOUS_DEFAULT = dict(loss="hinge", diffaug="translation,cutout", r1_gamma=0.0, ada=False, ada_p=0.0,
                        mask_coupling="none", mask_source="generated")
# The small-data switches of issue 12 with the generator's own mask channel (mask_source="generated"); with
# mask_source="bank" (the `bank` variant) these are TrainConfig's defaults now.
NEW_DEFAULT = dict(loss="hinge", diffaug="translation,cutout", r1_gamma=0.2, r1_every=16, ada=True, ada_kimg=5.0,
                   mask_coupling="segmenter", mask_source="generated")


VARIANTS: dict[str, dict] = {}  # --variant NAME:key=value,... adds an arm: the new defaults with changes


def arm_config(arm: str, steps: int) -> TrainConfig:
    extra = {"default": PREVIOUS_DEFAULT, "new": NEW_DEFAULT}.get(arm) or {**NEW_DEFAULT, **VARIANTS[arm]}
    return TrainConfig(model="cgan", image_size=SIZE, with_masks=True, steps=steps, batch_size=32, base_channels=16,
                       z_dim=64, checkpoint_every=max(1, steps // 6), sample_every=max(1, steps // 6),
                       log_every=max(1, steps // 60), keep_checkpoints=2, phantom=TRAIN_SPEC, **extra)


class Instrument:
    """The judge: networks and reference sets built once from phantom images the GANs never saw."""

    def __init__(self, seed: int = 0):
        train_real = phantom_dataset(TRAIN_SPEC, SIZE)
        judge = phantom_dataset(PhantomSpec(count=1000, size=SIZE, seed=1), SIZE)
        held = phantom_dataset(PhantomSpec(count=2 * PER_CLASS * 2, size=SIZE, seed=2), SIZE)
        self.x_train, self.y_train = train_real.images, train_real.labels
        self.x_held, self.y_held, self.m_held = held.images, held.labels, held.masks
        with torch.random.fork_rng(devices=[]):
            self.cnn = train_cnn_extractor(judge.images, judge.labels, epochs=30, seed=seed)
        # its own lesion segmenter, fitted on the judge's 1,000 images (not the GAN's; another seed than any run)
        self.seg, _ = fit_segmenter(judge.images, judge.masks, seed=seed + 9001, steps=400)
        self.f_train = self.cnn(self.x_train)
        self.judge_acc = self._acc(self.x_held, self.y_held)
        self.memo_ref = self._nn(self.x_held[: len(self.x_train)])

    @torch.no_grad()
    def _acc(self, x: torch.Tensor, y: torch.Tensor) -> float:
        m = self.cnn.model
        return float((m.class_head(m.features(x.float())).argmax(1) == y).float().mean())

    def _nn(self, x: torch.Tensor) -> float:
        return float(torch.cdist(x.flatten(1).double(), self.x_train.flatten(1).double()).min(1).values.median())

    def score(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None) -> dict:
        """images [N, 1, S, S] in [-1, 1], labels [N], masks [N, 1, S, S] bool; equal counts per class."""
        n = len(self.x_train)
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
        pr = precision_recall(self.f_train, self.cnn(images[pick]), "judge-cnn")
        out = {"cond_acc": self._acc(images, labels), "recall": pr["recall"], "precision": pr["precision"],
               "memorisation_ratio": self._nn(images) / self.memo_ref}
        if masks is not None:
            lesion = labels == 1
            nonempty = masks.flatten(1).any(1)
            out["mask_nonempty_lesion"] = float(nonempty[lesion].float().mean())
            out["mask_empty_healthy"] = float((~nonempty[~lesion]).float().mean())
            out["mask_contrast"] = mask_contrast(images, masks)
            with torch.no_grad():
                seen = self.seg(images.float()) > 0  # [N, 1, S, S] lesions the judge's segmenter sees
            out["mask_dice"] = dice(masks, seen)
        return out

    def oracle(self) -> dict:
        """Held-out real images scored as if synthetic: the values every line is compared with."""
        x, y, m = self.x_held, self.y_held, self.m_held > 0.5
        real = self.score(x, y, m)
        # control: each lesion image's mask moved onto the next lesion image (masks off their lesions)
        les = torch.nonzero(y == 1).flatten()
        moved = m.clone()
        moved[les] = m[les.roll(1)]
        real["mask_contrast_control"] = mask_contrast(x, moved)
        with torch.no_grad():
            real["mask_dice_control"] = dice(moved, self.seg(x.float()) > 0)
        return real


@torch.no_grad()
def sample(ckpt: Path, per_class: int = 100, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, cfg = load_generator(ckpt)
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(cfg.num_classes).repeat_interleave(per_class)
    out = g(torch.randn(len(y), cfg.z_dim, generator=gen), y).clamp(-1, 1)  # [N, 2, S, S]
    return out[:, :1], y, out[:, 1:] > 0


def run_arm(arm: str, steps: int, inst: Instrument, root: Path) -> dict:
    cfg = arm_config(arm, steps)
    run = root / arm
    t0 = time.perf_counter()
    train(cfg, run)
    seconds = time.perf_counter() - t0
    out = {"arm": arm, "steps": steps, "train_seconds": round(seconds, 1)}
    for which in ("last", "best"):
        try:
            ckpt = select_checkpoint(run, which)
        except Exception:  # noqa: BLE001 - an arm without probes has no best
            continue
        out[which] = {"checkpoint": ckpt.name, **inst.score(*sample(ckpt))}
    probes = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if '"probe"' in line]
    out["probe_recall_recorded"] = bool(probes) and all("probe/recall" in p for p in probes)
    return out


def run(quick: bool = False, arms: tuple[str, ...] = ("new", "default"), steps: int | None = None) -> list[dict]:
    torch.set_num_threads(1)
    return _rows(measure(arms, steps or (QUICK_STEPS if quick else STEPS)))


def measure(arms: tuple[str, ...], steps: int, keep: Path | None = None) -> dict:
    """Train and judge each arm (runs kept under `keep` if given); the raw results as one JSON-able dict."""
    inst = Instrument()
    oracle = inst.oracle()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_arm(arm, steps, inst, Path(keep or tmp)) for arm in arms]
    raw = {"oracle": oracle, "judge_acc": inst.judge_acc, "arms": results}
    print(json.dumps(raw, indent=1), flush=True)
    return raw


def _rows(raw: dict) -> list[dict]:
    rows = []
    oracle = raw["oracle"]
    for res in raw["arms"]:
        for which in ("last", "best"):
            if which not in res:
                continue
            r = res[which]
            note = (f"{res['arm']} arm, {which} checkpoint ({r['checkpoint']}), {res['steps']} steps, batch 32, "
                    f"base 16, 32 px, 50 real/class, train {res['train_seconds']} s; baseline: held-out real "
                    "images through the same instrument")
            for key in ("mask_nonempty_lesion", "mask_empty_healthy", "mask_dice", "mask_contrast", "recall",
                        "precision", "cond_acc", "memorisation_ratio"):
                base = oracle[key]
                value = r[key] if r[key] == r[key] else None  # NaN: no sample had a mask
                rows.append({"name": f"{res['arm']}_{res['steps']}_{which}_{key}",
                             "value": None if value is None else round(value, 4),
                             "unit": "",
                             "baseline": round(base, 4),
                             "ratio": round(value / base, 3) if base and value is not None else None,
                             "note": note})
        rows.append({"name": f"{res['arm']}_{res['steps']}_probe_recall_recorded", "value": res["probe_recall_recorded"],
                     "unit": "", "note": "every probe row of the run holds probe/recall"})
    rows.append({"name": "instrument_judge_accuracy", "value": round(raw["judge_acc"], 4), "unit": "",
                 "note": "class accuracy of the judge CNN on 200 held-out real images (trained on 1,000 others)"})
    for key in ("mask_dice", "mask_contrast"):
        rows.append({"name": f"instrument_{key}_control", "value": round(oracle[f"{key}_control"], 4), "unit": "",
                     "baseline": round(oracle[key], 4), "ratio": round(oracle[f"{key}_control"] / oracle[key], 3),
                     "note": "real masks moved onto other lesion images (off their lesions): must be far below "
                             "the real value (baseline)"})
    return rows


def write_benchmarks(raws: list[dict]) -> None:
    """Merge arms measured in separate processes into BENCHMARKS.md's table (as `make bench` would)."""
    import datetime as dt
    import subprocess

    from bench import run as bench_run

    raw = {"oracle": raws[0]["oracle"], "judge_acc": raws[0]["judge_acc"],
           "arms": [a for r in raws for a in r["arms"]]}
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=bench_run.ROOT).stdout.strip()
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC @{rev}"
    path = bench_run.ROOT / "BENCHMARKS.md"
    text = path.read_text()
    head, rest = text.split(bench_run.AUTO_START, 1)
    block = rest.split(bench_run.AUTO_END, 1)
    table = bench_run.table({"gan_quality": _rows(raw)}, stamp, bench_run._old_rows(text))
    old_table = "\n".join(l for l in block[0].splitlines() if l.startswith("|"))
    path.write_text(head + bench_run.AUTO_START + block[0].replace(old_table, table) + bench_run.AUTO_END + block[1])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--arms", default="new,default")
    ap.add_argument("--json-out", type=Path, help="also write the raw results here")
    ap.add_argument("--keep", type=Path, help="keep the runs (checkpoints, stats, grids) under this folder")
    ap.add_argument("--write", nargs="+", type=Path, metavar="JSON",
                    help="instead of measuring: merge raw results of separate runs into BENCHMARKS.md")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:key=value,...",
                    help="an extra arm: the new defaults with these TrainConfig values (JSON values)")
    args = ap.parse_args()
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        VARIANTS[name] = {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs.split(",") if p)}
    if args.write:
        write_benchmarks([json.loads(p.read_text()) for p in args.write])
    else:
        torch.set_num_threads(1)
        raw = measure(tuple(args.arms.split(",")), args.steps, args.keep)
        if args.json_out:
            args.json_out.write_text(json.dumps(raw, indent=1))
        for row in _rows(raw):
            print(row)
