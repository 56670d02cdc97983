"""The httpx clients an API reranker sends with, and the private loop of its sync calls.

``Clients`` picks the ``Exchange`` of a call: an injected client (``http_client`` for sync
calls, ``http_async_client`` for async ones, the latter on the one event loop it belongs to),
else the reranker's own ``httpx.AsyncClient``, one per event loop, closed when that loop shuts
down (``asyncio.run``), by ``close``/``aclose``, or once the reranker is dropped. Sync calls run
on ``BackgroundLoop``, one daemon thread for every reranker (``run_sync``). A fork resets what
the parent's threads held.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import ssl
import threading
import weakref
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from milvus_rerank.core.errors import ConfigurationError
from milvus_rerank.core.forks import after_fork
from milvus_rerank.providers.api.exchange import AsyncExchange, Exchange, ThreadedExchange
from milvus_rerank.providers.api.options import PROXY_VARS, check_proxy_env

__all__ = ["BackgroundLoop", "Clients", "LoopState", "run_sync", "ssl_context"]

_T = TypeVar("_T")


class BackgroundLoop:
    """One daemon thread running an event loop, for every reranker's sync calls."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _pid: int = 0

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        """The loop, started on first use (and again in a forked child)."""
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid() or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="milvus-rerank-http", daemon=True
                )
                thread.start()
                cls._loop, cls._thread, cls._pid = loop, thread, os.getpid()
            return cls._loop

    @classmethod
    def current(cls) -> asyncio.AbstractEventLoop | None:
        """The loop if it already runs in this process, else None."""
        with cls._lock:
            return cls._loop if cls._loop is not None and cls._pid == os.getpid() else None

    @classmethod
    def refuse_to_wait_on_itself(cls, owner: str, what: str) -> None:
        """Refuse a sync ``what`` on the loop's own thread: it would wait for itself forever.

        Raises:
            ConfigurationError: the caller runs on that thread (e.g. in a provider hook, which
                sync calls run there).
        """
        if cls._thread is threading.current_thread() and cls._pid == os.getpid():
            raise ConfigurationError(
                f"{owner}: a sync {what} was called on milvus-rerank's private event loop, "
                "which runs every sync call of the process (from a provider hook?); it would "
                "wait for itself forever. Await the async form (arerank, aclose) there, or call "
                "it from another thread"
            )


def run_sync(coro: Coroutine[Any, Any, _T], owner: str = "milvus-rerank") -> _T:
    """Run ``coro`` on the private loop and wait for it; an interrupt cancels it.

    Raises:
        ConfigurationError: called on the private loop's own thread (see ``BackgroundLoop``).
    """
    try:
        BackgroundLoop.refuse_to_wait_on_itself(owner, "rerank()")
    except ConfigurationError:
        coro.close()  # never started: no "never awaited" warning
        raise
    future = asyncio.run_coroutine_threadsafe(coro, BackgroundLoop.get())
    try:
        return future.result()
    except BaseException:
        future.cancel()  # e.g. KeyboardInterrupt: stop the requests too
        raise


_ssl_lock = threading.Lock()
_ssl: list[ssl.SSLContext] = []


def ssl_context() -> ssl.SSLContext:
    """One verifying SSL context for every client made here.

    Building one reads the CA bundle (about 50 ms), which per ``asyncio.run`` would dominate.
    """
    with _ssl_lock:
        if not _ssl:
            _ssl.append(httpx.create_ssl_context())
        return _ssl[0]


@after_fork
def _reset_locks() -> None:
    """Locks possibly held by the parent's threads; the private loop is re-made (new pid)."""
    global _ssl_lock
    _ssl_lock = threading.Lock()
    BackgroundLoop._lock = threading.Lock()


@dataclass
class LoopState:
    """The async client of one event loop; ``guard`` closes it when the loop shuts down."""

    client: httpx.AsyncClient
    guard: AsyncGenerator[None, None]


Loops = dict[asyncio.AbstractEventLoop, LoopState]


class Clients:
    """The clients one reranker sends with: the injected ones, else its own per event loop.

    Args:
        owner: The reranker's class name, for messages.
        max_concurrency: Connections each own client keeps.
        sync_client: An injected ``httpx.Client`` for sync calls (never closed here).
        async_client: An injected ``httpx.AsyncClient`` for async calls (never closed here).
    """

    def __init__(
        self,
        owner: str,
        max_concurrency: int,
        sync_client: httpx.Client | None,
        async_client: httpx.AsyncClient | None,
    ) -> None:
        _check_client(owner, "http_client", sync_client, httpx.Client, "http_async_client")
        _check_client(owner, "http_async_client", async_client, httpx.AsyncClient, "http_client")
        self.owner = owner
        self.max_concurrency = max_concurrency
        self.sync_client = sync_client
        self.async_client = async_client
        self.closes = 0  # bumped by close/aclose: a call that sees it change was closed on
        self._fresh_state()

    def _fresh_state(self) -> None:
        self.loops: Loops = {}
        self.lock = threading.Lock()
        self._injected_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        # Dropped without close(): its clients' idle sockets would live on in their loops
        # (the private one never ends), so closing them is scheduled there.
        self._finalizer = weakref.finalize(self, _close_states, self.loops, self.lock)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's clients and loops, unclosed.

        Their clients share sockets with the parent: closing a TLS stream here would end the
        parent's session.
        """
        self._finalizer.detach()
        self._fresh_state()

    def closed_since(self, closes: int) -> bool:
        """Whether ``close``/``aclose`` ran since ``closes`` was read."""
        return self.closes != closes

    async def exchange(
        self, *, private: bool, context: contextvars.Context | None = None
    ) -> Exchange:
        """What a call sends with: on the private loop (``private``) or the caller's."""
        if private and self.sync_client is not None:
            return ThreadedExchange(self.sync_client, context)
        if not private and self.async_client is not None:
            self._check_injected_loop()
            return AsyncExchange(self.async_client)
        return AsyncExchange((await self.loop_state()).client)

    def _check_injected_loop(self) -> None:
        """Refuse to use the injected ``httpx.AsyncClient`` on a second event loop.

        Its pooled connections belong to the loop that first used it; on another one (a second
        ``asyncio.run``) they fail with a raw ``RuntimeError`` now and then.
        """
        loop = asyncio.get_running_loop()
        with self.lock:
            if self._injected_loop is None:  # its first use: this loop is its loop
                self._injected_loop = weakref.ref(loop)
                return
            # Whether that first loop is still alive or already collected (its pool can still
            # hold connections of it), any other loop is refused: the same answer every time.
            first = self._injected_loop()
        if first is not loop:
            raise ConfigurationError(
                f"{self.owner}: the http_async_client passed in was first used on "
                "another event loop (an earlier asyncio.run?); an httpx.AsyncClient belongs to "
                "the loop that first used it. Make one per event loop, or pass none: the "
                "reranker then keeps one client per loop itself"
            )

    def _new_async_client(self) -> httpx.AsyncClient:
        check_proxy_env(self.owner)
        limits = httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )
        try:
            return httpx.AsyncClient(limits=limits, follow_redirects=False, verify=ssl_context())
        except (ImportError, ValueError) as exc:  # pragma: no cover - check_proxy_env first
            raise ConfigurationError(
                f"{self.owner}: the proxy settings in the environment cannot be used "
                f"({type(exc).__name__}); check {', '.join(PROXY_VARS[:3])}"
            ) from None

    async def loop_state(self) -> LoopState:
        """This loop's own client, created on first use and closed when the loop shuts down."""
        loop = asyncio.get_running_loop()
        with self.lock:
            for old in [lp for lp in self.loops if lp.is_closed()]:
                del self.loops[old]  # closed without shutdown_asyncgens: let GC close it
            state = self.loops.get(loop)
        if state is not None:
            return state
        client = self._new_async_client()
        guard = _close_with_loop(self.loops, self.lock, loop, client)
        await guard.__anext__()  # now tracked by the loop, finalised at its shutdown
        with self.lock:
            if loop in self.loops:  # another task of this loop won the race
                other = self.loops[loop]
            else:
                self.loops[loop] = state = LoopState(client, guard)
                return state
        await guard.aclose()
        return other

    def _pop_state(self, loop: asyncio.AbstractEventLoop | None) -> LoopState | None:
        if loop is None:
            return None
        with self.lock:
            return self.loops.pop(loop, None)

    def close(self) -> None:
        """Close the own client of the sync path; made again on next use.

        Raises:
            ConfigurationError: called on the private loop's thread (see ``BackgroundLoop``).
        """
        BackgroundLoop.refuse_to_wait_on_itself(self.owner, "close()")
        self.closes += 1
        loop = BackgroundLoop.current()
        state = self._pop_state(loop)
        if state is not None and loop is not None:
            future = asyncio.run_coroutine_threadsafe(state.guard.aclose(), loop)
            future.result(timeout=10)

    async def aclose(self) -> None:
        """Close the own clients of the sync path and of this event loop."""
        self.closes += 1
        background = BackgroundLoop.current()
        state = self._pop_state(background)
        if state is not None and background is not None:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(state.guard.aclose(), background)
            )
        state = self._pop_state(asyncio.get_running_loop())
        if state is not None:
            await state.guard.aclose()


def _check_client(
    owner: str, option: str, client: object, kind: type[object], other_option: str
) -> None:
    """Refuse an injected client of the wrong type, naming the option and the type given.

    Raises:
        ConfigurationError: ``client`` is neither None nor a ``kind``.
    """
    if client is None or isinstance(client, kind):
        return
    hint = ""
    if isinstance(client, (httpx.Client, httpx.AsyncClient)):
        hint = f"; an httpx.{type(client).__name__} goes in {other_option}"
    raise ConfigurationError(
        f"{owner}: {option} must be an httpx.{kind.__name__}, got {type(client).__name__}{hint}"
    )


async def _close_with_loop(
    states: Loops, lock: threading.Lock, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient
) -> AsyncGenerator[None, None]:
    """Forget ``loop``'s state and close its client when the loop shuts down.

    Suspended once per loop; ``loop.shutdown_asyncgens()`` (which ``asyncio.run`` calls) or
    ``aclose`` finishes it.
    """
    try:
        yield
    finally:
        with lock:
            if states.get(loop) is not None and states[loop].client is client:
                del states[loop]
        await client.aclose()


def _close_states(states: Loops, lock: threading.Lock) -> None:
    """Schedule closing every client in ``states`` on its own loop (loops that still run)."""
    with lock:
        pending = list(states.items())
        states.clear()
    for loop, state in pending:
        if loop.is_closed():
            continue
        try:
            loop.call_soon_threadsafe(_spawn_close, loop, state.guard)
        except RuntimeError:  # closed meanwhile
            continue


_closing: set[asyncio.Task[None]] = set()


def _spawn_close(loop: asyncio.AbstractEventLoop, guard: AsyncGenerator[None, None]) -> None:
    task = loop.create_task(guard.aclose())
    _closing.add(task)  # a task only weakly held by its loop could vanish half-way
    task.add_done_callback(_closing.discard)
