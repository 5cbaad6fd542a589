"""Batch backends: where :func:`~stellarfit.inference.batch.fit_batch_files` fits, the local process
aside: worker processes pinned one per core, or a Ray cluster (the emulator shipped to the workers
as its checkpoint files)."""

from __future__ import annotations

import collections
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


from stellarfit.inference._batch_rows import _fit_items, _Item, _message, _Recorder
from stellarfit.inference._shipping import _checkpoint_digest


#: where fit_batch_files fits
BACKENDS = ("auto", "local", "processes", "ray")


def _auto_backend(n_files: int, emulator, fit_function, vectorize, workers, ray_address) -> str:
    """backend="auto": "processes" for the built-in fit of several files on a multi-core Linux machine, else "local"."""
    from stellarfit import _workers
    from stellarfit.emulators import Emulator

    if ray_address is not None:
        return "ray"
    if workers is not None:  # asked for workers: processes where they can run, else the explicit error of "processes"
        return "processes"
    if (n_files >= 2 and fit_function is None and vectorize is None and isinstance(emulator, Emulator)
            and _workers.can_pin() and len(_workers.usable_cores()) >= 2):
        return "processes"
    return "local"


def _check_for_processes(emulator, fit_function) -> None:
    """Clear errors, before anything is read, for what cannot go to worker processes."""
    import pickle

    from stellarfit.emulators import Emulator

    if fit_function is not None:
        try:
            pickle.dumps(fit_function)
        except Exception as error:
            raise TypeError(f"fit_function {fit_function!r} cannot be sent to worker processes ({_message(error)}); "
                            "use a function defined at module level in an importable module, or backend='local'") from None
    if not isinstance(emulator, Emulator):
        try:
            pickle.dumps(emulator)
        except Exception as error:
            raise TypeError(f"the emulator ({type(emulator).__name__}) cannot be sent to worker processes "
                            f"({_message(error)}); pass a stellarfit Emulator or its name/path, or use backend='local'") from None


def _check_count(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# -- the Ray backend ---------------------------------------------------------------------
#: spectra per Ray task unless ``chunk_size`` says otherwise
DEFAULT_CHUNK_SIZE = 8
#: emulators each Ray worker process keeps loaded (most recently used)
_WORKER_CACHE_SIZE = 2
#: in the Ray worker processes: emulator key -> loaded emulator (its compiled forward models stay cached with it)
_WORKER_EMULATORS: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
_REMOTE_FIT_CHUNK = None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("backend='ray' needs Ray, which is not installed: pip install 'stellarfit[ray]' "
                          "(or pip install 'ray>=2.9'), or use backend='local'") from None
    return ray


def _emulator_payload(emulator) -> tuple[str, str, Any]:
    """(kind, key, payload) to send an emulator to Ray workers.

    A stellarfit :class:`~stellarfit.emulators.Emulator` travels as its
    checkpoint files (``Emulator.save``: JSON + npz arrays, no pickle), keyed
    by their SHA-1 so that workers load each emulator once.  Any other object
    (a stand-in for a custom ``fit_function``) travels as Ray serializes it.
    """
    from stellarfit.emulators import Emulator

    if isinstance(emulator, Emulator):
        with tempfile.TemporaryDirectory(prefix="stellarfit-emulator-") as directory:
            emulator.save(directory, overwrite=True)
            files = {path.name: path.read_bytes() for path in sorted(Path(directory).iterdir()) if path.is_file()}
        return "files", "files-" + _checkpoint_digest(files), files
    return "object", f"object-{id(emulator)}-{uuid.uuid4().hex}", emulator


def _worker_emulator(spec: Mapping[str, Any]):
    """The emulator of ``spec`` in this Ray worker process: loaded on first use, then kept (with its compiled functions)."""
    key = spec["key"]
    cached = _WORKER_EMULATORS.get(key)
    if cached is not None:
        _WORKER_EMULATORS.move_to_end(key)
        return cached
    import ray

    payload = ray.get(spec["ref"])
    if spec["kind"] == "files":
        from stellarfit.emulators import load_emulator

        with tempfile.TemporaryDirectory(prefix="stellarfit-emulator-") as directory:
            for name, data in payload.items():
                Path(directory, name).write_bytes(data)
            emulator = load_emulator(directory)  # reads every array into memory: the files can go
    else:
        emulator = payload
    _WORKER_EMULATORS[key] = emulator
    while len(_WORKER_EMULATORS) > _WORKER_CACHE_SIZE:
        _WORKER_EMULATORS.popitem(last=False)
    return emulator


class _WorkerSetupError(RuntimeError):
    """A Ray worker could not get ready to fit (emulator loading)."""


def _one_core_options(method: str, fit_options: Mapping[str, Any]) -> Mapping[str, Any]:
    """In a worker that owns one core: NUTS chains one after another unless the options say otherwise
    (a ``chain_method`` keyword, or ``nuts_settings`` whose chain_method is not "auto")."""
    if method not in ("nuts", "blackjax") or "chain_method" in fit_options:
        return fit_options
    settings = fit_options.get("nuts_settings")
    if settings is None:
        return {**fit_options, "chain_method": "sequential"}
    if settings.chain_method == "auto":
        import dataclasses

        return {**fit_options, "nuts_settings": dataclasses.replace(settings, chain_method="sequential")}
    return fit_options


def _fit_chunk(emulator_spec: Mapping[str, Any], fit_function, method: str, fit_options: Mapping[str, Any],
               emulator_name: str, items: Sequence[_Item], vectorize: int | None = None) -> list[dict[str, Any]]:
    """Runs in a Ray worker: the catalog rows of a chunk of spectra."""
    if emulator_spec.get("pin"):
        from stellarfit._workers import pin_to_free_core

        pin_to_free_core()  # before JAX runs here: one core per worker process, as the processes backend does
    try:
        emulator = _worker_emulator(emulator_spec)
    except Exception as error:
        raise _WorkerSetupError(f"the Ray worker could not load the emulator: {_message(error)}") from error
    if fit_function is None:
        from stellarfit.inference.fit import fit_star as fit_function
    return _fit_items(fit_function, emulator, items, method, _one_core_options(method, fit_options), emulator_name,
                      vectorize)


def _feed_chunks(items: Iterable[_Item], chunk_size: int, submit: Callable[[list[_Item]], None],
                 collect: Callable[[bool], None], in_flight: Mapping[Any, list[_Item]]) -> None:
    """Hand ``items`` out in chunks of ``chunk_size`` (``submit``, which waits for a free worker), journaling
    finished chunks as they come (``collect(block)``), until every chunk ``in_flight`` is done."""
    chunk: list[_Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= chunk_size:
            submit(chunk)
            chunk = []
        collect(block=False)
    if chunk:
        submit(chunk)
    while in_flight:
        collect(block=True)


# -- the processes backend ---------------------------------------------------------------
def _identity(value):
    return value


def _fit_chunk_in_process(emulator_key: str, fit_function, method: str, fit_options: Mapping[str, Any],
                          emulator_name: str, items: Sequence[_Item], vectorize: int | None) -> list[dict[str, Any]]:
    """Runs in a pinned worker process: the catalog rows of a chunk of spectra."""
    from stellarfit import _workers

    try:
        emulator = _workers.shared(emulator_key)
    except Exception as error:
        raise _WorkerSetupError(f"the worker process could not load the emulator: {_message(error)}") from error
    if fit_function is None:
        from stellarfit.inference.fit import fit_star as fit_function
    return _fit_items(fit_function, emulator, items, method, _one_core_options(method, fit_options), emulator_name,
                      vectorize)


def _run_on_processes(items: Iterable[_Item], recorder: _Recorder, *, emulator, fit_function, method: str,
                      fit_options: Mapping[str, Any], emulator_name: str, workers: int | None, chunk_size: int,
                      vectorize: int | None) -> int:
    """Fit ``items`` on pinned worker processes, journaling rows as chunks complete; returns the number of workers.

    The workers start (and the emulator is sent) when the first chunk is ready: a rerun
    with nothing left to fit starts none.  One chunk per worker in flight.
    """
    from stellarfit import _workers
    from stellarfit.emulators import Emulator
    from stellarfit.inference.fit import FLAGS
    from stellarfit.results import failed_row

    n_workers = workers or max(1, len(_workers.usable_cores()))
    session: dict[str, Any] = {}
    in_flight: dict[int, list[_Item]] = {}

    def start() -> None:
        if isinstance(emulator, Emulator):
            from stellarfit.inference._shipping import _emulator_files, load_emulator_files

            key, files = _emulator_files(emulator)
            shared = {key: (load_emulator_files, (files,))}
        else:
            key = f"object-{id(emulator)}-{uuid.uuid4().hex}"
            shared = {key: (_identity, (emulator,))}
        session.update(pool=_workers.get_pool(n_workers), key=key, shared=shared)

    def submit(chunk: list[_Item]) -> None:
        if not session:
            start()
        pool = session["pool"]
        while pool.busy >= pool.n_workers:
            collect(block=True)
        task = pool.submit(_fit_chunk_in_process, session["key"], fit_function, method, fit_options, emulator_name, chunk,
                           vectorize, shared=session["shared"])
        in_flight[task] = chunk

    def collect(block: bool) -> None:
        if not session:
            return
        for task, (ok, value) in sorted(session["pool"].collect(block=block).items()):
            chunk = in_flight.pop(task, None)
            if chunk is None:  # a task of an earlier, interrupted use of the shared pool
                continue
            if ok:
                rows = value
            elif isinstance(value, _workers.WorkerDied):  # record, go on (the pool replaces the worker)
                rows = [failed_row(source=item.source, index=item.index, object_id=item.object_id, format=item.format,
                                   error=f"{_message(value)} (rerun with retry_failed to refit)", method=method,
                                   emulator=emulator_name, flags=FLAGS["fit_failed"]) for item in chunk]
            else:  # raised by our code outside the per-spectrum fits (each fit records its own failure)
                raise RuntimeError(f"the worker processes could not fit: {_message(value)}") from value
            for row in rows:
                recorder.record(row)

    try:
        _feed_chunks(items, chunk_size, submit, collect, in_flight)
    finally:
        if in_flight:  # interrupted: the chunks in flight are lost (not journaled); stop their workers
            session["pool"].close()
    return n_workers


def _remote_fit_chunk(ray):
    global _REMOTE_FIT_CHUNK
    if _REMOTE_FIT_CHUNK is None:
        # one CPU per task; a worker that dies (killed, out of memory) is replaced and its chunk retried twice
        _REMOTE_FIT_CHUNK = ray.remote(num_cpus=1, max_retries=2)(_fit_chunk)
    return _REMOTE_FIT_CHUNK


def _check_picklable(ray, value, what: str, hint: str) -> None:
    try:
        ray.cloudpickle.dumps(value)
    except Exception as error:
        raise TypeError(f"{what} cannot be sent to Ray workers ({_message(error)}); {hint}") from None


def _put(ray, value, what: str, hint: str):
    try:
        return ray.put(value)
    except Exception as error:
        raise TypeError(f"{what} cannot be sent to Ray workers ({_message(error)}); {hint}") from None


def _init_ray(ray, address: str | None, workers: int | None, **options) -> None:
    """``ray.init``: connect to ``address``, or start a local cluster with ``workers`` CPUs (default: all)."""
    with warnings.catch_warnings():
        # Ray starts its processes with subprocess (fork + exec at once); JAX warns on every fork of a
        # process where it is initialized, which does not apply to a fork followed by exec.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        if address is not None:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, **options)


def _run_on_ray(items: Iterable[_Item], recorder: _Recorder, *, emulator, fit_function, method: str,
                fit_options: Mapping[str, Any], emulator_name: str, workers: int | None, chunk_size: int,
                ray_address: str | None, vectorize: int | None = None) -> int:
    """Fit ``items`` in chunks on Ray, journaling rows as chunks complete; returns the number of Ray workers.

    The cluster is started (or connected to), and the emulator sent, only when
    the first chunk is ready: a rerun with nothing left to fit needs no Ray.
    """
    ray = _import_ray()
    from stellarfit.inference.fit import FLAGS
    from stellarfit.results import failed_row

    if ray.is_initialized() and ray_address is not None:
        raise ValueError("this process is already connected to a Ray cluster (ray.init was called); "
                         "leave ray_address out to use it, or call ray.shutdown() first")
    started = False
    session: dict[str, Any] = {}  # filled by start(): workers, max_in_flight, emulator_spec, fit_reference, remote
    in_flight: dict[Any, list[_Item]] = {}

    def start() -> None:
        nonlocal started
        if not ray.is_initialized():
            try:
                _init_ray(ray, ray_address, workers)
            except ConnectionError as error:
                raise ConnectionError(f"cannot connect to the Ray cluster at {ray_address!r}: {error}; start it with "
                                      "`ray start --head` or check the address") from None
            started = True
        n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        kind, key, payload = _emulator_payload(emulator)
        session.update(
            workers=n_workers, max_in_flight=2 * n_workers, remote=_remote_fit_chunk(ray),
            emulator_spec={"kind": kind, "key": key, "pin": True,
                           "ref": _put(ray, payload, "the emulator", "pass a stellarfit Emulator or its name/path")},
            fit_reference=None if fit_function is None else _put(
                ray, fit_function, f"fit_function {fit_function!r}", "use a module-level function or a picklable callable object"),
        )

    def submit(chunk: list[_Item]) -> None:
        if not session:
            start()
        while len(in_flight) >= session["max_in_flight"]:
            collect(block=True)
        reference = session["remote"].remote(session["emulator_spec"], session["fit_reference"], method, fit_options,
                                             emulator_name, chunk, vectorize)
        in_flight[reference] = chunk

    def collect(block: bool) -> None:
        if not in_flight:
            return
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=None if block else 0)
        if ready:  # and whatever else is finished by now
            ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
        for reference in ready:
            chunk = in_flight.pop(reference)
            try:
                rows = ray.get(reference)
            except ray.exceptions.RayTaskError as error:  # raised by our code outside the per-spectrum fits
                cause = getattr(error, "cause", None) or error
                raise RuntimeError(f"the Ray workers could not fit: {_message(cause)}") from None
            except ray.exceptions.RayError as error:  # the worker died even after retries: record, go on
                rows = [failed_row(source=item.source, index=item.index, object_id=item.object_id, format=item.format,
                                   error=f"Ray worker failed: {_message(error)} (rerun with retry_failed to refit)",
                                   method=method, emulator=emulator_name, flags=FLAGS["fit_failed"]) for item in chunk]
            for row in rows:
                recorder.record(row)

    try:
        _feed_chunks(items, chunk_size, submit, collect, in_flight)
    finally:
        # interrupted: the chunks in flight are lost (not journaled). Their workers are killed, not sent a
        # KeyboardInterrupt (ray.cancel without force): one that lands mid-import (a worker's first chunk imports
        # JAX and Flax for seconds) leaves half-initialized modules behind, and the worker could never load an
        # emulator again. Ray starts fresh workers for the next run.
        for reference in in_flight:
            try:
                ray.cancel(reference, force=True)
            except Exception:  # noqa: BLE001 - best effort; the worker may be gone already
                pass
        if started:
            ray.shutdown()
    if session:
        return session["workers"]
    if workers is not None:
        return workers
    return max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 0
