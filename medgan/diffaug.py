"""Differentiable Augmentation (Zhao et al. 2020) with explicit random generators.

Applied to real AND fake batches before D so D cannot overfit a small dataset, while G still
receives gradients through the (differentiable) transforms. All randomness is drawn from a
`torch.Generator` the caller owns (seeded per step), so a resumed run augments exactly as an
uninterrupted one. Geometric ops (translation, cutout) move the mask channel with the image;
colour ops touch only the first `image_channels` channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rand(shape, gen: torch.Generator, device) -> torch.Tensor:
    # draw on the CPU generator then move: identical numbers on every device
    return torch.rand(shape, generator=gen).to(device)


def color(x: torch.Tensor, gen: torch.Generator, image_channels: int) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2, RGB only) and contrast (x0.5..1.5)."""
    n = x.shape[0]
    img, rest = x[:, :image_channels], x[:, image_channels:]  # [N, C, H, W], [N, 1|0, H, W]
    img = img + (_rand((n, 1, 1, 1), gen, x.device) - 0.5)
    if image_channels > 1:
        mean = img.mean(dim=1, keepdim=True)
        img = (img - mean) * (_rand((n, 1, 1, 1), gen, x.device) * 2) + mean
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * (_rand((n, 1, 1, 1), gen, x.device) + 0.5) + mean
    return torch.cat([img, rest], dim=1)


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each sample by up to `ratio` of its size, zero padded (DiffAugment's variant)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = (_rand((n,), gen, "cpu") * (2 * sh + 1)).long() - sh
    ty = (_rand((n,), gen, "cpu") * (2 * sw + 1)).long() - sw
    tx, ty = tx.to(x.device), ty.to(x.device)
    bi, gx, gy = torch.meshgrid(torch.arange(n, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")  # [N, H, W] each
    gx = torch.clamp(gx + tx[:, None, None] + 1, 0, h + 1)
    gy = torch.clamp(gy + ty[:, None, None] + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # [N, C, H+2, W+2]: border of zeros to sample from
    return padded.permute(0, 2, 3, 1)[bi, gx, gy].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero a random square of `ratio` x size per sample."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = (_rand((n,), gen, "cpu") * (h + (1 - ch % 2))).long().to(x.device)
    oy = (_rand((n,), gen, "cpu") * (w + (1 - cw % 2))).long().to(x.device)
    gx = torch.arange(ch, device=x.device)[None, :, None] + ox[:, None, None] - ch // 2  # [N, ch, 1]
    gy = torch.arange(cw, device=x.device)[None, None, :] + oy[:, None, None] - cw // 2  # [N, 1, cw]
    gx, gy = gx.clamp(0, h - 1).expand(n, ch, cw), gy.clamp(0, w - 1).expand(n, ch, cw)
    bi = torch.arange(n, device=x.device)[:, None, None].expand(n, ch, cw)
    keep = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    keep[bi, gx, gy] = 0
    return x * keep[:, None]


def diff_augment(x: torch.Tensor, policy: str, gen: torch.Generator, image_channels: int) -> torch.Tensor:
    """Apply the comma-separated `policy` ("color,translation,cutout") to x [N, C(+1), H, W]."""
    for op in [p for p in policy.split(",") if p]:
        if op == "color":
            x = color(x, gen, image_channels)
        elif op == "translation":
            x = translation(x, gen)
        elif op == "cutout":
            x = cutout(x, gen)
        else:
            raise ValueError(f"unknown DiffAugment op {op!r}")
    return x


# ---------------------------------------------------------------- adaptive discriminator augmentation

_LOG2 = math.log(2.0)


def _gate(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """[N] float in {0, 1}: which samples get this augmentation (each independently with prob p)."""
    return (torch.rand(n, generator=gen) < p).to(torch.float32)


def _affine(ops: set[str], n: int, p: float, gen: torch.Generator, size: int) -> torch.Tensor:
    """Per-sample 3x3 matrices [N, 3, 3] mapping OUTPUT to INPUT coordinates in [-1, 1] (grid_sample's
    convention), composed from the enabled geometric ops, each applied with probability p.

    Magnitudes follow ADA's defaults: translation 0.125 of the size, isotropic and anisotropic scale
    lognormal with sd 0.2 ln 2, rotation uniform over the circle (gated 1 - sqrt(1 - p) twice, as ADA,
    so the overall chance of a rotation is p), fractional translation normal with sd 0.125."""
    eye = torch.eye(3).repeat(n, 1, 1)
    m = eye.clone()

    def then(t: torch.Tensor) -> None:
        nonlocal m
        m = m @ t

    def scale2(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        t = eye.clone()
        t[:, 0, 0], t[:, 1, 1] = sx, sy
        return t

    def shift(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
        t = eye.clone()
        t[:, 0, 2], t[:, 1, 2] = tx, ty
        return t

    def rot(theta: torch.Tensor) -> torch.Tensor:
        t = eye.clone()
        c, s = torch.cos(theta), torch.sin(theta)
        t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1] = c, -s, s, c
        return t

    # Every op draws its random numbers whether or not it is enabled or gated on, so the stream (and thus
    # a resumed run) does not depend on the policy or on p.
    g = _gate(n, p, gen)
    if "xflip" in ops:
        then(scale2(1 - 2 * g * torch.randint(2, (n,), generator=gen).float(), torch.ones(n)))
    else:
        torch.randint(2, (n,), generator=gen)
    g = _gate(n, p, gen)
    k = torch.randint(4, (n,), generator=gen).float()
    if "rot90" in ops:
        then(rot(g * k * math.pi / 2))
    g = _gate(n, p, gen)
    tr = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.125
    if "translate" in ops:  # whole pixels: round to the pixel grid ([-1, 1] spans `size` pixels)
        tr = torch.round(tr * size / 2) * 2 / size
        then(shift(g * tr[:, 0] * 2, g * tr[:, 1] * 2))
    g = _gate(n, p, gen)
    s = torch.exp2(torch.randn(n, generator=gen) * 0.2)
    if "scale" in ops:
        s = 1 + g * (s - 1)
        then(scale2(s, s))
    p_rot = 1 - math.sqrt(max(0.0, 1 - p))
    g1, g2 = _gate(n, p_rot, gen), _gate(n, p_rot, gen)
    th1, th2 = (torch.rand(n, generator=gen) * 2 - 1) * math.pi, (torch.rand(n, generator=gen) * 2 - 1) * math.pi
    if "rotate" in ops:
        then(rot(g1 * th1))
    g = _gate(n, p, gen)
    a = torch.exp2(torch.randn(n, generator=gen) * 0.2)
    if "aniso" in ops:
        a = 1 + g * (a - 1)
        then(scale2(a, 1 / a))
    if "rotate" in ops:
        then(rot(g2 * th2))
    g = _gate(n, p, gen)
    ft = torch.randn(n, 2, generator=gen) * 0.125
    if "fractranslate" in ops:
        then(shift(g * ft[:, 0] * 2, g * ft[:, 1] * 2))
    return m


def ada_augment(x: torch.Tensor, p: float, policy: str, gen: torch.Generator, image_channels: int) -> torch.Tensor:
    """ADA (Karras et al. 2020): augment x [N, C(+1), H, W] with probability p per op, differentiably.

    Geometric ops are one affine resampling (bilinear, reflection padding) that moves the mask channel
    with the image; brightness/contrast touch only the image channels; cutout (DiffAugment's, here
    gated by p) zeros a square in all channels. With p = 0 the result equals x, and the same random
    numbers are drawn for every p and policy (so a resumed run augments as a straight one).
    """
    ops = set(p for p in policy.split(",") if p)
    n, _, h, w = x.shape
    dev = x.device
    mat = _affine(ops, n, p, gen, h)  # [N, 3, 3], drawn on the CPU generator
    geometric = ops & {"xflip", "rot90", "translate", "scale", "rotate", "aniso", "fractranslate"}
    if geometric and p > 0:
        grid = F.affine_grid(mat[:, :2].to(dev, x.dtype), list(x.shape), align_corners=False)  # [N, H, W, 2]
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gb, b = _gate(n, p, gen), torch.randn(n, generator=gen) * 0.2
    gc, c = _gate(n, p, gen), torch.exp2(torch.randn(n, generator=gen) * 0.5)
    gcut = _gate(n, p, gen)
    cut_gen_state = torch.rand(1, generator=gen)  # one draw seeds cutout's own stream, policy-independent
    if p > 0 and ops & {"brightness", "contrast"}:
        img, rest = x[:, :image_channels], x[:, image_channels:]
        if "brightness" in ops:
            img = img + (gb * b).to(dev, x.dtype)[:, None, None, None]
        if "contrast" in ops:
            mean = img.mean(dim=(1, 2, 3), keepdim=True)
            img = (img - mean) * (1 + gc * (c - 1)).to(dev, x.dtype)[:, None, None, None] + mean
        x = torch.cat([img, rest], dim=1)
    if p > 0 and "cutout" in ops:
        sub = torch.Generator().manual_seed(int(cut_gen_state.item() * 2**62))
        keep = gcut.to(dev, x.dtype)[:, None, None, None]
        x = x * (1 - keep) + cutout(x, sub) * keep
    return x


class AdaState:
    """ADA's controller: p follows r_t = E[sign(D(real))] toward `target`.

    Every `interval` steps, p += sign(r_t - target) * (images seen in the interval) / (kimg * 1000),
    clamped to [0, 1] (Karras et al. 2020, eq. and Appendix C). The sign sums are accumulated per step
    and reduced over ranks at the adjustment, so every rank holds the same p. The whole state is plain
    floats: it goes into the checkpoint's extra.json (JSON floats round-trip exactly).
    """

    def __init__(self, p: float, target: float, kimg: float, interval: int, adaptive: bool):
        self.p, self.target, self.kimg, self.interval, self.adaptive = float(p), target, kimg, interval, adaptive
        self.sign_sum, self.count, self.rt = 0.0, 0.0, float("nan")

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add one step's D(real) logits [B] (before the update) to the interval's sums."""
        if self.adaptive:
            self.sign_sum += float(torch.sign(real_logits.detach().float()).sum())
            self.count += float(real_logits.numel())

    def adjust(self, step: int, reduce) -> None:
        """After step `step` (0-based): at the end of each interval, move p. `reduce(tensor)` sums over ranks."""
        if not self.adaptive or (step + 1) % self.interval:
            return
        t = reduce(torch.tensor([self.sign_sum, self.count], dtype=torch.float64))
        total, count = float(t[0]), float(t[1])
        if count > 0:
            self.rt = total / count
            self.p = min(1.0, max(0.0, self.p + math.copysign(1.0, self.rt - self.target) * count
                                  / (self.kimg * 1000)))
        self.sign_sum, self.count = 0.0, 0.0

    def state_dict(self) -> dict[str, float]:
        return {"p": self.p, "sign_sum": self.sign_sum, "count": self.count, "rt": self.rt}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.p, self.sign_sum, self.count = float(state["p"]), float(state["sign_sum"]), float(state["count"])
        self.rt = float(state["rt"])
