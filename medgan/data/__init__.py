"""The one reader of medgan: every job kind reads files through this package.

    from medgan.data import ReadPolicy, read_image, load_dataset

    img = read_image("scan.dcm", ReadPolicy(frames="middle"))   # Image: pixels [N, H, W(, 3)] in [0, 1]
    ds = load_dataset("scans/", image_size=64, channels=1)       # ImageDataset + ds.report (skips by reason)

Names load on first use: `medgan.data.policy` (imported by medgan.config) costs only pydantic;
`read_image`, `list_inputs` and `scan_tree` import no torch (the worker and the CLI use them);
`load_dataset` and the datasets import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ReadPolicy": "policy", "Image": "readers", "read_image": "readers", "read_header": "readers",
    "REASONS": "report", "ReadError": "report", "ReadReport": "report", "scan_tree": "tree",
    "Inputs": "inputs", "list_inputs": "inputs", "ImageDataset": "dataset", "load_dataset": "dataset",
    "phantom_dataset": "dataset", "training_dataset": "dataset",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"medgan.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'medgan.data' has no attribute {name!r}")
