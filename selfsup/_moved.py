"""Old import paths kept for one release: a shim module's ``__getattr__`` that finds each name in
its new home and says so with a DeprecationWarning (lazily, so shims add no import circles)."""
from __future__ import annotations

import importlib
import warnings


def moved(old: str, *new: str, renamed: dict[str, str] | None = None):
    """A module ``__getattr__`` for the shim ``old`` whose names now live in the modules ``new``
    (looked up in order); ``renamed`` maps an old name to its new one."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        target = (renamed or {}).get(name, name)
        for module in new:
            mod = importlib.import_module(module)
            if hasattr(mod, target):
                warnings.warn(f"{old}.{name} has moved to {module}.{target}; the old path goes in the next release",
                              DeprecationWarning, stacklevel=2)
                return getattr(mod, target)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
