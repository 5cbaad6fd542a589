"""Worker processes pinned one per core (stellarfit._workers): pinning, results, errors, shared objects, deaths."""

import os
import secrets

import pytest

from stellarfit import _workers
from stellarfit._workers import WorkerDied, WorkerPool, usable_cores


def _affinity():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _token():
    return secrets.token_hex(8)


def _read_shared(key):
    return os.getpid(), _workers.shared(key)


def _fail(message):
    raise ValueError(message)


def _unpicklable_result():
    return lambda: None


def test_workers_claim_free_cores_across_pools():
    """A second pool's workers take the cores the first pool's workers do not hold; with none free, their slot's."""
    cores = usable_cores()
    if not _workers.can_pin():
        pytest.skip("no CPU affinity on this OS")
    with WorkerPool(1) as first, WorkerPool(len(cores)) as second:
        (held,) = first.cores
        free = sorted(c for c in cores if c != held)
        assert set(second.cores) >= set(free)  # every free core went to a worker of the second pool
        assert all(c in cores for c in second.cores)


@pytest.fixture(scope="module")
def pool():
    with WorkerPool(2) as pool:
        yield pool


def test_workers_are_pinned_to_distinct_cores(pool):
    cores = usable_cores()
    if _workers.can_pin():
        assert set(pool.cores) <= set(cores) and len(set(pool.cores)) == min(2, len(cores))
    else:
        assert pool.cores == [None, None]
    # every worker reports its own affinity: one core each, the ones the pool says
    tasks = [pool.submit(_affinity) for _ in range(2)]  # both workers busy at once: one task each
    outcomes = {}
    while len(outcomes) < 2:
        outcomes.update(pool.collect())
    seen = sorted(tuple(value) for ok, value in outcomes.values() if ok)
    assert len(seen) == 2 and set(outcomes) == set(tasks)
    if _workers.can_pin():
        assert seen == sorted(((c,) for c in pool.cores))
        assert _affinity() == cores  # the parent keeps all its cores


def test_map_results_and_errors(pool):
    assert pool.map(divmod, [(7, 2), (9, 4), (1, 1)]) == [(3, 1), (2, 1), (1, 0)]
    with pytest.raises(ValueError, match="bad star"):
        pool.map(_fail, [("bad star",)])
    with pytest.raises(RuntimeError, match="could not send its result back"):
        pool.map(_unpicklable_result, [()])
    assert pool.map(divmod, [(5, 5)]) == [(1, 0)]  # the workers go on after errors


def test_shared_objects_load_once_per_worker(pool):
    shared = {"token": (_token, ())}
    seen = pool.map(_read_shared, [("token",)] * 6, shared=shared)
    by_worker = {}
    for pid, token in seen:
        by_worker.setdefault(pid, set()).add(token)
    assert all(len(tokens) == 1 for tokens in by_worker.values())  # loaded once in each worker, then kept
    with pytest.raises(KeyError, match="no shared object 'missing'"):
        pool.map(_read_shared, [("missing",)])


def _failing_loader():
    raise RuntimeError("cannot load the emulator")


def test_a_failed_load_is_sent_again(pool):
    with pytest.raises(RuntimeError, match="cannot load the emulator"):
        pool.map(_read_shared, [("flaky",)], shared={"flaky": (_failing_loader, ())})
    (pid, token), = pool.map(_read_shared, [("flaky",)], shared={"flaky": (_token, ())})
    assert isinstance(token, str) and len(token) == 16


def test_a_dead_worker_fails_its_task_and_is_replaced():
    with WorkerPool(1) as pool:
        (first_pid,) = pool.map(os.getpid, [()])
        task = pool.submit(os._exit, 3)
        outcomes = pool.collect()
        ok, error = outcomes[task]
        assert not ok and isinstance(error, WorkerDied) and "exit code 3" in str(error)
        (second_pid,) = pool.map(os.getpid, [()])
        assert second_pid != first_pid
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(os.getpid)


def test_bad_pool_size():
    with pytest.raises(ValueError, match="positive integer"):
        WorkerPool(0)
