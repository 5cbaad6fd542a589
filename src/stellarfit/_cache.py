"""Where stellarfit keeps generated files: built engines, default grids, compiled programs.

``$STELLARFIT_CACHE`` if set, else ``$XDG_CACHE_HOME/stellarfit``, else
``~/.cache/stellarfit``.  Nothing in the cache is needed by the default fitting
path (which uses only shipped data); it holds things the user asked to build,
and (``jax/``) the XLA programs the ``stellarfit`` command compiled, so that its
next run loads them instead of compiling again.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "enable_compilation_cache"]

#: the compilation cache's size limit (least recently used programs are deleted beyond it)
COMPILATION_CACHE_MAX_BYTES = 2 * 2**30
_OFF = ("0", "off", "no", "false")
_ON = ("1", "on", "yes", "true")


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


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Keep XLA's compiled programs on disk between processes (JAX's persistent compilation cache).

    A fit compiles its programs (MAP, NUTS, the emulator's gradient) on first use in each
    process: ~10 s of the README's first command's ~19 s.  With the cache a later process
    loads them instead (the same command then takes ~9 s; a batch of TransformerPayne fits on
    a GPU, >220 s cold, ~100 s warm).  The ``stellarfit`` command calls this on start; call it
    yourself in scripts.  Results are the same with or without it.

    Where: ``path``, else ``$STELLARFIT_COMPILATION_CACHE`` (a directory; ``0``/``off``
    disables the cache, ``1``/``on`` is the default place), else ``cache_dir("jax")``.  A
    ``$JAX_COMPILATION_CACHE_DIR`` already set wins (JAX's own setting).  Every program is kept (no minimum compile time), up to
    ``COMPILATION_CACHE_MAX_BYTES`` (2 GiB; least recently used deleted first, under a file lock
    so that worker processes can share it).  The settings also go to the environment, so worker
    processes started later use the same cache.  Returns the directory, or None when disabled.
    """
    setting = os.environ.get("STELLARFIT_COMPILATION_CACHE", "").strip()
    if setting.lower() in _ON:
        setting = ""  # on, in the default place
    if path is None and setting.lower() in _OFF:
        return None
    if path is None and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        directory = Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    else:
        directory = Path(path or setting).expanduser() if (path or setting) else cache_dir("jax")
        directory.mkdir(parents=True, exist_ok=True)
    # in the environment too, for worker processes started later; the user's own values of the others win
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(COMPILATION_CACHE_MAX_BYTES))
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))
    jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))
    return directory
