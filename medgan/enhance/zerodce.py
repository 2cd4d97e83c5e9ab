"""Zero-reference deep curve estimation (Guo et al., CVPR 2020), written from the paper.

DCE-Net predicts, per pixel and channel, 8 parameters ``a_n`` of the light-enhancement curve
``LE(x) = x + a * x * (1 - x)`` applied 8 times. It is trained with four losses that need no
reference image: spatial consistency, exposure control, colour constancy and illumination
smoothness (``zerodce_losses``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medgan.config import TrainConfig

ITERATIONS = 8
EXPORT_NAME = "dce"


class DCENet(nn.Module):
    """7 conv layers of 32 channels with symmetric skip concatenations; tanh curve maps.

    ``[N, C, H, W]`` in [0, 1] -> (enhanced ``[N, C, H, W]``, curve maps ``[N, 8*C, H, W]``).
    """

    def __init__(self, channels: int = 3, width: int = 32, context: int = 0):
        super().__init__()
        self.channels = channels
        self.context = context  # long side the curves are estimated at (0: full resolution)
        self.c1 = nn.Conv2d(channels, width, 3, 1, 1)
        self.c2 = nn.Conv2d(width, width, 3, 1, 1)
        self.c3 = nn.Conv2d(width, width, 3, 1, 1)
        self.c4 = nn.Conv2d(width, width, 3, 1, 1)
        self.c5 = nn.Conv2d(2 * width, width, 3, 1, 1)  # sees [x3, x4]
        self.c6 = nn.Conv2d(2 * width, width, 3, 1, 1)  # sees [x2, x5]
        self.c7 = nn.Conv2d(2 * width, ITERATIONS * channels, 3, 1, 1)  # sees [x1, x6]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        if self.context and max(h, w) > self.context:
            # Zero-DCE++: curves from an area-downscaled copy (the net's 15 px view then spans the
            # image, so it can judge the exposure), bilinearly upsampled and applied at full resolution.
            s = self.context / max(h, w)
            small = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="area")
            curves = F.interpolate(self.curves(small), size=(h, w), mode="bilinear", align_corners=False)
        else:
            curves = self.curves(x)
        return apply_curves(x, curves, self.channels), curves

    def curves(self, x: torch.Tensor) -> torch.Tensor:
        """The 8 curve maps ``[N, 8C, H, W]`` in (-1, 1) the net predicts for ``x`` ``[N, C, H, W]``."""
        x1 = F.relu(self.c1(x))
        x2 = F.relu(self.c2(x1))
        x3 = F.relu(self.c3(x2))
        x4 = F.relu(self.c4(x3))
        x5 = F.relu(self.c5(torch.cat([x3, x4], 1)))
        x6 = F.relu(self.c6(torch.cat([x2, x5], 1)))
        return torch.tanh(self.c7(torch.cat([x1, x6], 1)))  # [N, 8C, H, W] in (-1, 1)


def apply_curves(x: torch.Tensor, curves: torch.Tensor, channels: int) -> torch.Tensor:
    """Iterate ``LE(x) = x + a x (1 - x)`` with the 8 maps in ``curves`` ``[N, 8C, H, W]``.

    With ``a`` in [-1, 1] every step maps [0, 1] into [0, 1] and is monotonic, so the
    enhanced image stays in range and keeps the order of intensities.
    """
    for a in torch.split(curves, channels, dim=1):
        x = x + a * x * (1 - x)
    return x


def spatial_consistency_loss(enhanced: torch.Tensor, inp: torch.Tensor, region: int = 4) -> torch.Tensor:
    """Keep the difference between each 4x4 region and its 4 neighbours as in the input."""
    e = F.avg_pool2d(enhanced.mean(1, keepdim=True), region)  # [N, 1, H/4, W/4]
    i = F.avg_pool2d(inp.mean(1, keepdim=True), region)
    loss = enhanced.new_zeros(())
    for dy, dx in ((0, 1), (1, 0)):  # right and down; left/up are the same pairs mirrored
        de = e[..., dy:, dx:] - e[..., : e.shape[-2] - dy, : e.shape[-1] - dx]
        di = i[..., dy:, dx:] - i[..., : i.shape[-2] - dy, : i.shape[-1] - dx]
        loss = loss + 2 * ((de.abs() - di.abs()) ** 2).mean()  # x2: each pair counts from both sides
    return loss


def exposure_loss(enhanced: torch.Tensor, level: float = 0.6, patch: int = 16) -> torch.Tensor:
    """Mean distance of the 16x16 patch brightness from the well-exposed level E = 0.6."""
    return (F.avg_pool2d(enhanced.mean(1, keepdim=True), patch) - level).abs().mean()


def color_constancy_loss(enhanced: torch.Tensor) -> torch.Tensor:
    """Grey-world: squared differences between the channel means (0 for grey images)."""
    if enhanced.shape[1] == 1:
        return enhanced.new_zeros(())
    m = enhanced.mean((2, 3))  # [N, C]
    pairs = [(0, 1), (0, 2), (1, 2)]
    return sum(((m[:, p] - m[:, q]) ** 2) for p, q in pairs).mean()


def illumination_smoothness_loss(curves: torch.Tensor) -> torch.Tensor:
    """Total variation of the curve maps: ``mean((|grad_x A| + |grad_y A|)^2)``."""
    gx = (curves[..., :, 1:] - curves[..., :, :-1]).abs()[..., :-1, :]  # [N, 8C, H-1, W-1]
    gy = (curves[..., 1:, :] - curves[..., :-1, :]).abs()[..., :, :-1]
    return ((gx + gy) ** 2).mean()


# The paper's weights (W_col = 0.5, W_tvA = 20; spatial and exposure 1).
LOSS_WEIGHTS = {"spa": 1.0, "exp": 1.0, "col": 0.5, "tv": 20.0}


def zerodce_losses(inp: torch.Tensor, enhanced: torch.Tensor, curves: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four non-reference losses and their weighted total (key ``loss``)."""
    parts = {
        "spa": spatial_consistency_loss(enhanced, inp),
        "exp": exposure_loss(enhanced),
        "col": color_constancy_loss(enhanced),
        "tv": illumination_smoothness_loss(curves),
    }
    parts["loss"] = sum(LOSS_WEIGHTS[k] * v for k, v in parts.items())
    return parts


def build_dce(cfg: TrainConfig) -> DCENet:
    """DCE-Net for a TrainConfig's channel count (the paper's width of 32) and curve context."""
    return DCENet(cfg.channels, context=cfg.dce_context)


@torch.no_grad()
def enhance_with(net: DCENet, img: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Enhance a numpy image ``[H, W(, 3)]`` in [0, 1] with a trained DCE-Net."""
    from medgan.enhance.knobs import check

    strength = check("strength", strength)
    if not np.isfinite(img).all():
        raise ValueError("image contains NaN or infinite values")
    dev = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(np.clip(img, 0, 1), dtype=np.float32))
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]  # [1, C, H, W]
    if x.shape[1] != net.channels:
        if net.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"model expects {net.channels} channels, image has {x.shape[1]}")
    y, _ = net(x.to(dev))
    y = strength * y + (1 - strength) * x.to(dev)
    out = y[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return out[..., 0] if img.ndim == 2 and out.shape[-1] == 1 else (out.mean(-1) if img.ndim == 2 else out)


def load_zerodce(ckpt_dir: Path, device: str | torch.device = "cpu") -> tuple[DCENet, TrainConfig]:
    """The DCE-Net of a trained zerodce run's checkpoint directory (eval mode) and its config."""
    from medgan.checkpoint import load_generator
    from medgan.errors import CheckpointError

    net, cfg = load_generator(Path(ckpt_dir), name=EXPORT_NAME, builder=build_dce, device=device)
    if cfg.model != "zerodce":
        raise CheckpointError(f"checkpoint {ckpt_dir} holds a {cfg.model!r} model, not zerodce")
    return net, cfg
