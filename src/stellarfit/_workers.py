"""Worker processes pinned one per CPU core: CPU parallelism that XLA's own threads do not give.

Why processes, and why pinned.  On a CPU, XLA runs a jitted program on the
calling thread plus an intra-op thread pool.  For the small programs of a fit
(a gradient of ~1-2 ms) that pool buys nothing: on the 2-core development
machine a gradient loop took 1.52 / 1.80 ms (min / median) in a process
pinned to one core and 1.63 / 2.05 ms unpinned.  Running two fits at once in
*one* process (two Python threads) is 3x slower in total than one after the
other, and two *unpinned* processes collapse to 5-15 ms per gradient (their
thread pools oversubscribe the cores).  Two processes each pinned to its own
core run at 1.54 / 1.86 and 1.76 / 2.11 ms: twice the throughput.  So a
:class:`WorkerPool` starts one Python process per core, each pinned to its
core (``os.sched_setaffinity``) before anything creates a thread; workers claim
cores through lock files (:func:`pin_to_free_core`), so two runs on one machine
spread over its cores instead of sharing the first ones.

The workers are ``python -m stellarfit._workers`` subprocesses, not
``multiprocessing`` children: they do not re-import the caller's ``__main__``
(a script without an ``if __name__ == "__main__":`` guard works) and they
never fork a process in which JAX runs.  They connect back over a local
socket (``multiprocessing.connection`` messages); tasks are
module-level functions and their arguments (arrays, dicts, dataclasses),
which travel pickled between these processes of one run only (over a socket
in a private temporary directory) -- nothing is read from or written to files.  Each worker keeps a small store of shared
objects (an emulator, loaded once per worker and kept with its compiled
programs, see :meth:`WorkerPool.submit`'s ``shared``).

A pool lives until :func:`shutdown_pools` (registered at exit) or
:meth:`WorkerPool.close`; :func:`get_pool` reuses a process-wide pool so that
the workers' compiled programs serve every later fit.  A worker that dies
(killed, out of memory, a crash in native code) fails its task with
:class:`WorkerDied` and is replaced on the next submit.

This module does not import JAX.
"""

from __future__ import annotations

import atexit
import collections
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
import socket
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["WorkerDied", "WorkerPool", "can_pin", "get_pool", "pin_to_free_core", "shared", "shutdown_pools",
           "usable_cores"]

#: seconds a new worker may take to import Python and connect back
_START_TIMEOUT = 120.0
#: shared objects each worker keeps (least recently used dropped first)
_STORE_SIZE = 4


class WorkerDied(RuntimeError):
    """A worker process exited (was killed, ran out of memory, crashed) while running a task."""


def usable_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def can_pin() -> bool:
    """Whether worker processes can be pinned to cores here (Linux: ``os.sched_setaffinity``) and
    are to be (``STELLARFIT_PIN_WORKERS=0`` in the environment turns pinning off)."""
    if os.environ.get("STELLARFIT_PIN_WORKERS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


#: this process's claim on a core (pin_to_free_core): the open lock file, False if none was free, None if not tried
_CORE_CLAIM: Any = None


def pin_to_free_core(fallback: int | None = None) -> int | None:
    """Pin this process to a core no other stellarfit worker on this machine holds; the core, or None.

    Each worker (of a :class:`WorkerPool`, or started by another scheduler such
    as Ray) claims the first of its usable cores whose lock file (in the
    temporary directory) it can lock exclusively, keeps the lock for its
    lifetime (the OS drops it when the process ends) and pins itself there, so
    that two runs on one machine share its cores instead of piling onto the
    same ones.  Call it before JAX runs anything in the process, so that XLA's
    threads inherit the affinity.  With every core taken (more workers than
    cores) it pins to ``fallback`` if given, else leaves the process as it is.
    Idempotent.
    """
    global _CORE_CLAIM
    if _CORE_CLAIM is not None:
        return _CORE_CLAIM[1] if _CORE_CLAIM else None
    _CORE_CLAIM = False
    if not can_pin():
        return None
    import fcntl

    directory = os.path.join(tempfile.gettempdir(), f"stellarfit-cores-{os.getuid()}")
    os.makedirs(directory, exist_ok=True)
    for core in usable_cores():
        handle = open(os.path.join(directory, f"core-{core}.lock"), "w")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        os.sched_setaffinity(0, {core})
        _CORE_CLAIM = (handle, core)
        return core
    if fallback is not None:
        os.sched_setaffinity(0, {fallback})
        _CORE_CLAIM = (None, fallback)
        return fallback
    return None


# -- in the worker ---------------------------------------------------------------------
_STORE: "collections.OrderedDict[str, Any]" = collections.OrderedDict()


def shared(key: str) -> Any:
    """In a worker: the shared object stored under ``key`` (see :meth:`WorkerPool.submit`)."""
    try:
        value = _STORE[key]
    except KeyError:
        raise KeyError(f"no shared object {key!r} in this worker (it is sent with the first task that needs it)") from None
    _STORE.move_to_end(key)
    return value


def _exception_payload(error: BaseException) -> BaseException:
    """``error`` if it survives pickling, else a RuntimeError with its type, message and traceback."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any unpicklable exception is described instead
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return RuntimeError(f"{type(error).__name__}: {error}\n(in a stellarfit worker process)\n{text}")


# -- in the parent ---------------------------------------------------------------------
class _Worker:
    def __init__(self, process: subprocess.Popen, connection: Connection, core: int | None):
        self.process = process
        self.connection = connection
        self.core = core
        #: shared objects this worker holds, least recently used first (mirrors the worker's store)
        self.keys: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self.sent: tuple[str, ...] = ()  # shared objects the running task carries
        self.task: int | None = None


class WorkerPool:
    """``n_workers`` Python processes, each pinned to its own CPU core (when ``pin`` and the OS allows).

    Use :meth:`submit` to start a task on an idle worker and :meth:`collect` to
    get finished ones, or :meth:`map` for a list of calls.  One task per worker
    at a time.  Workers start in parallel in :meth:`__init__` (each imports
    Python and stellarfit, ~2-5 s); JAX and the fit's programs are set up by
    the first task that needs them and then stay in the worker.
    """

    def __init__(self, n_workers: int, *, pin: bool = True):
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
        self.pin = bool(pin) and can_pin()
        self._cores = usable_cores()
        self._directory = tempfile.mkdtemp(prefix="stellarfit-workers-")  # mode 0700: this user only
        self._address = os.path.join(self._directory, "socket")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self._address)
        self._listener.listen(64)
        self._listener.settimeout(0.5)
        self._workers: list[_Worker | None] = [None] * n_workers
        self._next_task = 0
        self._results: dict[int, tuple[bool, Any]] = {}
        self._closed = False
        try:
            self._start(range(n_workers))
        except BaseException:
            self.close()
            raise

    @property
    def n_workers(self) -> int:
        return len(self._workers)

    @property
    def cores(self) -> list[int | None]:
        """The core each worker is pinned to (None: not pinned): a core no other stellarfit worker on
        this machine held when it started, else (all taken) its slot's core."""
        return [None if w is None else w.core for w in self._workers]

    def _start(self, slots) -> None:
        env = dict(os.environ)
        # the worker imports what this process imports (an editable install, PYTHONPATH, a source tree)
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + env.get("PYTHONPATH", "").split(os.pathsep)).keys()).strip(os.pathsep)
        started = []
        for slot in slots:
            core = self._cores[slot % len(self._cores)] if self.pin else None
            command = [sys.executable, "-m", "stellarfit._workers", self._address, "-1" if core is None else str(core)]
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno()
                                       if _has_fileno(sys.stderr) else None)
            started.append((slot, process, core))
        pending = {process.pid: (slot, process, core) for slot, process, core in started}
        try:
            self._connect(pending)
        except BaseException:
            for _, process, _ in pending.values():  # the ones that did not connect: none may linger
                process.kill()
                process.wait()
            raise

    def _connect(self, pending: dict) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while pending:
            for pid, (slot, process, core) in list(pending.items()):
                if process.poll() is not None:
                    raise RuntimeError(f"a stellarfit worker process exited at start (code {process.returncode}); "
                                       f"run `{sys.executable} -m stellarfit._workers --check` to see why")
            if time.monotonic() > deadline:
                raise RuntimeError(f"stellarfit worker processes did not start within {_START_TIMEOUT:.0f} s")
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.setblocking(True)
            connection = Connection(client.detach())
            pid, core = connection.recv()
            slot, process, _ = pending.pop(pid)
            self._workers[slot] = _Worker(process, connection, core)

    def submit(self, function: Callable, *args, shared: Mapping[str, tuple[Callable, tuple]] | None = None,
               **kwargs) -> int:
        """Start ``function(*args, **kwargs)`` on an idle worker (waiting for one); returns a task id.

        ``shared``: key -> (loader, loader_args): objects the task reads with
        :func:`shared` (key); a worker runs ``loader(*loader_args)`` once and
        keeps the result, so a large object (an emulator's arrays) travels to
        each worker once.  Functions and loaders must be importable module-level
        functions.
        """
        if self._closed:
            raise RuntimeError("this WorkerPool is closed")
        while True:
            self._replace_dead()
            idle = [w for w in self._workers if w is not None and w.task is None]
            if idle:
                break
            self._wait(block=True)
        worker = idle[0]
        shared = dict(shared or {})
        preload = {name: spec for name, spec in shared.items() if name not in worker.keys}
        task = self._next_task
        self._next_task += 1
        try:
            worker.connection.send((preload, function, args, kwargs))
        except (OSError, EOFError, BrokenPipeError):
            self._results[task] = (False, WorkerDied("a stellarfit worker process died before it got its task"))
            self._retire(worker)
            return task
        for name in shared:  # as the worker's store will be: loaded or used last, oldest dropped
            worker.keys[name] = None
            worker.keys.move_to_end(name)
        while len(worker.keys) > _STORE_SIZE:
            worker.keys.popitem(last=False)
        worker.sent = tuple(preload)
        worker.task = task
        return task

    @property
    def busy(self) -> int:
        """Tasks running now."""
        return sum(w is not None and w.task is not None for w in self._workers)

    def collect(self, block: bool = True) -> dict[int, tuple[bool, Any]]:
        """Finished tasks: id -> (True, result) or (False, exception).  ``block``: wait for at least one
        (returns {} at once when nothing runs)."""
        if not self._results:
            self._wait(block=block and self.busy > 0)
        results, self._results = self._results, {}
        return results

    def map(self, function: Callable, calls, *, shared: Mapping[str, tuple[Callable, tuple]] | None = None) -> list:
        """``[function(*args) for args in calls]`` on the workers; raises the first task's exception."""
        order = []
        outcomes: dict[int, tuple[bool, Any]] = {}
        try:
            for args in calls:
                order.append(self.submit(function, *args, shared=shared))
                outcomes.update(self.collect(block=False))
            while len(outcomes) < len(order):
                outcomes.update(self.collect(block=True))
        except BaseException:  # interrupted (Ctrl-C) or failed here: stop the workers rather than leave them busy
            if self.busy:
                self.close()
            raise
        values = []
        for task in order:
            ok, value = outcomes[task]
            if not ok:
                raise value
            values.append(value)
        return values

    def _wait(self, block: bool) -> None:
        running = {w.connection: w for w in self._workers if w is not None and w.task is not None}
        if not running:
            return
        for connection in wait(list(running), timeout=None if block else 0):
            worker = running[connection]
            try:
                ok, value = connection.recv()
            except (EOFError, OSError):
                code = worker.process.wait()
                ok, value = False, WorkerDied(
                    f"a stellarfit worker process died while fitting (exit code {code}; killed or out of memory?)")
                self._results[worker.task] = (ok, value)
                self._retire(worker)
                continue
            self._results[worker.task] = (ok, value)
            if not ok:  # perhaps a loader failed: send those objects again with the next task
                for name in worker.sent:
                    worker.keys.pop(name, None)
            worker.task = None

    def _retire(self, worker: _Worker) -> None:
        slot = self._workers.index(worker)
        self._workers[slot] = None
        try:
            worker.connection.close()
        except OSError:
            pass
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait()

    def _replace_dead(self) -> None:
        for slot, worker in enumerate(self._workers):
            if worker is not None and worker.task is None and worker.process.poll() is not None:
                self._retire(worker)
        dead = [slot for slot, worker in enumerate(self._workers) if worker is None]
        if dead:
            self._start(dead)

    def close(self) -> None:
        """Stop the workers (they finish nothing that is running) and free the socket."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            if worker is None:
                continue
            try:
                worker.connection.send(None)
                worker.connection.close()
            except OSError:
                pass
        for worker in self._workers:
            if worker is None:
                continue
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        self._listener.close()
        try:
            os.unlink(self._address)
            os.rmdir(self._directory)
        except OSError:
            pass

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


_POOLS: dict[int, WorkerPool] = {}


def get_pool(n_workers: int) -> WorkerPool:
    """The process-wide pool of ``n_workers`` pinned workers (started on first use, kept for later fits)."""
    pool = _POOLS.get(n_workers)
    if pool is None or pool._closed:
        pool = _POOLS[n_workers] = WorkerPool(n_workers)
    return pool


def shutdown_pools() -> None:
    """Stop every pool :func:`get_pool` started (also run at exit)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.close()


atexit.register(shutdown_pools)


#: what ``python -m stellarfit._workers --check`` imports
_CHECK_MODULE = "stellarfit.inference"


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        # what a worker needs must import; by name, as this generic pool sits below the fitting code and
        # imports none of it
        import importlib

        importlib.import_module(_CHECK_MODULE)
        print("stellarfit worker: imports fine")
        return 0
    address, core = argv[0], int(argv[1])
    _serve_entry(address, None if core < 0 else core)
    return 0


def _serve_entry(address: str, core: int | None) -> None:
    # a free core (other pools and Ray workers on this machine hold theirs), else the pool's choice
    if core is not None and can_pin():
        os.sched_setaffinity(0, {core})  # at once: nothing runs unpinned while the lock files are tried
        core = pin_to_free_core(fallback=core)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(address)
    connection = Connection(client.detach())
    connection.send((os.getpid(), core))  # the pool matches connections to the processes it started
    _loop(connection)


def _loop(connection: Connection) -> None:
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):  # the pool (or the process that owns it) is gone
            break
        except Exception as error:  # noqa: BLE001 - a task this process cannot unpickle (e.g. a function of __main__)
            connection.send((False, RuntimeError(f"a stellarfit worker could not receive its task ({error}); tasks must "
                                                 "use functions importable from a module, not defined in a script")))
            continue
        if message is None:
            break
        preload, function, args, kwargs = message
        try:
            for name, (loader, loader_args) in preload.items():
                _STORE[name] = loader(*loader_args)
                while len(_STORE) > _STORE_SIZE:
                    _STORE.popitem(last=False)
            reply = (True, function(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - reported to the pool, the worker goes on
            reply = (False, _exception_payload(error))
        try:
            connection.send(reply)
        except OSError:  # the pool is gone (closed while this task ran): nobody to tell
            break
        except Exception as error:  # noqa: BLE001 - e.g. an unpicklable result
            try:
                connection.send((False, RuntimeError(f"the worker could not send its result back: {error}")))
            except OSError:
                break
    connection.close()


if __name__ == "__main__":
    # run in the importable module, not in __main__: tasks reach the store through stellarfit._workers
    from stellarfit._workers import _main as _module_main

    sys.exit(_module_main(sys.argv[1:]))
