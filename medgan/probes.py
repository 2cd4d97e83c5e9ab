"""Quality probes of a GAN during training: the sanity gates of medgan.evaluate.sanity on a fixed sample.

The judges (a classifier and a lesion segmenter) are trained once per run on the run's own real data by
`sanity.train_judges`, which keeps a stratified quarter back for the real reference of every probe. At
every checkpoint `Probes(ema_generator, step)` draws `probe_samples` images per class from fixed noise and
runs `sanity.check`; the flat dict it returns goes into stats.jsonl (keys `probe/...`), TensorBoard and
best.json:
- recall / precision: per-class k-NN figures (class means) against real-vs-real at equal n;
- cond_acc: the judge classifier's accuracy on the samples of each class (mean), against held-out reals;
- mask_nonempty_lesion, mask_dice, mask_contrast: mask presence and mask/lesion agreement (the judge's
  segmenter, the contrast the mask marks), each beside its `_real` value; mask_px: the mask area;
- near_copy_share and memorisation_ratio: copies of training images;
- gates_failed: how many sanity gates fail.

The judges are not the networks of the mask-coupling loss (medgan.coupling fits its own segmenter), so
the probes do not grade the term that was optimised.

`score` (higher is better; picks the best snapshot) is the geometric mean of min(1, x / real) for recall
and conditioning accuracy and, with masks, of the lesion-mask presence, min(1, Dice / real) and min(a,
1 / a) for the mask area ratio a = (mask pixel share) / (real share) - masks everywhere score as badly as
none; one broken part sinks it. It is halved when more than 15 % of the samples are near-copies.
`alerts` name a dead mask channel, a recall collapse and copying as they happen.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medgan import rundir
from medgan.config import TrainConfig
from medgan.data import ImageDataset
from medgan.evaluate.sanity import GateThresholds, check, train_judges

_PROBE_STREAM = 11  # generator stream of the fixed probe noise
RECALL_COLLAPSE = 0.5  # alert when recall, once above this share of the real-vs-real one, halves
MASK_DEAD = 0.5  # alert when lesion-class samples carry a mask less than half as often as real ones


def _mean(per_class: dict | None, key: str | None = None) -> float:
    """Mean over classes of a gate's per-class value (optionally one key of a per-class dict); NaN if none."""
    vals = [(v[key] if key else v) for v in (per_class or {}).values()]
    vals = [float(v) for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _part(x: float, ref: float) -> float:
    return 0.0 if not (math.isfinite(x) and math.isfinite(ref)) or ref <= 0 else min(1.0, x / ref)


class Probes:
    """Judges trained once per run (main rank); `probes(ema_generator, step)` returns the probe dict."""

    def __init__(self, cfg: TrainConfig, data: ImageDataset, device: torch.device | str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        masks = data.masks if cfg.with_masks else None
        with torch.random.fork_rng(devices=[]):  # the GAN's RNG streams must not depend on the judges
            self.judges = train_judges(data.images.float(), data.labels, masks, steps=self.judge_steps(cfg, data),
                                       seed=cfg.seed + 101)
        self.px_ref = float((masks > 0.5).float().mean()) if masks is not None else float("nan")
        self.best_recall = 0.0
        self.thresholds = GateThresholds()

    @staticmethod
    def judge_steps(cfg: TrainConfig, data: ImageDataset) -> int:
        """cfg.probe_judge_steps, but no more than 4 passes' worth of the data (at least 50): a judge of a
        few dozen images learns nothing from more, and tiny runs should not wait for it."""
        return min(cfg.probe_judge_steps, max(50, 4 * len(data)))

    @torch.no_grad()
    def _samples(self, g: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        gen = rundir.step_generator(cfg.seed, 0, 0, _PROBE_STREAM)
        z = torch.randn(cfg.num_classes * cfg.probe_samples, cfg.z_dim, generator=gen)
        y = torch.arange(cfg.num_classes).repeat_interleave(cfg.probe_samples)
        was_training = g.training
        g.eval()
        out = torch.cat([g(z[i:i + 256].to(self.device), y[i:i + 256].to(self.device)).float().cpu()
                         for i in range(0, len(z), 256)])
        g.train(was_training)
        return out.clamp(-1, 1), y  # [K*n, C(+1), S, S], [K*n]

    def __call__(self, g: torch.nn.Module, step: int) -> dict:
        c = self.cfg.channels
        fake, y = self._samples(g)
        img = fake[:, :c]
        masks = (fake[:, c:] > 0).float() if fake.shape[1] > c and self.judges.lesion_classes else None
        res = check(self.judges, img, y, masks, self.thresholds, seed=step)
        gates = {gt["name"]: gt for gt in res["gates"]}
        div, fid, cond, mem = gates["diversity"], gates["fidelity"], gates["conditioning"], gates["memorisation"]
        out = {"recall": _mean(div["value"], "recall"), "recall_real": _mean(div["reference"], "recall"),
               "precision": _mean(fid["value"], "precision"), "precision_real": _mean(fid["reference"], "precision"),
               "cond_acc": _mean(cond["value"]), "cond_acc_real": _mean(cond["reference"]),
               "near_copy_share": mem["value"], "memorisation_ratio": mem["ratio"],
               "gates_failed": float(len(res["failed"]))}
        parts = [_part(out["recall"], out["recall_real"]), _part(out["cond_acc"], out["cond_acc_real"])]
        alerts = []
        if masks is not None:
            empty, dice, contrast = gates["empty_masks"], gates.get("mask_dice"), gates["mask_contrast"]
            nonempty = 1 - empty["value"] if empty["value"] is not None else float("nan")
            real_nonempty = 1 - (empty["reference"] or 0.0)
            out.update(mask_nonempty_lesion=nonempty, mask_nonempty_real=real_nonempty,
                       mask_contrast=_num(contrast["value"]), mask_contrast_real=_num(contrast["reference"]),
                       mask_px=float(masks.mean()), mask_px_real=self.px_ref)
            if dice is not None:
                out.update(mask_dice=_num(dice["value"]), mask_dice_real=_num(dice["reference"]))
                parts.append(_part(out["mask_dice"], out["mask_dice_real"]))
            area = out["mask_px"] / self.px_ref if self.px_ref > 0 else float("nan")
            parts += [nonempty if math.isfinite(nonempty) else 0.0,
                      0.0 if not math.isfinite(area) or area <= 0 else min(area, 1 / area)]
            if math.isfinite(nonempty) and nonempty < MASK_DEAD * real_nonempty:
                alerts.append(f"mask channel dead: {nonempty:.0%} of lesion-class samples have a mask "
                              f"(real: {real_nonempty:.0%})")
        # geometric mean: one broken part (no recall, no masks) sinks the score; 0.01 floors a zero part
        score = float(np.exp(np.mean(np.log(np.maximum(parts, 0.01)))))
        if mem["value"] > self.thresholds.max_near_copy_share:
            score *= 0.5
            alerts.append(f"memorisation: {mem['value']:.0%} of samples are near-copies of training images")
        ref_recall = out["recall_real"] if math.isfinite(out["recall_real"]) else 1.0
        if self.best_recall >= RECALL_COLLAPSE * ref_recall and out["recall"] < 0.5 * self.best_recall:
            alerts.append(f"recall collapsed: {out['recall']:.2f} (real-vs-real {ref_recall:.2f}, "
                          f"best so far {self.best_recall:.2f})")
        if math.isfinite(out["recall"]):
            self.best_recall = max(self.best_recall, out["recall"])
        clean = {k: (None if not math.isfinite(v) else round(float(v), 6)) for k, v in out.items()}  # no NaN in JSON
        return {**clean, "score": round(score, 6), "alerts": alerts}


def _num(v) -> float:
    return float(v) if v is not None and np.isfinite(v) else float("nan")
