"""The runner's tokenizer lock is taken in turn: a large call cannot keep it slice after slice."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from milvus_rerank.providers.local.locks import FairLock


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_release_hands_the_lock_to_the_waiters_in_order() -> None:
    lock = FairLock()
    order: list[str] = []

    def take(name: str) -> None:
        with lock:
            order.append(name)

    lock.acquire()
    first = threading.Thread(target=take, args=("first",))
    first.start()
    wait_for(lambda: len(lock._waiters) == 1)
    second = threading.Thread(target=take, args=("second",))
    second.start()
    wait_for(lambda: len(lock._waiters) == 2)
    # The holder lets go and asks again at once, as a large call between two slices does:
    # a plain Lock would let it straight back in; here it queues behind both waiters.
    lock.release()
    lock.acquire()
    order.append("holder again")
    lock.release()
    first.join(5), second.join(5)
    assert order == ["first", "second", "holder again"]
    assert not lock._held and not lock._waiters


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_an_interrupted_waiter_leaves_the_queue_and_the_lock_works_on() -> None:
    lock = FairLock()
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)

    class Interrupt(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupt):  # as Ctrl-C would, while waiting for its turn
            lock.acquire()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not lock._waiters, "the interrupted waiter left the queue"
    done.set()
    thread.join(5)
    assert not lock._held, "the holder's release freed it: no turn handed to a dead waiter"
    with lock:
        assert lock._held


def test_release_of_a_free_lock_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="unheld"):
        FairLock().release()
