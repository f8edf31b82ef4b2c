"""The asyncio face of the Rust bus."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import types
import weakref
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional, TypeVar, Union

from . import _switchyard as _native
from ._codec import _NOTHING, MessageSpec, converter, decoder, encode, spec_of
from ._codec import _identity as _codec_identity
from ._plan import _Handler, _check_handler, _plan
from ._handling import _CURRENT, _CoroutineType, _continue, _describe, _fail, _fail_inline, _resume, _settle, invoke_many  # noqa: F401 (re-exported)
from .errors import DecodeFailed, EncodeFailed, SwitchyardError

Envelope = _native.Envelope
DeadLetter = _native.DeadLetter

F = TypeVar("F", bound=Callable[..., Any])

_get_running_loop = asyncio.get_running_loop


def current_envelope() -> Optional[Any]:
    """The envelope being handled in this task (``None`` outside handlers)."""
    return _CURRENT.get()


@dataclass(frozen=True)
class ShutdownReport:
    """What :meth:`Bus.shutdown` did."""

    #: Messages settled while draining.
    drained: int
    #: Ids of in-memory messages not handled before the deadline (dead-lettered, reason
    #: ``shutdown``; their senders got ``NotProcessed``).
    left: list[str] = field(default_factory=list)
    #: Ids of transport messages not handled before the deadline (never acked, so the
    #: transport delivers them again).
    nacked: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WaitReport:
    """What ``publish(..., wait=True)`` saw: handlers that finished, filtered copies, and
    each failure as ``(subscription, exception)``."""

    handled: int
    filtered: int
    failures: list[tuple[str, SwitchyardError]]


class Subscription:
    """A registered handler. Calling it calls the handler function; :meth:`unsubscribe`
    stops new messages (queued ones are still handled)."""

    def __init__(self, bus: "Bus", sub_id: int, name: str, pattern: str, fn: Callable[..., Any]) -> None:
        self._bus = bus
        self.id = sub_id
        self.name = name
        self.pattern = pattern
        self.fn = fn
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def unsubscribe(self) -> bool:
        """Stops routing to this subscription. False when it was not registered (session
        handlers go away with their session)."""
        return self._bus._native.unsubscribe(self.id)

    def stats(self) -> dict[str, Any]:
        """Its counters (delivered, acked, failed, retried, dead_lettered, ...)."""
        for info in self._bus.registry():
            if info["name"] == self.name and info["pattern"] == self.pattern:
                return dict(info["stats"])
        return {}

    def __repr__(self) -> str:
        return f"Subscription(name={self.name!r}, pattern={self.pattern!r})"


_OVERFLOWS = ("block", "drop_oldest", "reject_new", "adaptive")

#: Most queued messages a worker hands the loop at once (``on(prefetch=)``).
_PREFETCH = 64


class _Registrar:
    """``on`` / ``handle`` / ``on_batch``, shared by :class:`Bus` and :class:`Session`."""

    _bus: "Bus"

    def _session_native(self) -> Any:
        return None

    def _register(
        self,
        kind: str,
        target: Any,
        fn: Optional[Callable[..., Any]],
        *,
        name: Optional[str],
        type: Any,
        batch: Optional[tuple[int, float]],
        options: dict[str, Any],
    ) -> Any:
        spec = spec_of(target) if not isinstance(target, str) else None
        if isinstance(target, str):
            pattern = _topic_text(target)
        elif spec is not None:
            pattern = spec.topic
            if type is None:
                type = target
        else:
            raise TypeError(f"{target!r} is neither a topic nor a message class (decorate it with @switchyard.event / @switchyard.command)")
        if kind == "command" and spec is not None and spec.kind != "command":
            raise TypeError(f"{spec.name} is an event; handle() takes commands (@switchyard.command)")

        def register(f: Callable[..., Any]) -> Subscription:
            _check_handler(f)
            decode, raw_env, arity = _plan(f, type, batch is not None)
            sub_name = name or (pattern if kind == "command" else getattr(f, "__qualname__", "handler"))
            bus = self._bus
            sub_id = bus._native.subscribe(
                sub_name,
                pattern,
                kind,
                batch=batch,
                session=self._session_native(),
                **_native_options(options),
            )
            bus._handlers[sub_id] = _Handler(f, decode, raw_env, arity, kind == "command", batch is not None, sub_name)
            bus._bind_if_running()
            return Subscription(bus, sub_id, sub_name, pattern, f)

        if fn is not None:
            return register(fn)
        return register

    def on(
        self,
        target: Any,
        fn: Optional[Callable[..., Any]] = None,
        *,
        name: Optional[str] = None,
        type: Any = None,
        workers: Optional[int] = None,
        queue_capacity: Optional[int] = None,
        overflow: Optional[str] = None,
        overflow_timeout: Optional[float] = None,
        max_attempts: Optional[int] = None,
        retry_delay: Optional[float] = None,
        priority: Optional[int] = None,
        ordering_header: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        filter: Optional[Callable[[Any], bool]] = None,
        prefetch: int = _PREFETCH,
    ) -> Any:
        """Subscribes ``fn`` (or, as a decorator, the decorated function) to a pattern
        (``"analytics.#"``) or a message class's topic.

        The handler gets the message decoded into its first parameter's annotation (a
        dataclass, a pydantic model, ``dict``, ``bytes``...; for a message class, that class),
        or the :class:`Envelope` when it has none; a second parameter gets the envelope.
        ``workers`` handler calls run at once (default 1: one at a time, in order);
        ``priority`` is the handler priority group (higher groups finish first);
        ``headers`` / ``filter`` keep messages out before they are queued; ``prefetch``: a
        worker hands the loop up to that many queued messages at once (each still one handler
        call, in order, with its own outcome; 1: one at a time); the others are the queue's
        and retry settings (defaults from the bus; ``overflow_timeout`` alone applies to the
        bus's overflow policy). Returns the :class:`Subscription`.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        return self._register(
            "event", target, fn, name=name, type=type, batch=None,
            options=dict(workers=workers, queue_capacity=queue_capacity, overflow=overflow,
                         overflow_timeout=overflow_timeout, max_attempts=max_attempts,
                         retry_delay=retry_delay, priority=priority, ordering_header=ordering_header,
                         headers=headers, filter=filter, prefetch=prefetch),
        )

    def handle(
        self,
        target: Any,
        fn: Optional[Callable[..., Any]] = None,
        *,
        name: Optional[str] = None,
        type: Any = None,
        workers: Optional[int] = None,
        queue_capacity: Optional[int] = None,
        overflow: Optional[str] = None,
        overflow_timeout: Optional[float] = None,
        max_attempts: Optional[int] = None,
        retry_delay: Optional[float] = None,
    ) -> Any:
        """Registers the one handler of a command class (or command topic). What the handler
        returns is the sender's result (encoded as JSON); raising :class:`Reject` refuses the
        command, any other exception is retried and finally reaches the sender as
        :class:`HandlerFailed`."""
        return self._register(
            "command", target, fn, name=name, type=type, batch=None,
            options=dict(workers=workers, queue_capacity=queue_capacity, overflow=overflow,
                         overflow_timeout=overflow_timeout, max_attempts=max_attempts,
                         retry_delay=retry_delay),
        )

    def on_batch(
        self,
        target: Any,
        fn: Optional[Callable[..., Any]] = None,
        *,
        max_size: int = 100,
        max_wait: float = 0.05,
        name: Optional[str] = None,
        type: Any = None,
        workers: Optional[int] = None,
        queue_capacity: Optional[int] = None,
        max_attempts: Optional[int] = None,
        retry_delay: Optional[float] = None,
        headers: Optional[Mapping[str, str]] = None,
        filter: Optional[Callable[[Any], bool]] = None,
    ) -> Any:
        """Subscribes a batch handler: it gets a list of up to ``max_size`` messages, at most
        ``max_wait`` seconds after the first. The batch succeeds or fails as a whole; a
        payload that does not decode is dead-lettered on its own and left out."""
        if self._session_native() is not None:
            raise TypeError("batch subscriptions are not available in sessions")
        return self._register(
            "event", target, fn, name=name, type=type, batch=(max_size, max_wait),
            options=dict(workers=workers, queue_capacity=queue_capacity, max_attempts=max_attempts,
                         retry_delay=retry_delay, headers=headers, filter=filter),
        )


def _native_options(o: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in o.items() if v is not None}
    ov = out.get("overflow")
    if ov is not None and ov not in _OVERFLOWS:
        raise ValueError(f"overflow must be one of {_OVERFLOWS}")
    if "headers" in out:
        out["headers"] = dict(out["headers"])
    return out


def _topic_text(target: str) -> str:
    """The plain text of a topic given as a str or a str subclass (a str enum's value, not its
    ``Topics.X`` name)."""
    return target if type(target) is str else str.__str__(target)


def _message(target: Any, payload: Any) -> tuple[str, bytes, Optional[str], Optional[MessageSpec]]:
    """(topic, payload bytes, type name, spec) of a publish or send."""
    try:
        return _message_unchecked(target, payload)
    except (TypeError, ValueError) as e:
        if isinstance(e, SwitchyardError):
            raise
        raise EncodeFailed(f"cannot encode the message: {e}") from e


def _message_unchecked(target: Any, payload: Any) -> tuple[str, bytes, Optional[str], Optional[MessageSpec]]:
    if isinstance(target, str):
        # A str subclass (a `(str, Enum)` / `StrEnum` of topics) is a topic, as for on().
        target = _topic_text(target)
        if payload is _NOTHING:
            return target, b"null", None, None
        if type(payload) is bytes:
            return target, payload, None, None
        spec = spec_of(payload)
        return target, encode(payload), (spec.name if spec is not None else None), spec
    if payload is not _NOTHING:
        raise TypeError("pass either a topic and a payload, or a message object")
    spec = spec_of(target)
    if spec is None:
        raise TypeError(f"{type(target).__name__} has no topic: decorate it with @switchyard.event or @switchyard.command, or pass a topic")
    return spec.topic, encode(target), spec.name, spec


#: Most invocations one reader callback runs before it lets other tasks have the loop.
_DRAIN_BUDGET = 256
#: How long (microseconds, GIL released) the loop waits for the next invocation after it
#: answered one at once, before it goes back to asyncio.
_NEXT_WAIT_US = 50


def _drain_ref(ref: "weakref.ReferenceType[Bus]") -> None:
    bus = ref()
    if bus is not None:
        bus._drain()


def _set_outcome(fut: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    if not fut.done():
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _resolve_threadsafe(fut: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    """Resolves a future of another thread's loop from the bus's loop."""
    try:
        fut.get_loop().call_soon_threadsafe(_set_outcome, fut, ok, value)
    except RuntimeError:
        pass  # that loop closed: nobody awaits it any more


def _remove_reader(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    try:
        if not loop.is_closed():
            loop.remove_reader(fd)
    except Exception:
        pass


class Bus(_Registrar):
    """A switchyard bus: the Rust bus, with Python handlers served on one asyncio loop.

    ``Bus()`` runs in memory. :meth:`open_log` runs it on the embedded durable log and
    :meth:`connect_nats` on NATS JetStream; in every case the handlers, messages and shutdown
    are the same. The loop the handlers run on is the one running when the bus is first used
    (created, subscribed to, published on or awaited); it moves to another loop only once
    that loop no longer runs (a second ``asyncio.run``). A thread with its own running loop
    may publish, send and await on the bus: its handlers stay on their loop.
    """

    def __init__(
        self,
        *,
        queue_capacity: int = 1024,
        workers: int = 1,
        max_attempts: int = 3,
        retry_delay: float = 0.1,
        overflow: str = "block",
        overflow_timeout: float = 1.0,
        overflow_max_delay: float = 0.01,
        lifecycle_events: bool = False,
        max_message_bytes: int = 16 * 1024 * 1024,
        _transport: Any = None,
    ) -> None:
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {_OVERFLOWS}")
        self._bus = self
        self._native = _native.NativeBus(
            queue_capacity=queue_capacity,
            workers=workers,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
            overflow=overflow,
            overflow_timeout=overflow_timeout,
            overflow_max_delay=overflow_max_delay,
            lifecycle_events=lifecycle_events,
            transport=_transport,
            max_message_bytes=max_message_bytes,
        )
        self._fd = self._native.fileno()
        self._handlers: dict[int, _Handler] = {}
        self._futures: dict[int, asyncio.Future[Any]] = {}
        #: Futures of calls made from another thread's running loop (not the bus's loop).
        self._foreign: dict[int, asyncio.Future[Any]] = {}
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._finalizer: Optional[weakref.finalize] = None
        self._bind_if_running()

    # -- construction on transports ------------------------------------------------------

    @classmethod
    def open_log(
        cls,
        path: Union[str, os.PathLike[str]],
        *,
        streams: Optional[Mapping[str, Iterable[str]]] = None,
        durability: str = "always",
        interval: float = 0.1,
        **options: Any,
    ) -> "Bus":
        """A bus on the embedded durable log in directory ``path`` (created if missing).

        Events survive restarts; each subscription consumes with its name as the consumer
        group (a new name starts at the oldest message). ``streams`` maps stream names to
        topic patterns; ``durability`` is ``always`` (fsync before publish returns),
        ``interval`` or ``never``. Only one process opens a log at a time. Commands stay in
        process.
        """
        t = _native.NativeTransport.open_log(
            os.fspath(path),
            streams=[(k, list(v)) for k, v in (streams or {}).items()],
            durability=durability,
            interval=interval,
        )
        return cls(_transport=t, **options)

    @classmethod
    async def connect_nats(
        cls,
        url: str = "nats://127.0.0.1:4222",
        *,
        streams: Optional[Mapping[str, Iterable[str]]] = None,
        max_deliver: Optional[int] = None,
        ack_wait: Optional[float] = None,
        max_age: Optional[float] = None,
        **options: Any,
    ) -> "Bus":
        """A bus on NATS JetStream at ``url``, creating or updating ``streams`` (name → topic
        patterns; a topic no stream holds is refused at publish). Processes (Rust or Python)
        with a subscription of the same name share its messages. ``max_deliver``,
        ``ack_wait`` and ``max_age`` (seconds) are the consumers' and streams' settings."""
        t = await _native.NativeTransport.connect_nats(
            url,
            streams=[(k, list(v)) for k, v in (streams or {}).items()],
            max_deliver=max_deliver,
            ack_wait=ack_wait,
            max_age=max_age,
        )
        return cls(_transport=t, **options)

    @staticmethod
    async def connect(
        url: str = "http://127.0.0.1:7878",
        token: Optional[str] = None,
        *,
        open_timeout: float = 10.0,
        max_frame_bytes: int = 16 * 1024 * 1024,
    ) -> Any:
        """A bus connected to a running ``switchyard serve`` node over its WebSocket gateway
        (``http://host:port`` or ``ws://host:port/v1/ws``; ``token``: the bearer token or JWT
        when the node has auth on). Returns a :class:`ConnectedBus` with the same methods:
        ``publish``, ``on`` (manual ack, ``group=`` to share), ``handle`` (commands sent from
        Rust, HTTP or other clients arrive here), ``send``, ``request``, ``shutdown``. What only
        an in-process bus has raises :class:`Unsupported`. A refused connection raises
        :class:`Unauthenticated` (bad token) or :class:`TransportError` (unreachable)."""
        from ._remote import connect

        return await connect(url, token, open_timeout=open_timeout, max_frame_bytes=max_frame_bytes)

    # -- the event loop -----------------------------------------------------------------

    def _bind_if_running(self) -> None:
        try:
            loop = _get_running_loop()
        except RuntimeError:
            return
        if loop is not self._loop:
            self._use(loop)

    def _use(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called from ``loop`` (running), which is not the bus's loop: the bus moves there
        only when its loop no longer serves it (closed or stopped: a second asyncio.run).
        A call from another thread's loop while the first still runs leaves the handlers
        where they are; that call's own futures are resolved on its loop (see _wait)."""
        current = self._loop
        if current is None or current.is_closed() or not current.is_running():
            self._bind(loop)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        old = self._loop
        if old is not None:
            _remove_reader(old, self._fd)
            if self._finalizer is not None:
                self._finalizer.detach()
        loop.add_reader(self._fd, _drain_ref, weakref.ref(self))
        self._loop = loop
        self._finalizer = weakref.finalize(self, _remove_reader, loop, self._fd)

    def _wait(self, token: int) -> "asyncio.Future[Any]":
        loop = self._loop
        if loop is None:
            raise RuntimeError("the bus is not bound to an event loop")
        running = _get_running_loop()
        if running is loop:
            fut = loop.create_future()
            self._futures[token] = fut
        else:
            # A caller on another thread's loop: its result is handed over thread-safely.
            fut = running.create_future()
            self._foreign[token] = fut
        fut.add_done_callback(functools.partial(self._future_done, token))
        return fut

    def _future_done(self, token: int, fut: "asyncio.Future[Any]") -> None:
        if fut.cancelled():
            self._futures.pop(token, None)
            self._foreign.pop(token, None)
            self._native.cancel(token)

    def _drain(self) -> None:
        native = self._native
        try:
            invokes, others = native.take()
            handled = 0
            while True:
                # Invocations answered before this returns: each freed a bus worker, which
                # hands over its next message(s) within microseconds if any are queued.
                answered, n = self._run(invokes, others)
                handled += n
                if not answered or handled >= _DRAIN_BUDGET:
                    break
                invokes, others = native.take_wait(_NEXT_WAIT_US)
                if not invokes and not others:
                    break
        finally:
            native.rest()

    def _run(self, invokes: list[Any], others: list[Any]) -> tuple[bool, int]:
        """Runs what the loop took: whether some invocation was answered before this
        returns, and how many messages the invocations carried."""
        handlers = self._handlers
        answered = False
        n = 0
        for token, sub, env, reply, payloads in invokes:
            h = handlers.get(sub)
            n += 1
            if h is None:
                reply.fail("no Python handler is registered for this subscription", True)
                if payloads is True:
                    reply.finish()
            elif payloads is None:
                if self._invoke(h, token, env, reply):
                    answered = True
            elif payloads is True:  # a prefetch hand-over: `env` is a list of envelopes
                n += len(env) - 1
                if invoke_many(self, h, token, env, reply):
                    answered = True
            else:
                self._invoke_batch(h, token, env, reply, payloads)
        for item in others:
            if item[0] == 1:
                fut = self._futures.pop(item[1], None)
                if fut is not None:
                    if not fut.done():
                        if item[2]:
                            fut.set_result(item[3])
                        else:
                            fut.set_exception(item[3])
                elif self._foreign:
                    foreign = self._foreign.pop(item[1], None)
                    if foreign is not None:
                        _resolve_threadsafe(foreign, item[2], item[3])
            else:
                task = self._tasks.pop(item[1], None)
                if task is not None:
                    task.cancel()
        return answered, n

    def _invoke(self, h: _Handler, token: int, env: Any, reply: Any) -> bool:
        """Calls the handler; True when it was answered before this returns."""
        decode = h.decode
        if h.raw_env:
            arg = env
        elif decode is _codec_identity:
            arg = env.payload
        else:
            try:
                arg = decode(env.payload)
            except Exception as e:
                reply.undecodable(f"{type(e).__name__}: {e}")
                return True
        ctx = _CURRENT.set(env)
        try:
            try:
                arity = h.arity
                result = h.fn(arg, env) if arity == 2 else (h.fn(arg) if arity == 1 else h.fn())
            except BaseException as e:
                # StopIteration included: a plain `def` handler's own (next() on an empty
                # iterator) is a failure, not its return.
                _fail_inline(reply, e)
                return True
            if type(result) is _CoroutineType:
                try:
                    yielded = result.send(None)
                except StopIteration as stop:  # the coroutine finished without suspending
                    result = stop.value
                except BaseException as e:
                    _fail_inline(reply, e)
                    return True
                else:
                    self._suspend(h, token, reply, result, yielded)
                    return False
            elif inspect.isawaitable(result):
                self._suspend(h, token, reply, None, result)
                return False
            if h.command:
                _settle(h, reply, result)
            else:
                reply.ack()
            return True
        finally:
            _CURRENT.reset(ctx)

    def _invoke_batch(self, h: _Handler, token: int, env: Any, reply: Any, payloads: list[bytes]) -> None:
        items = []
        for i, p in enumerate(payloads):
            try:
                items.append(h.decode(p))
            except Exception as e:
                self._dead_letter_batch_item(h, env, i, p, e)
        if not items:
            reply.ack()
            return
        ctx = _CURRENT.set(env)
        try:
            try:
                result = h.fn(items, env) if h.arity == 2 else h.fn(items)
            except BaseException as e:  # StopIteration included: the handler's own, a failure
                _fail_inline(reply, e)
                return
            if type(result) is _CoroutineType:
                try:
                    yielded = result.send(None)
                except StopIteration as stop:  # the coroutine finished without suspending
                    result = stop.value
                except BaseException as e:
                    _fail_inline(reply, e)
                    return
                else:
                    self._suspend(h, token, reply, result, yielded)
                    return
            _settle(h, reply, result)
        finally:
            _CURRENT.reset(ctx)

    def _dead_letter_batch_item(self, h: _Handler, env: Any, index: int, payload: bytes, e: Exception) -> None:
        # The Rust batch API hands over payloads only; this records the bad one under a
        # fresh envelope on the batch's topic, with its raw bytes.
        _native_dead_letter(self, env.topic, payload, h.name, f"{type(e).__name__}: {e} (batch item {index})")

    def _suspend(self, h: _Handler, token: int, reply: Any, coro: Any, yielded: Any) -> None:
        loop = self._loop
        if loop is None:
            loop = _get_running_loop()
        if coro is None:
            task = asyncio.ensure_future(yielded, loop=loop)
        else:
            task = loop.create_task(_continue(coro, yielded))
        self._tasks[token] = task
        task.add_done_callback(functools.partial(self._task_done, h, token, reply))

    def _task_done(self, h: _Handler, token: int, reply: Any, task: "asyncio.Task[Any]") -> None:
        self._tasks.pop(token, None)
        if task.cancelled():
            reply.fail("the Python handler was cancelled")
            return
        e = task.exception()
        if e is not None:
            _fail(reply, e)
        else:
            _settle(h, reply, task.result())

    # -- publishing -----------------------------------------------------------------------

    async def publish(
        self,
        target: Any,
        payload: Any = _NOTHING,
        *,
        headers: Optional[Mapping[str, str]] = None,
        priority: Optional[int] = None,
        delay: Optional[float] = None,
        wait: bool = False,
        _session: Optional[str] = None,
    ) -> Any:
        """Publishes an event: a message object (``publish(UserCreated(id=7))``) or a topic and
        a payload (``publish("analytics.feature.request", {"x": 1})``; bytes go as they are,
        anything else as JSON). Returns once every matching subscription has queued it; raises
        :class:`QueueFull` naming the ones that refused. Published from a handler, it records
        the handled message as its cause and keeps its correlation id.

        ``delay``: publish after that many seconds (returns the message id). ``wait``: return
        once every matching handler finished, with a :class:`WaitReport`.
        """
        if type(target) is str and type(payload) is bytes and delay is None and not wait:
            # The common case, kept to one native call when the queues have room.
            if _get_running_loop() is not self._loop:
                self._use(_get_running_loop())
            token = self._native.publish(target, payload, _CURRENT.get(), headers, priority, None, None, _session)
            if token is None:
                return None
            return await self._wait(token)
        topic, body, type_name, spec = _message(target, payload)
        version = spec.version if spec is not None else None
        loop = _get_running_loop()
        if loop is not self._loop:
            self._use(loop)
        if delay is None and not wait:
            token = self._native.publish(topic, body, _CURRENT.get(), headers, priority, type_name, version, _session)
            if token is None:
                return None
            return await self._wait(token)
        pending, value = self._native.publish_special(
            topic, body, parent=_CURRENT.get(), headers=headers, priority=priority,
            type_name=type_name, type_version=version, session=_session, delay=delay, wait=wait,
        )
        if pending:
            value = await self._wait(value)
        if wait:
            handled, filtered, failures = value
            return WaitReport(handled, filtered, list(failures))
        return value

    async def send(
        self,
        target: Any,
        payload: Any = _NOTHING,
        *,
        returns: Any = _NOTHING,
        headers: Optional[Mapping[str, str]] = None,
        priority: Optional[int] = None,
        _session: Optional[str] = None,
    ) -> Any:
        """Sends a command to its one handler and returns the handler's result, decoded into
        the command's ``returns`` type (or ``returns=``; plain JSON otherwise). Raises
        :class:`NoHandler` at once when nobody handles it, :class:`HandlerFailed` /
        :class:`Rejected` when the handler failed or refused."""
        return await self._send(target, payload, None, returns, headers, priority, _session)

    async def request(
        self,
        target: Any,
        payload: Any = _NOTHING,
        *,
        timeout: float = 1.0,
        returns: Any = _NOTHING,
        headers: Optional[Mapping[str, str]] = None,
        priority: Optional[int] = None,
        _session: Optional[str] = None,
    ) -> Any:
        """:meth:`send` with a deadline: :class:`RequestTimeout` after ``timeout`` seconds
        (the handler's late reply is discarded)."""
        return await self._send(target, payload, timeout, returns, headers, priority, _session)

    async def _send(self, target: Any, payload: Any, timeout: Optional[float], returns: Any, headers: Any, priority: Any, session: Optional[str]) -> Any:
        topic, body, type_name, spec = _message(target, payload)
        loop = _get_running_loop()
        if loop is not self._loop:
            self._use(loop)
        pending, value = self._native.send(
            topic, body, parent=_CURRENT.get(), headers=headers, priority=priority,
            type_name=type_name, type_version=spec.version if spec is not None else None,
            session=session, timeout=timeout,
        )
        if pending:
            value = await self._wait(value)
        if returns is _NOTHING:
            returns = spec.returns if spec is not None else None
        return _decode_result(returns, value)

    # -- sessions, state, shutdown --------------------------------------------------------

    def session(self, session_id: str) -> "Session":
        """A session scope: ``async with bus.session("job-42") as s:``. Handlers registered
        through ``s`` see only the session's messages and are removed when it ends;
        ``s.publish`` / ``s.send`` tag messages with it."""
        return Session(self, session_id)

    async def idle(self, timeout: Optional[float] = None) -> None:
        """Waits until every accepted message is settled (handled or dead-lettered),
        including retries and messages handlers published meanwhile."""
        self._bind_if_running()
        fut = self._wait(self._native.idle())
        if timeout is None:
            await fut
        else:
            await asyncio.wait_for(fut, timeout)

    def pending(self) -> int:
        """Messages accepted and not yet settled."""
        return self._native.pending()

    def registry(self) -> list[dict[str, Any]]:
        """Every subscription and command handler with its settings and counters."""
        return json.loads(self._native.registry_json())

    def metrics(self) -> dict[str, Any]:
        """The bus's figures: per-subscription counters, depths, pending, dead letters."""
        return json.loads(self._native.metrics_json())

    def dead_letters(self) -> list[Any]:
        """The default in-memory dead-letter store, oldest first."""
        return self._native.dead_letters()

    async def shutdown(self, timeout: float = 5.0) -> ShutdownReport:
        """Stops intake (publishes and sends get :class:`ShuttingDown`), lets queued and
        running handlers finish for up to ``timeout`` seconds, then cancels the rest and
        reports them (dead-lettered in memory, returned to the transport otherwise).
        Idempotent: a second call returns the first call's report."""
        self._bind_if_running()
        pending, value = self._native.shutdown(timeout)
        drained, left, nacked = (await self._wait(value)) if pending else value
        return ShutdownReport(drained, list(left), list(nacked))

    async def __aenter__(self) -> "Bus":
        self._bind_if_running()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if not self._native.is_shutting_down():
            await self.shutdown()

    def close(self) -> None:
        """Detaches the bus from its event loop (shut it down first to drain it)."""
        if self._loop is not None:
            _remove_reader(self._loop, self._fd)
            self._loop = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None


def _native_dead_letter(bus: Bus, topic: str, payload: bytes, handler: str, error: str) -> None:
    bus._native.dead_letter_raw(topic, payload, handler, error)


def _decode_result(returns: Any, value: Optional[bytes]) -> Any:
    if value is None:
        return None
    try:
        if returns is None:
            return json.loads(value)
        return decoder(returns)(value)
    except Exception as e:
        raise DecodeFailed(f"cannot decode the reply as {getattr(returns, '__name__', returns)}: {e}") from e


class Session(_Registrar):
    """A session scope (see :meth:`Bus.session`)."""

    def __init__(self, bus: Bus, session_id: str) -> None:
        self._bus = bus
        self.id = session_id
        self._native: Any = None

    def _session_native(self) -> Any:
        if self._native is None:
            raise RuntimeError("the session has not started: use `async with bus.session(id) as s`")
        return self._native

    async def start(self) -> "Session":
        """Starts the session (publishes ``switchyard.session.started``)."""
        bus = self._bus
        loop = _get_running_loop()
        if loop is not bus._loop:
            bus._use(loop)
        pending, value = bus._native.session(self.id)
        self._native = (await bus._wait(value)) if pending else value
        return self

    async def end(self) -> None:
        """Removes the session's handlers and publishes ``switchyard.session.ended``."""
        if self._native is None:
            return
        token = self._native.end()
        if token is not None:
            await self._bus._wait(token)

    async def __aenter__(self) -> "Session":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.end()

    async def publish(self, target: Any, payload: Any = _NOTHING, **kwargs: Any) -> Any:
        """:meth:`Bus.publish`, tagged with this session."""
        return await self._bus.publish(target, payload, _session=self.id, **kwargs)

    async def send(self, target: Any, payload: Any = _NOTHING, **kwargs: Any) -> Any:
        """:meth:`Bus.send` in this session: the session's handler wins over the global one."""
        return await self._bus.send(target, payload, _session=self.id, **kwargs)

    async def request(self, target: Any, payload: Any = _NOTHING, **kwargs: Any) -> Any:
        """:meth:`Bus.request` in this session."""
        return await self._bus.request(target, payload, _session=self.id, **kwargs)
