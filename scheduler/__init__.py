"""The job system: settings, models, state machine, submission, store, sweeper, Python client (DESIGN.md)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """Module `name`, executed on its first attribute access (importlib's LazyLoader).

    The client and the CLI name their heavy modules this way so that importing them stays cheap:
    SQLAlchemy, Celery and the store's client load when a call needs them, not for `--help`.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
