"""DCGAN baseline (Radford et al. 2016), made class-conditional the simple way: the label
is embedded and concatenated to z in G, and projected onto D's features."""

from __future__ import annotations

import torch
from torch import nn

from medgan.models.blocks import channel_plan


def _init(m: nn.Module) -> None:
    # DCGAN paper: N(0, 0.02) weights, BN gain N(1, 0.02)
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class DCGenerator(nn.Module):
    """z [N, z_dim], y [N] -> [N, channels (+1), S, S] in [-1, 1] via strided transposed convs."""

    def __init__(self, image_size: int, channels: int, num_classes: int, z_dim: int,
                 base: int, with_masks: bool = False):
        super().__init__()
        plan = channel_plan(image_size, base)
        self.z_dim, self.num_classes = z_dim, num_classes
        self.out_channels = channels + int(with_masks)
        emb = 16 if num_classes > 1 else 0
        self.embed = nn.Embedding(num_classes, emb) if emb else None
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim + emb, plan[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(plan[0]), nn.ReLU(True)]
        for a, b in zip(plan[:-2], plan[1:-1]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(plan[-2], self.out_channels, 4, 2, 1)]
        self.net = nn.Sequential(*layers)  # tanh is applied in forward (pre-tanh output on request)
        self.apply(_init)

    def forward(self, z: torch.Tensor, y: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """Images in [-1, 1]; `logits=True` returns the pre-tanh output."""
        if self.embed is not None:
            z = torch.cat([z, self.embed(y)], dim=1)  # [N, z_dim + 16]
        out = self.net(z[:, :, None, None])  # [N, C_out, S, S]
        return out if logits else torch.tanh(out)


class DCDiscriminator(nn.Module):
    """x [N, C (+1), S, S], y [N] -> logits [N]: strided convs and LeakyReLU.

    No batch norm: the loop scores real and fake in one batch, and batch statistics over a
    mixed batch let D tell them apart by batch composition (and differ from the fake-only
    batch of the G step). Per-sample layers keep D's judgement of a sample independent of
    its batch."""

    def __init__(self, image_size: int, in_channels: int, num_classes: int, base: int):
        super().__init__()
        plan = list(reversed(channel_plan(image_size, base)))[1:]  # widths at S/2 ... 4 px
        layers: list[nn.Module] = [nn.Conv2d(in_channels, plan[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for a, b in zip(plan[:-1], plan[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers)
        self.out = nn.Conv2d(plan[-1], 1, 4, 1, 0)
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, plan[-1] * 16) if num_classes > 1 else None
        self.apply(_init)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # [N, C, 4, 4]
        out = self.out(h).flatten()  # [N]
        if self.embed is not None:
            out = out + (self.embed(y) * h.flatten(1)).sum(dim=1) / h[0].numel() ** 0.5
        return out
