"""TaskThreads: every call submitted starts at once, on an idle thread or a new one."""

from __future__ import annotations

import threading

import pytest
from conftest import poll

from distributary.worker.threads import TaskThreads


@pytest.mark.timeout(30)
def test_each_call_starts_at_once_however_many_are_blocked():
    threads = TaskThreads()
    release = threading.Event()
    started = []
    try:
        futures = [
            threads.submit(lambda i=i: started.append(i) or release.wait(10)) for i in range(20)
        ]
        poll(lambda: len(started) == 20)  # none waits behind the blocked ones
        release.set()
        assert all(f.result(10) for f in futures)
    finally:
        release.set()
        threads.shutdown(wait=True)


@pytest.mark.timeout(30)
def test_idle_threads_are_reused_and_errors_reach_the_future():
    threads = TaskThreads()
    try:
        names = {
            threads.submit(lambda: threading.current_thread().name).result(10) for _ in range(50)
        }
        assert len(names) <= 2 and len(threads) <= 2
        with pytest.raises(ZeroDivisionError):
            threads.submit(lambda: 1 / 0).result(10)
        assert threads.submit(lambda: 7).result(10) == 7
    finally:
        threads.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_calls_submitted_from_many_threads_while_others_block_all_run():
    threads = TaskThreads()
    gate = threading.Event()
    blocked = [threads.submit(lambda: gate.wait(30)) for _ in range(5)]
    results: list = []

    def submitter(n: int) -> None:
        for i in range(200):
            results.append(threads.submit(lambda i=i: i * n))

    try:
        submitters = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
        for t in submitters:
            t.start()
        for t in submitters:
            t.join(30)
        assert sorted(f.result(10) for f in results) == sorted(
            i * n for n in range(4) for i in range(200)
        )
    finally:
        gate.set()
        assert all(f.result(10) for f in blocked)
        threads.shutdown(wait=True)
    assert len(threads) == 0


@pytest.mark.timeout(30)
def test_after_shutdown_nothing_more_is_taken():
    threads = TaskThreads()
    assert threads.submit(lambda: 1).result(10) == 1
    threads.shutdown(wait=True)
    assert len(threads) == 0
    with pytest.raises(RuntimeError, match="shut down"):
        threads.submit(lambda: 2)


@pytest.mark.timeout(30)
def test_a_call_submitted_upon_the_previous_result_reuses_its_thread():
    """The worker submits its next task as soon as a result is told (from the future's
    done callback, here run by the pool's thread itself): that thread is already idle
    then, so no second thread starts."""
    pool = TaskThreads()
    finished = threading.Event()
    results = []

    def then(i: int):
        def callback(future):
            results.append(future.result())
            if i < 50:
                pool.submit(lambda: i + 1).add_done_callback(then(i + 1))
            else:
                finished.set()

        return callback

    try:
        pool.submit(lambda: 0).add_done_callback(then(0))
        assert finished.wait(10)
        assert results == list(range(51))
        assert len(pool) == 1
    finally:
        pool.shutdown(wait=True)
