"""GAN families. `build_generator(cfg)` / `build_discriminator(cfg)` choose by `cfg.model`."""

from __future__ import annotations

from torch import nn

from medgan.config import TrainConfig
from medgan.models.cgan import ProjectionDiscriminator, ResGenerator
from medgan.models.dcgan import DCDiscriminator, DCGenerator

__all__ = ["build_generator", "build_discriminator", "ResGenerator", "ProjectionDiscriminator",
           "DCGenerator", "DCDiscriminator"]


def build_generator(cfg: TrainConfig) -> nn.Module:
    """Generator for `cfg.model` in ("dcgan", "cgan"): forward(z [N, z_dim], y [N]) -> [N, C(+1), S, S]."""
    cls = {"dcgan": DCGenerator, "cgan": ResGenerator}.get(cfg.model)
    if cls is None:
        raise ValueError(f"no GAN generator for model {cfg.model!r}")
    if cfg.model == "cgan":
        return cls(cfg.image_size, cfg.channels, cfg.num_classes, cfg.z_dim, cfg.base_channels, cfg.with_masks,
                   mask_bank=cfg.masks_from_bank)
    return cls(cfg.image_size, cfg.channels, cfg.num_classes, cfg.z_dim, cfg.base_channels, cfg.with_masks)


def build_discriminator(cfg: TrainConfig) -> nn.Module:
    """Discriminator for `cfg.model`: forward(x [N, C(+1), S, S], y [N]) -> logits [N]."""
    cls = {"dcgan": DCDiscriminator, "cgan": ProjectionDiscriminator}.get(cfg.model)
    if cls is None:
        raise ValueError(f"no GAN discriminator for model {cfg.model!r}")
    return cls(cfg.image_size, cfg.channels + int(cfg.with_masks), cfg.num_classes, cfg.base_channels)
