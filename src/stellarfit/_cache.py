"""Where stellarfit keeps generated files: built engines, default grids.

``$STELLARFIT_CACHE`` if set, else ``$XDG_CACHE_HOME/stellarfit``, else
``~/.cache/stellarfit``.  Nothing in the cache is needed by the default fitting
path (which uses only shipped data); it holds things the user asked to build.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str, create: bool = True) -> Path:
    """The cache directory (or a subdirectory of it), created if needed."""
    root = os.environ.get("STELLARFIT_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "stellarfit"
    path = base.joinpath(*parts)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(
                f"cannot create the stellarfit cache directory {path}: {error}. "
                "Set STELLARFIT_CACHE to a writable directory."
            ) from None
    return path
