"""NUTS chains split over worker processes pinned one per CPU core (``chain_method="processes"``).

On a multi-core CPU, XLA does not run one small program faster on more cores
(:mod:`stellarfit._workers` has the measurements), but separate processes
pinned to separate cores run side by side at full speed.  So the chains of a
fit are handed, one chain at a time, to whichever of ``min(num_chains, cores)``
worker processes is free (chains differ in cost by up to ~20%: a worker that
finishes a cheap chain takes the next one, so the cores finish closer
together than with a fixed half each); each chain runs in the same jitted program as
``chain_method="sequential"`` (same chain keys and starts: the draws of a chain
do not depend on where it ran), and the parent joins them.

The workers rebuild the fit there: the emulator travels once per worker as
its checkpoint files (``Emulator.save``: JSON + npz, no pickle), the forward
model is rebuilt from the observed pixels and options that made it
(:func:`~stellarfit.inference.fit.forward_model_for`; cached in the worker, so
spectra on the same pixels reuse its compiled programs), and the problem's
data arrays travel with each task.  The pool outlives the fit
(:func:`stellarfit._workers.get_pool`): the second star pays no start-up and
no compilation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from stellarfit.inference._shipping import _emulator_files, load_emulator_files

#: worker side: pickled label specs -> one LabelSpec object (the compiled programs are keyed on its identity)
_SPECS: dict[bytes, Any] = {}


def usable(problem, num_chains: int) -> str | None:
    """None when ``problem``'s chains can run in worker processes here, else the reason they cannot."""
    from stellarfit import _workers
    from stellarfit.emulators import Emulator

    if num_chains < 2:
        return "one chain"
    if not _workers.can_pin():
        return ("worker processes cannot be pinned to cores here (that needs Linux's os.sched_setaffinity, and "
                "STELLARFIT_PIN_WORKERS=0 turns it off)")
    if len(_workers.usable_cores()) < 2:
        return "this process may use one CPU core only"
    source = getattr(problem.forward_model, "source", None)
    if source is None:
        return "the forward model was not built from an emulator (ForwardModel.from_emulator / forward_model_for)"
    if not isinstance(source[0], Emulator):
        return f"the emulator ({type(source[0]).__name__}) is not a stellarfit Emulator that can be saved and reloaded"
    return None


def n_workers(num_chains: int) -> int:
    from stellarfit import _workers

    return max(1, min(num_chains, len(_workers.usable_cores())))


def _label_spec(emulator, spec):
    if spec == emulator.label_spec:
        return emulator.label_spec
    import pickle

    return _SPECS.setdefault(pickle.dumps(spec), spec)


def _problem_in_worker(emulator_key: str, source: tuple, children: tuple, static: tuple):
    import jax
    import jax.numpy as jnp

    from stellarfit import _workers
    from stellarfit.inference._model_cache import forward_model_for
    from stellarfit.inference.likelihood import FitProblem, _Identity

    emulator = _workers.shared(emulator_key)
    wavelength, resolution, options = source
    model = forward_model_for(emulator, wavelength, resolution, **options).shared
    spec, *rest = static
    children = tuple(jax.tree.map(jnp.asarray, c) for c in children)
    return FitProblem.tree_unflatten((model, _Identity(_label_spec(emulator, spec)), *rest), children)


def run_chains_in_worker(chains: Callable, emulator_key: str, source: tuple, children: tuple, static: tuple,
                         arrays: tuple, options: Any):
    """Worker side: ``chains(problem, keys, w_init, center, factor, inverse_mass, options)`` (the sampler's
    chains one after another) for the chains of ``arrays``, as numpy outputs."""
    import jax

    problem = _problem_in_worker(emulator_key, source, children, static)
    keys, *rest = (jax.numpy.asarray(a) for a in arrays)
    outputs = chains(problem, keys, *rest, options)
    return jax.tree.map(np.asarray, jax.device_get(outputs))


def run_chains(chains: Callable, problem, keys, w_init, center, factor, inverse_mass, options):
    """Parent side: the chains dealt out to pinned worker processes, outputs joined along the chain axis.

    ``chains``: the sampler's worker-side function (module level, so that it travels by name), called
    there as ``chains(problem, keys, w_init, center, factor, inverse_mass, options)``; ``options``: the
    sampler's static settings (``_NumpyroOptions`` or the BlackJAX keyword dict).
    """
    import jax

    from stellarfit import _workers

    emulator, wavelength, resolution, model_options = problem.forward_model.source
    key, files = _emulator_files(emulator)
    children, static = problem.tree_flatten()
    children = tuple(jax.tree.map(np.asarray, c) for c in children)  # the per-pixel LSF part is a (lower, weight) pair
    static = (static[1].value, *static[2:])  # the forward model is rebuilt in the worker; the label spec travels
    keys, w_init = np.asarray(jax.random.key_data(keys) if _typed_key(keys) else keys), np.asarray(w_init)
    center, factor, inverse_mass = (np.asarray(a) for a in (center, factor, inverse_mass))
    num_chains = w_init.shape[0]
    workers = n_workers(num_chains)
    # one chain per task: the pool gives each task to the next free worker (greedy scheduling)
    shares = [np.array([chain]) for chain in range(num_chains)]
    pool = _workers.get_pool(workers)
    calls = [(chains, key, (wavelength, resolution, model_options), children, static,
              (keys[part], w_init[part], center, factor, inverse_mass), options) for part in shares]
    outputs = pool.map(run_chains_in_worker, calls, shared={key: (load_emulator_files, (files,))})
    return jax.tree.map(lambda *parts: np.concatenate(parts, axis=0), *outputs)


def _typed_key(keys) -> bool:
    import jax

    return jax.dtypes.issubdtype(getattr(keys, "dtype", np.float32), jax.dtypes.prng_key)
