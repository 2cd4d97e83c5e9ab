"""Building blocks shared by the GAN families: spectral-normalised layers, conditional
batch norm, and the residual up/down blocks of SNGAN/BigGAN-style networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def sn_conv(cin: int, cout: int, k: int = 3, sn: bool = True) -> nn.Module:
    """Conv with 'same' padding, optionally spectrally normalised (D: always; G: optional)."""
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    return spectral_norm(conv) if sn else conv


def sn_linear(cin: int, cout: int, sn: bool = True) -> nn.Module:
    lin = nn.Linear(cin, cout)
    return spectral_norm(lin) if sn else lin


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose gain and bias come from a class embedding (BigGAN/SNGAN generator).

    With one class it reduces to an ordinary affine BatchNorm.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.bn(x)  # [N, C, H, W]
        return h * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class GenBlock(nn.Module):
    """Residual up-block: CBN-ReLU-up-conv-CBN-ReLU-conv, with a 1x1 up-projected shortcut."""

    def __init__(self, cin: int, cout: int, num_classes: int, sn: bool = False):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(cin, num_classes)
        self.conv1 = sn_conv(cin, cout, 3, sn)
        self.bn2 = ConditionalBatchNorm(cout, num_classes)
        self.conv2 = sn_conv(cout, cout, 3, sn)
        self.skip = sn_conv(cin, cout, 1, sn)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # nearest upsampling: cheap, deterministic and free of checkerboard artefacts
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")  # [N, Cin, 2H, 2W]
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))  # [N, Cout, 2H, 2W]
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class DiscBlock(nn.Module):
    """Residual down-block of the projection discriminator (all layers spectrally normalised).

    The first block skips the leading ReLU so the raw image is not rectified.
    """

    def __init__(self, cin: int, cout: int, down: bool = True, first: bool = False):
        super().__init__()
        self.first, self.down = first, down
        self.conv1 = sn_conv(cin, cout, 3)
        self.conv2 = sn_conv(cout, cout, 3)
        self.skip = sn_conv(cin, cout, 1) if (cin != cout or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))  # [N, Cout, H, W]
        s = x
        if self.first:  # optimized block: pool then project (SNGAN)
            s = self.skip(F.avg_pool2d(s, 2) if self.down else s)
        elif self.skip is not None:
            s = self.skip(s)
            s = F.avg_pool2d(s, 2) if self.down else s
        if self.down:
            h = F.avg_pool2d(h, 2)  # [N, Cout, H/2, W/2]
        return h + s


def channel_plan(image_size: int, base: int, cap: int = 8) -> list[int]:
    """Channel widths from the 4x4 bottleneck up to full resolution, e.g. 32 px, base 64:
    [256, 128, 64, 64] (one entry per resolution 4, 8, 16, 32)."""
    n = image_size.bit_length() - 3  # number of x2 stages from 4 px
    return [base * min(cap, 2 ** max(n - 1 - i, 0)) for i in range(n)] + [base]
