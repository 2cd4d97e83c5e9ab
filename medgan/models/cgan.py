"""Class-conditional residual GAN: conditional-BN generator, projection discriminator.

Miyato & Koyama 2018 (cGANs with projection discriminator), Miyato et al. 2018 (spectral
norm). The generator can emit an extra lesion-mask channel (`with_masks`): images and
masks are generated jointly so the discriminator judges their consistency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medgan.models.blocks import DiscBlock, GenBlock, channel_plan, sn_linear


class ResGenerator(nn.Module):
    """z [N, z_dim], y [N] -> images [N, channels (+1 mask), S, S] in [-1, 1]."""

    def __init__(self, image_size: int, channels: int, num_classes: int, z_dim: int,
                 base: int, with_masks: bool = False):
        super().__init__()
        plan = channel_plan(image_size, base)  # widths at 4, 8, ..., image_size px
        self.z_dim, self.num_classes = z_dim, num_classes
        self.out_channels = channels + int(with_masks)
        self.fc = nn.Linear(z_dim, plan[0] * 16)
        self.blocks = nn.ModuleList(GenBlock(a, b, num_classes) for a, b in zip(plan[:-1], plan[1:]))
        self.bn = nn.BatchNorm2d(plan[-1])
        self.out = nn.Conv2d(plan[-1], self.out_channels, 3, padding=1)
        self.c0 = plan[0]

    def forward(self, z: torch.Tensor, y: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """Images in [-1, 1]; `logits=True` returns the pre-tanh output (the mask-coupling loss needs it)."""
        h = self.fc(z).view(z.shape[0], self.c0, 4, 4)  # [N, C0, 4, 4]
        for block in self.blocks:
            h = block(h, y)  # doubles H, W
        out = self.out(F.relu(self.bn(h)))  # [N, C_out, S, S]
        return out if logits else torch.tanh(out)


class ProjectionDiscriminator(nn.Module):
    """x [N, C (+1 mask), S, S], y [N] -> logits [N].

    logit = psi(phi(x)) + <embed(y), phi(x)>: the class enters through an inner product
    with the pooled features (projection), not by concatenation.
    """

    def __init__(self, image_size: int, in_channels: int, num_classes: int, base: int):
        super().__init__()
        plan = list(reversed(channel_plan(image_size, base)))  # widths at S, S/2, ..., 4 px
        widths = plan[1:]
        blocks = [DiscBlock(in_channels, widths[0], down=True, first=True)]
        blocks += [DiscBlock(a, b, down=True) for a, b in zip(widths[:-1], widths[1:])]
        # the last down-block brings 8 -> 4; one more block at 4 px without pooling
        blocks.append(DiscBlock(widths[-1], widths[-1], down=False))
        self.blocks = nn.Sequential(*blocks)
        self.linear = sn_linear(widths[-1], 1)
        self.embed = nn.utils.parametrizations.spectral_norm(nn.Embedding(num_classes, widths[-1]))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # [N, C] global sum pooling
        out = self.linear(h).squeeze(1)  # [N]
        if self.num_classes > 1:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out
