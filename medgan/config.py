"""Experiment settings: one frozen, validated object per job kind.

These are the contract between the job system and the science. The scheduler stores
them on the job row (as JSON) and the science writes them as `config.json` beside a
run's outputs. Pure pydantic: importing this module must not import torch.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medgan.data.policy import ReadPolicy


_CHECKPOINT_CHOICE = re.compile(r"^(best|last|step-(\d{1,9}))$")


def parse_checkpoint_choice(which: str) -> str | int:
    """"best" | "last" | "step-N" -> "best", "last" or N (int). Raises ValueError with the accepted forms."""
    m = _CHECKPOINT_CHOICE.match(str(which).strip())
    if not m:
        raise ValueError(f"checkpoint must be best, last or step-N (e.g. step-500), not {which!r}")
    return int(m.group(2)) if m.group(2) else m.group(1)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


ModelName = Literal["dcgan", "cgan", "esrgan", "zerodce"]
Precision = Literal["auto", "no", "fp16", "bf16"]
# ADA's augmentations (Karras et al. 2020, "bgc" less hue/saturation/luma flip), in the order they apply
ADA_OPS = ("xflip", "rot90", "translate", "scale", "rotate", "aniso", "fractranslate", "brightness", "contrast",
           "cutout")
EnhanceMethod = Literal["lime", "gamma", "he", "clahe", "zerodce", "bicubic", "esrgan"]


class PhantomSpec(_Frozen):
    """The bundled procedural dataset: seeded, any size, two classes with lesion masks."""

    count: int = Field(512, ge=4, le=1_000_000, description="number of images")
    size: int = Field(64, ge=16, le=1024, description="image side in pixels")
    seed: int = Field(0, ge=0)
    lesion_fraction: float = Field(0.5, ge=0.0, le=1.0, description="share of images with lesions")


class TrainConfig(_Frozen):
    """A training run. `dataset` is either the phantom spec or a local directory the worker resolved."""

    model: ModelName = "cgan"
    image_size: int = Field(32, description="training resolution (power of two, 32..256)")
    channels: int = Field(1, ge=1, le=3)
    num_classes: int = Field(2, ge=1, le=1000, description="1 means unconditional")
    with_masks: bool = Field(False, description="generator emits a lesion-mask channel")
    phantom: PhantomSpec | None = Field(default_factory=PhantomSpec)
    steps: int = Field(200, ge=1, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr_g: float = Field(2e-4, gt=0, le=1)
    lr_d: float = Field(2e-4, gt=0, le=1)
    z_dim: int = Field(128, ge=8, le=1024)
    base_channels: int = Field(64, ge=8, le=1024, description="width of the networks")
    loss: Literal["hinge", "nonsaturating"] = "hinge"
    r1_gamma: float = Field(0.2, ge=0, description="R1 penalty weight on real images (0: off)")
    r1_every: int = Field(16, ge=1, description="lazy R1: penalise every N steps with weight x N (1: every step)")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    diffaug: str = Field("translation,cutout", description="DiffAugment policy, comma separated; '' for none")
    ada: bool = Field(True, description="adaptive discriminator augmentation: r_t heuristic drives p")
    ada_target: float = Field(0.6, gt=0, lt=1, description="ADA target of r_t = E[sign(D(real))]")
    ada_kimg: float = Field(5.0, gt=0, description="thousands of images for p to move by 1 (speed of ADA)")
    ada_interval: int = Field(4, ge=1, description="steps between ADA adjustments of p")
    ada_p: float = Field(0.0, ge=0, le=1, description="initial (ada=True) or fixed (ada=False, >0) augment p")
    ada_ops: str = Field("xflip,rot90,translate,scale,rotate,aniso,brightness,contrast",
                         description="ADA pipeline, comma separated")
    mask_coupling: Literal["none", "segmenter"] = Field(
        "segmenter", description="with_masks: how the mask channel is tied to the lesions it marks (medgan.coupling)")
    mask_source: Literal["auto", "generated", "bank"] = Field(
        "auto", description="with_masks: 'generated': G emits the mask channel; 'bank': each lesion-class "
                            "sample takes a real mask of the run (chosen by its noise) and G draws the image "
                            "around it (mask first; medgan.models.cgan); 'auto': bank for a cgan with masks")
    mask_weight: float = Field(1.0, ge=0, description="weight of the mask-coupling terms")
    mask_segmenter_steps: int = Field(300, ge=1, le=100_000, description="fit steps of the coupling's segmenter")
    probes: bool = Field(True, description="quality probes on a fixed sample at every checkpoint (GAN runs)")
    probe_samples: int = Field(100, ge=8, le=10_000, description="synthetic images per class for the probes")
    probe_judge_steps: int = Field(400, ge=1, le=100_000,
                                   description="training steps of each probe judge (medgan.evaluate.sanity)")
    tensorboard: bool = Field(True, description="log scalars and sample grids to RUN/tensorboard")
    checkpoint_every: int = Field(100, ge=1)
    sample_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1, description="steps between progress ticks (stats.jsonl, on_progress)")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept on disk")
    seed: int = Field(0, ge=0)
    deterministic: bool = Field(False, description="bitwise-reproducible kernels (slower)")
    mixed_precision: Precision = "auto"
    sr_scale: Literal[2, 4] = Field(4, description="super-resolution factor (esrgan only)")
    perceptual_weights: str | None = Field(None, description="local VGG weights file for SR perceptual loss")
    adv_weight: float = Field(5e-3, ge=0, le=10, description="esrgan: weight of the relativistic adversarial "
                              "term (the paper's 5e-3; 0: the PSNR-oriented RRDB net of its first stage, no "
                              "discriminator steps)")
    dce_context: int = Field(0, ge=0, le=1024, description="zerodce: estimate the curve maps on a copy of the "
                             "input area-resized to this long side and upsample them (Zero-DCE++), so the net sees "
                             "the whole image's exposure; 0: at full resolution (the paper's net)")
    reference_weight: float = Field(0.0, ge=0, le=1000, description="zerodce: weight of an L1 term between the "
                                    "enhanced batch and the clean images it was darkened from (0: the paper's "
                                    "four zero-reference losses only)")
    read: ReadPolicy = Field(default_factory=ReadPolicy, description="how dataset files are read (medgan.data)")

    @field_validator("image_size")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v < 16 or v > 256 or v & (v - 1):
            raise ValueError("image_size must be a power of two between 16 and 256")
        return v

    @property
    def masks_from_bank(self) -> bool:
        """Whether the generator takes its masks from the run's real ones (mask_source, 'auto' resolved)."""
        return self.mask_source == "bank" or (self.mask_source == "auto" and self.with_masks and self.model == "cgan")

    @model_validator(mode="after")
    def _mask_source(self) -> "TrainConfig":
        if self.mask_source == "bank" and not (self.with_masks and self.model == "cgan"):
            raise ValueError("mask_source='bank' needs model='cgan' and with_masks=True")
        return self

    @field_validator("diffaug")
    @classmethod
    def _policy(cls, v: str) -> str:
        allowed = {"color", "translation", "cutout"}
        parts = [p.strip() for p in v.split(",") if p.strip()]
        bad = [p for p in parts if p not in allowed]
        if bad:
            raise ValueError(f"unknown DiffAugment policy {bad}; choose from {sorted(allowed)}")
        return ",".join(parts)

    @field_validator("ada_ops")
    @classmethod
    def _ada_ops(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",") if p.strip()]
        bad = [p for p in parts if p not in ADA_OPS]
        if bad:
            raise ValueError(f"unknown ADA op {bad}; choose from {list(ADA_OPS)}")
        return ",".join(parts)


class GenerateConfig(_Frozen):
    """Sampling from a trained generator. Image i is a pure function of (checkpoint, seed, i)."""

    count: int = Field(64, ge=1, le=10_000_000)
    seed: int = Field(0, ge=0)
    class_counts: dict[int, int] | None = Field(
        None, description="images per class label; default: balanced over the model's classes"
    )
    bit_depth: Literal[8, 16] = 8
    format: Literal["png", "dicom", "nifti"] = Field(
        "png", description="file format of the images (and masks): PNG, DICOM Secondary Capture or NIfTI-1")
    with_masks: bool = False
    batch_size: int = Field(64, ge=1, le=4096)
    use_ema: bool = True

    @model_validator(mode="after")
    def _counts_sum(self) -> "GenerateConfig":
        if self.class_counts is not None:
            if any(n < 0 for n in self.class_counts.values()) or any(k < 0 for k in self.class_counts):
                raise ValueError("class_counts must be non-negative")
            if sum(self.class_counts.values()) != self.count:
                raise ValueError(
                    f"class_counts sum to {sum(self.class_counts.values())}, but count is {self.count}"
                )
        return self


class EnhanceConfig(_Frozen):
    """Enhancement / super-resolution over a dataset. `None` knobs mean: choose automatically."""

    method: EnhanceMethod = "lime"
    gamma: float | None = Field(None, description="gamma on the illumination / image (> 0); auto if unset")
    strength: float = Field(1.0, ge=0.0, le=1.0, description="blend of enhanced over input")
    alpha: float = Field(0.15, gt=0, le=10, description="LIME smoothness weight")
    sigma: float = Field(2.0, gt=0, le=50, description="LIME strategy-III Gaussian sigma")
    eps: float = Field(1e-3, gt=0, le=1)
    solver: Literal["fast", "exact"] = "fast"
    denoise: float | None = Field(None, ge=0, le=100, description="non-local-means strength in 8-bit grey levels "
                                  "(0: off; auto if unset: from the input's estimated noise, capped)")
    clip_limit: float = Field(0.01, gt=0, le=1, description="CLAHE clip limit")
    scale: Literal[2, 4] = Field(4, description="super-resolution factor")
    tile: int = Field(256, ge=32, le=4096, description="tile size for SR inference")
    tile_overlap: int = Field(16, ge=0, le=256)
    y_channel: bool | None = Field(
        None, description="score RGB on the BT.601 Y channel; None: the field's convention (Y with a `scale`-pixel "
        "border crop for super-resolution, the image's own channels (RGB or grey) for low-light enhancement)")
    read: ReadPolicy = Field(default_factory=ReadPolicy, description="how input files are read (medgan.data)")

    @field_validator("gamma")
    @classmethod
    def _gamma_positive(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v <= 10):
            raise ValueError("gamma must be in (0, 10]")
        return v


class EvaluateConfig(_Frozen):
    """Quality (FID/KID/PR) and utility (downstream classifier/segmenter) of a synthetic set."""

    seeds: int = Field(3, ge=1, le=20)
    real_per_class: int | None = Field(None, ge=1, description="limit real training images per class")
    synthetic_per_class: int | None = Field(None, ge=1)
    epochs: int = Field(15, ge=1, le=1000, description="epochs of the proxy feature extractor (the utility arms "
                        "train for `steps`, not epochs)")
    kid_subsets: int = Field(50, ge=1)
    kid_subset_size: int = Field(100, ge=2)
    feature_weights: str | None = Field(None, description="local Inception weights file (optional)")
    segmentation: bool = True
    test_fraction: float = Field(0.3, gt=0, lt=1)
    real_train_count: int | None = Field(
        None, ge=1, description="the first N real images are the training pool and the rest the test split "
        "(keeps images the GAN trained on out of the test set); None: a stratified split by test_fraction")
    # Added by the evaluation module (fields only added, none renamed):
    image_size: int = Field(32, ge=8, le=512, description="side every image is resized to for features and utility")
    channels: int = Field(1, ge=1, le=3, description="channels every image is converted to")
    pr_k: int = Field(3, ge=1, le=50, description="k of the k-NN manifolds for precision/recall")
    bootstrap: int = Field(1000, ge=0, le=100_000, description="bootstrap resamples of the test images (0: off)")
    batch_size: int = Field(32, ge=1, le=4096, description="batch size of the downstream networks")
    read: ReadPolicy = Field(default_factory=ReadPolicy, description="how the real set's files are read")
    # The utility study's protocol (medgan.evaluate.utility): budget parity, arms, replication, endpoints.
    steps: int = Field(600, ge=1, le=10_000_000, description="optimiser steps of every classifier arm (budget "
                       "parity); 600 lets the real-only classifier converge on the 32 px phantom")
    seg_steps: int = Field(800, ge=1, le=10_000_000, description="optimiser steps of every segmenter arm")
    seg_batch_size: int = Field(16, ge=1, le=4096, description="batch size of the downstream segmenter")
    eval_every: int = Field(50, ge=1, description="steps between two points of the validation learning curve")
    stopping: Literal["fixed", "early"] = Field(
        "fixed", description="fixed: the weights after the last step; early: the weights of the lowest loss "
        "on the real validation split, stopping after `patience` evaluations without improvement")
    patience: int = Field(4, ge=1, le=1000)
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the real training images carved off "
                                "as the validation split of the learning curves (stratified)")
    synthetic_share: float = Field(0.5, gt=0, lt=1, description="share of every mixed batch drawn from the "
                                   "synthetic set (real-duplicated: from a second copy of the real set)")
    arms: tuple[str, ...] = Field(("real", "real+aug", "real+synthetic", "real+aug+synthetic", "real-duplicated",
                                   "synthetic"), description="utility arms; 'real' (the baseline) always runs")
    draws: int = Field(1, ge=1, le=100, description="independent synthetic draws the set is cut into; seed s "
                       "trains on draw s mod draws")
    primary_classification: Literal["balanced_accuracy", "accuracy"] = Field(
        "balanced_accuracy", description="pre-declared primary endpoint of the classifier arms")
    primary_segmentation: Literal["dice"] = Field(
        "dice", description="pre-declared primary endpoint of the segmenter arms: per-image Dice on lesion images")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="significance level of the verdicts (Holm-adjusted)")
    gates: Literal["flag", "refuse", "off"] = Field(
        "flag", description="sanity gates of the synthetic set before the utility study: flag failures loudly, "
        "refuse to run the study, or skip the gates")
    judge_steps: int = Field(400, ge=10, le=100_000, description="training steps of each sanity-gate judge")
    feature_fraction: float = Field(0.3, gt=0, lt=1, description="share of the held-out real images (never seen "
                                    "by the GAN) used to train the feature extractor; the rest is the test split")

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = ("real", "real+aug", "real+synthetic", "real+aug+synthetic", "real-duplicated", "synthetic")
        bad = [a for a in v if a not in known]
        if bad:
            raise ValueError(f"unknown utility arm(s) {bad}; choose from {', '.join(known)}")
        return tuple(dict.fromkeys(v))
