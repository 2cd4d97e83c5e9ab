"""Class-conditional residual GAN: conditional-BN generator, projection discriminator.

Miyato & Koyama 2018 (cGANs with projection discriminator), Miyato et al. 2018 (spectral
norm). With `with_masks` the output carries an extra lesion-mask channel, in one of two ways:

- `mask_source="generated"`: image and mask come out of one tanh, jointly, and the discriminator
  judges the pair. On 50 phantom images per class this mask channel dies and revives (masks on 70 %
  of lesion-class samples at best, Dice 0.24 against 0.63 for real pairs; bench_gan_quality), and the
  image's class is at chance for a real-trained classifier: nothing forces a lesion into the image.
- `mask_source="bank"` (mask first, then the image): a lesion-class sample takes one of the run's real
  lesion masks, chosen by its own noise (index = floor(Phi(z_0) * M), so sample i stays a pure function
  of (checkpoint, seed, i)); a healthy-class sample has the empty mask. The mask is fed to every
  generator block (downsampled, concatenated to the features, SPADE-like in spirit) and the image is
  drawn around it; the discriminator still judges the (image, mask) pair, and the coupling term
  (medgan.coupling.image_follows_mask) asks a frozen real-trained segmenter to find the lesion where the
  mask says and nowhere else. A lesion-class mask can then never be empty, and the class is carried by
  something the image must show. The price, said plainly: the masks are the training set's own
  annotations (the images are new), so the mask bank (binary shapes, no pixels of the images) ships
  inside the generator's weights, and mask diversity is that of the real masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medgan.models.blocks import DiscBlock, GenBlock, channel_plan, sn_linear


MASK_LOGIT = 20.0  # a bank mask's "pre-tanh" value: tanh(+-20) is exactly +-1 in float32, float16 and bfloat16


class ResGenerator(nn.Module):
    """z [N, z_dim], y [N] -> images [N, channels (+1 mask), S, S] in [-1, 1].

    `mask_bank=True` (needs `with_masks`): the mask channel is drawn from the `mask_bank` buffer
    [M, 1, S, S] {0, 1} for the classes in the `lesion_classes` buffer [K] bool (set by `set_mask_bank`
    from the run's real data; saved with the weights) and the image is generated around it."""

    def __init__(self, image_size: int, channels: int, num_classes: int, z_dim: int,
                 base: int, with_masks: bool = False, mask_bank: bool = False):
        super().__init__()
        plan = channel_plan(image_size, base)  # widths at 4, 8, ..., image_size px
        self.z_dim, self.num_classes, self.channels = z_dim, num_classes, channels
        self.out_channels = channels + int(with_masks)
        self.uses_bank = bool(mask_bank and with_masks)
        extra = int(self.uses_bank)  # the mask, concatenated to the features entering each block
        self.fc = nn.Linear(z_dim, plan[0] * 16)
        self.blocks = nn.ModuleList(GenBlock(a + extra, b, num_classes) for a, b in zip(plan[:-1], plan[1:]))
        self.bn = nn.BatchNorm2d(plan[-1])
        self.out = nn.Conv2d(plan[-1] + extra, channels if self.uses_bank else self.out_channels, 3, padding=1)
        self.c0 = plan[0]
        if self.uses_bank:
            self.register_buffer("mask_bank", torch.zeros(0, 1, image_size, image_size))
            self.register_buffer("lesion_classes", torch.zeros(num_classes, dtype=torch.bool))

    def set_mask_bank(self, masks: torch.Tensor, lesion_classes: torch.Tensor) -> None:
        """masks [M, 1, S, S] in {0, 1} (the real lesion-class masks), lesion_classes [K] bool."""
        if len(masks) == 0 and bool(lesion_classes.any()):
            raise ValueError("a lesion class needs at least one real mask in the bank")
        self.mask_bank = (masks > 0.5).float().to(self.mask_bank.device)
        self.lesion_classes = lesion_classes.bool().to(self.lesion_classes.device)

    def pick_masks(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mask of each sample [N, 1, S, S] {0, 1}: bank entry floor(Phi(z_0) * M) for lesion classes."""
        n, size = z.shape[0], self.mask_bank.shape[-1]
        if len(self.mask_bank) == 0:
            return z.new_zeros(n, 1, size, size)
        u = 0.5 * (1 + torch.erf(z[:, 0].detach().float() / 2 ** 0.5))  # [N] uniform in (0, 1)
        idx = (u * len(self.mask_bank)).long().clamp_(0, len(self.mask_bank) - 1)
        on = self.lesion_classes[y].to(z.dtype)[:, None, None, None]  # [N, 1, 1, 1]
        return self.mask_bank[idx].to(z.dtype) * on

    def forward(self, z: torch.Tensor, y: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """Images in [-1, 1]; `logits=True` returns the pre-tanh output (the mask-coupling loss needs it;
        a bank mask's channel is then +-MASK_LOGIT, so tanh of it is exactly the mask)."""
        h = self.fc(z).view(z.shape[0], self.c0, 4, 4)  # [N, C0, 4, 4]
        m = self.pick_masks(z, y) if self.uses_bank else None  # [N, 1, S, S]
        for block in self.blocks:
            if m is not None:
                h = torch.cat([h, F.adaptive_max_pool2d(m, h.shape[-2:])], 1)  # a 1-px lesion survives pooling
            h = block(h, y)  # doubles H, W
        h = F.relu(self.bn(h))
        if m is not None:
            h = torch.cat([h, m], 1)
        out = self.out(h)  # [N, C_out (or C with a bank), S, S]
        if m is not None:
            out = torch.cat([out, (2 * m - 1) * MASK_LOGIT], 1)
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
