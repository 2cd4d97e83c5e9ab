"""VGG19 features for the optional SR perceptual loss, read from a local weights file only.

The layer layout matches torchvision's ``vgg19().features`` so its state dict loads (keys
``features.N.weight`` or ``N.weight``). Features are taken before the activation of conv5_4
as in ESRGAN. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medgan.errors import DataError

_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """``[N, C, H, W]`` in [0, 1] (C = 1 or 3) -> conv5_4 features before ReLU; frozen."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, 1, 1), nn.ReLU(inplace=False)]
                c = int(v)
        self.features = nn.Sequential(*layers[:-1])  # drop the last ReLU: features before activation
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features((x - self.mean) / self.std)

    @classmethod
    def from_file(cls, path: Path) -> "VGGFeatures":
        """Load weights from a local ``.safetensors`` or ``.pth`` (read with weights_only=True)."""
        if not path.is_file():
            raise DataError(f"perceptual_weights file {path} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = {k.removeprefix("features."): v for k, v in state.items()
                 if k.startswith("features.") or k.split(".")[0].isdigit()}
        net = cls()
        own = net.features.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise DataError(f"{path} is not a VGG19 state dict (missing {missing[:3]}...)")
        net.features.load_state_dict({k: state[k] for k in own})
        return net
