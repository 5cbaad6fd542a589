"""The ``stellarfit`` program keeps its compiled XLA programs between runs (stellarfit._cache).

Every check runs in a new process with its own settings: the cache is a process-wide JAX
setting, and this test run has one of its own (tests/conftest.py), which these processes
must not see.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

PROGRAM = Path(sys.executable).with_name("stellarfit")

PROBE = """
import json, os, jax
from stellarfit import enable_compilation_cache
directory = enable_compilation_cache()
print(json.dumps({"returned": None if directory is None else str(directory),
                  "jax_dir": jax.config.jax_compilation_cache_dir,
                  "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
                  "max_size": jax.config.jax_compilation_cache_max_size,
                  "env_dir": os.environ.get("JAX_COMPILATION_CACHE_DIR")}))
"""


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "STELLARFIT_COMPILATION_CACHE"))}
    env.update(JAX_PLATFORMS="cpu", **extra)
    return env


def _probe(**env) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], env=_clean_env(**env), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_enable_compilation_cache_settings(tmp_path):
    from stellarfit._cache import COMPILATION_CACHE_MAX_BYTES

    default = _probe(STELLARFIT_CACHE=str(tmp_path / "cache"))
    expected = str(tmp_path / "cache" / "jax")
    assert default["returned"] == default["jax_dir"] == default["env_dir"] == expected  # env: for worker processes
    assert Path(expected).is_dir()
    assert default["min_time"] == 0.0 and default["max_size"] == COMPILATION_CACHE_MAX_BYTES

    chosen = _probe(STELLARFIT_CACHE=str(tmp_path / "cache"), STELLARFIT_COMPILATION_CACHE=str(tmp_path / "mine"))
    assert chosen["jax_dir"] == str(tmp_path / "mine")

    on = _probe(STELLARFIT_CACHE=str(tmp_path / "cache"), STELLARFIT_COMPILATION_CACHE="on")
    assert on["jax_dir"] == expected  # "on" is the default place, not a directory named "on"

    jax_own = _probe(STELLARFIT_CACHE=str(tmp_path / "cache"), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-own"))
    assert jax_own["jax_dir"] == str(tmp_path / "jax-own")  # JAX's own setting wins

    off = _probe(STELLARFIT_CACHE=str(tmp_path / "cache2"), STELLARFIT_COMPILATION_CACHE="off")
    assert off["returned"] is None and off["jax_dir"] is None and off["env_dir"] is None
    assert not (tmp_path / "cache2" / "jax").exists()


def test_the_program_loads_its_compiled_programs_on_the_next_run(tmp_path):
    """The installed `stellarfit` program (the console entry point) fills the cache on its first
    run; an identical second run loads every program from it (writes none) and gives the same
    result; with the cache off nothing is written."""
    assert PROGRAM.exists(), f"the stellarfit program is not installed beside {sys.executable} (run install.sh)"
    argv = [str(PROGRAM), "crb", "--emulator", "payne-default", "--snr", "50", "--json"]
    env = _clean_env(STELLARFIT_CACHE=str(tmp_path))
    cache = tmp_path / "jax"

    first = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    entries = sorted(p.name for p in cache.iterdir())
    assert len([name for name in entries if not name.startswith(".")]) >= 4  # the CRB's compiled programs
    second = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert json.loads(second.stdout) == json.loads(first.stdout)

    off = subprocess.run(argv, env=dict(env, STELLARFIT_CACHE=str(tmp_path / "other"), STELLARFIT_COMPILATION_CACHE="off"),
                         capture_output=True, text=True, check=True)
    assert json.loads(off.stdout) == json.loads(first.stdout)
    assert not (tmp_path / "other" / "jax").exists()
