"""Keeping a generated mask channel coupled to the lesions the image shows (`mask_coupling="segmenter"`).

What goes wrong without it (the issue's run: no lesion-class mask had a pixel from step 500 on): the
generator emits image and mask jointly through one tanh, and the discriminator judges the pair. Lesion
masks cover about 1 % of the pixels, so D's pooled features weigh them little; the mask channel drifts
to "all background", its pre-tanh values go strongly negative, and (the likely mechanism) from then on tanh'(l) ~ 0 passes
no adversarial gradient back: the channel is dead and cannot recover. Meanwhile nothing ties the mask to
the image, so even a live mask need not mark the lesion that was drawn.

The design: a small fully-convolutional lesion segmenter S is fitted on the run's own REAL (image,
mask) pairs before the GAN starts (no extra data; seeded; frozen afterwards), and G's mask gets one
per-pixel term on every step, with l its pre-tanh mask output (tanh(l) = 2 sigmoid(2 l) - 1, so
sigmoid(2 l) is exactly the mask the discriminator and `generate` see):

    mask follows image: BCE-with-logits(2 l, sigmoid(S(x_fake))) + soft Dice

The mask marks what a real-trained segmenter reads as lesion in the generated image. On logits this
gradient never vanishes, so a switched-off channel is pulled back as soon as the image shows a lesion,
and a mask never sits where the image shows none. S is evaluated without gradients: the image is left
to the discriminator, which sees the (image, mask) pair and so still demands lesions (with masks) for
the lesion class. A first version also pushed the image toward the mask through S; it ran away (the
mask spread over 64 % of the pixels, the image followed, and D won outright by step 100), so the image
direction is not used.

The term is a weighted BCE plus a soft Dice, so 1 % of lesion pixels is not outvoted by the other 99 %.
The probes that measure the result (medgan.probes, the benchmark) do not use S: mask/lesion agreement
is judged by the image contrast the mask marks, so they do not grade the loss that was optimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LesionSegmenter(nn.Module):
    """image [N, C, S, S] in [-1, 1] -> lesion logits [N, 1, S, S]. Dilated convs: full resolution
    (lesions are 1-3 px at 32 px) with a receptive field of about 31 px for context (lung vs tissue)."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for dil in (1, 2, 4, 8, 1):
            layers += [nn.Conv2d(c, width, 3, padding=dil, dilation=dil), nn.GroupNorm(4, width), nn.SiLU()]
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # [N, 1, S, S]


def _flip_rot(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(2, 3))
    return x.flip(3) if flip else x


def _seg_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Weighted BCE plus soft Dice (the usual pair for small structures); target in [0, 1]."""
    p = torch.sigmoid(logits)
    soft_dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight) + soft_dice


def fit_segmenter(images: torch.Tensor, masks: torch.Tensor, seed: int, steps: int = 300, batch: int = 32,
                  device: torch.device | str = "cpu") -> tuple[LesionSegmenter, dict[str, float]]:
    """Fit S on real images [N, C, S, S] in [-1, 1] and masks [N, 1, S, S] in {0, 1}; frozen, eval mode.

    Random flips and quarter turns of each batch (lesions have no orientation). Deterministic for
    (data, seed) on one device; it never touches the global RNG (the GAN's initial weights and a
    resumed run must not depend on it). Returns S and its fit statistics (Dice on the training pairs).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LesionSegmenter(images.shape[1]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    pos_weight = lesion_weight(masks).to(device)
    x_all, m_all = images.to(device), masks.to(device)
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(len(x_all), (min(batch, len(x_all)),), generator=gen).to(device)
        k, flip = int(torch.randint(4, (1,), generator=gen)), bool(torch.randint(2, (1,), generator=gen))
        x, m = _flip_rot(x_all[idx], k, flip), _flip_rot(m_all[idx], k, flip)
        loss = _seg_loss(net(x), m, pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        pred = torch.cat([net(x_all[i:i + 64]) for i in range(0, len(x_all), 64)]) > 0
    inter, total = (pred & (m_all > 0.5)).sum().item(), pred.sum().item() + (m_all > 0.5).sum().item()
    return net, {"loss": float(loss.detach()), "dice_train": 2 * inter / max(total, 1)}


def lesion_weight(masks: torch.Tensor) -> torch.Tensor:
    """pos_weight for BCE: background pixels per lesion pixel in the real masks, clamped to [1, 10]
    (beyond 10 the segmenter marks everything bright as lesion; with soft Dice beside it, 10 suffices)."""
    share = float(masks.float().mean())
    return torch.tensor((1 - share) / share if share > 0 else 1.0).clamp(1.0, 10.0)


def coupling_loss(mask_logit: torch.Tensor, image: torch.Tensor, seg: LesionSegmenter,
                  pos_weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The term of the module docstring for G's pre-tanh mask output [N, 1, S, S] and its image
    [N, C, S, S] in [-1, 1]; returns (loss, parts). No gradient reaches the image or S."""
    with torch.no_grad():
        target = torch.sigmoid(seg(image.detach()).float())  # [N, 1, S, S] what S reads as lesion
    follow = _seg_loss(2 * mask_logit.float(), target, pos_weight.to(target.device))
    return follow, {"mask_follow_image": follow.detach(), "seg_px": (target > 0.5).float().mean()}


def image_follows_mask(image: torch.Tensor, mask: torch.Tensor, seg: LesionSegmenter,
                       pos_weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The coupling of `mask_source="bank"` (mask first): the mask [N, 1, S, S] {0, 1} is given (a real
    mask, or empty for a healthy sample), so the term runs the other way - S, frozen, must read the lesion
    in the generated image [N, C, S, S] where the mask is and nowhere else; the gradient reaches the image
    through S. The runaway of the image direction (module docstring) needed a free mask to chase; a bank
    mask cannot spread, and the discriminator, which sees the (image, mask) pair, keeps the lesion real."""
    logits = seg(image).float()  # [N, 1, S, S]; S has requires_grad False, the image does not
    loss = _seg_loss(logits, mask.float(), pos_weight.to(logits.device))
    return loss, {"image_follow_mask": loss.detach(), "seg_px": (logits.detach() > 0).float().mean()}
