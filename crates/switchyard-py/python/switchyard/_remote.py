"""A bus connected to a running ``switchyard serve`` node over its WebSocket gateway.

The node's bus does the routing, queueing, retries and dead letters; this connection
subscribes to it (manual ack: a handler that returns acks, one that raises nacks), serves
command topics for it (remote handlers answering ``result``), and publishes and sends
through it. The wire protocol is JSON text frames (the gateway's WebSocket ops), spoken with
the ``websockets`` package on the caller's asyncio loop.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import itertools
import json
import urllib.parse
from typing import Any, Callable, Mapping, Optional

from ._bus import _CURRENT, ShutdownReport, _CoroutineType, _message, _resume, _topic_text
from ._codec import _NOTHING, is_bytes_like, spec_of
from ._gateway import (
    RemoteEnvelope,
    _closed,
    _dumps,
    _first_param_type,
    _payload_fields,
    _reply_value,
    _settle_command,
    _settle_event,
    _unsupported,
    _value_decoder,
    gateway_error,
    log,
)
from .errors import EncodeFailed, GatewayError, Permanent, ShuttingDown, SwitchyardError, TransportError, Unsupported

try:  # websockets is a dependency of the package; imported lazily so `Bus()` works without it
    from websockets.asyncio.client import connect as _ws_connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
except ImportError:  # pragma: no cover - reported by connect()
    _ws_connect = None  # type: ignore[assignment]

# -- handlers and subscriptions -------------------------------------------------------------


class _RemoteHandler:
    __slots__ = ("fn", "arg", "arity", "command", "name")

    def __init__(self, fn: Callable[..., Any], tp: Any, command: bool, name: str) -> None:
        tp, self.arity = _first_param_type(fn, tp)
        self.fn = fn
        self.arg = _value_decoder(tp)
        self.command = command
        self.name = name


class RemoteSubscription:
    """A handler registered on the node (``@bus.on`` / ``@bus.handle`` of a connected bus).
    Calling it calls the handler function."""

    def __init__(self, bus: "ConnectedBus", name: str, pattern: str, fn: Callable[..., Any], registered: "asyncio.Future[Any]", command: bool) -> None:
        self._bus = bus
        self.name = name
        self.pattern = pattern
        self.fn = fn
        #: The node's subscription id (``None`` for a command handler, or before the node answered).
        self.id: Optional[str] = None
        self._registered = registered
        self._command = command
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    async def ready(self) -> "RemoteSubscription":
        """Waits until the node registered it; raises what the node refused it with
        (:class:`Forbidden`, :class:`DuplicateHandler`-like :class:`GatewayError`, ...)."""
        await asyncio.shield(self._registered)
        return self

    def unsubscribe(self) -> bool:
        """Stops handling: deliveries not yet acked go back to the node (to another member of
        the group, or dead-lettered); a command topic gets ``no_handler`` again."""
        return self._bus._unregister(self)

    def stats(self) -> dict[str, Any]:
        """Not available on a connected bus (the node's ``/v1/subscriptions`` has them)."""
        raise _unsupported("stats", "Subscription.stats()")

    def __repr__(self) -> str:
        return f"RemoteSubscription(name={self.name!r}, pattern={self.pattern!r})"


_ON_UNSUPPORTED = ("queue_capacity", "overflow", "overflow_timeout", "max_attempts", "retry_delay", "priority", "ordering_header", "headers", "filter")


class ConnectedBus:
    """A bus connected to a ``switchyard serve`` node (made by :meth:`Bus.connect`).

    The same API as :class:`Bus` where the gateway offers it: ``publish``, ``on`` (with
    ``group=``), ``handle``, ``send``, ``request``, ``shutdown``, ``async with``. What only the
    in-process bus has (sessions, batch handlers, delays, per-subscription queue settings,
    the registry and dead letters) raises :class:`Unsupported`.
    """

    def __init__(self, ws: Any, url: str) -> None:
        self._ws = ws
        #: The WebSocket URL it is connected to.
        self.url = url
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._calls: dict[int, tuple[asyncio.Future[Any], Optional[str], Optional[float]]] = {}
        self._subs: dict[str, _RemoteHandler] = {}
        self._commands: dict[str, _RemoteHandler] = {}
        self._early: dict[str, list[dict[str, Any]]] = {}
        self._gone: set[str] = set()
        self._pending: list[asyncio.Future[Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._held: list[str] = []
        self._left: list[str] = []
        self._stopping = False
        self._closed: Optional[BaseException] = None
        self._shutdown: Optional[asyncio.Future[ShutdownReport]] = None
        #: Deliveries the node dropped for this connection (``drop_oldest``), as it reported.
        self.dropped = 0
        # Frames nobody awaits (acks, results, unsubscribes) go out through one writer task,
        # so the reader never waits on the socket: a reader blocked on a full send buffer
        # would stop reading the node's answers, and the node, whose answer buffer would fill,
        # would stop reading this connection's frames.
        self._out: collections.deque[str] = collections.deque()
        self._out_ready = asyncio.Event()
        self._out_idle = asyncio.Event()
        self._out_idle.set()
        self._writer = self._loop.create_task(self._write())
        self._reader = self._loop.create_task(self._read())

    # -- the connection ---------------------------------------------------------------------

    async def _read(self) -> None:
        ws = self._ws
        reason: BaseException = _closed()
        try:
            async for text in ws:
                f = json.loads(text)
                op = f.get("op")
                if op == "message":
                    frame = self._on_message(f)
                elif op == "command":
                    frame = self._on_command(f)
                elif op == "error":
                    self._on_error(f)
                    continue
                elif op == "dropped":
                    self.dropped += int(f.get("count", 0))
                    log.warning("switchyard node dropped %s deliveries for this connection (slow client)", f.get("count"))
                    continue
                else:
                    self._on_answer(f)
                    continue
                if frame is not None:
                    self._post(frame)
        except ConnectionClosed as e:
            reason = _closed(f" ({e})")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a frame that is not JSON, or a handler bug in dispatch
            log.exception("switchyard connection reader failed")
            reason = _closed(f" ({type(e).__name__}: {e})")
        finally:
            self._on_closed(reason)

    def _on_closed(self, reason: BaseException) -> None:
        if self._closed is None:
            self._closed = reason
        calls, self._calls = self._calls, {}
        for fut, _, _ in calls.values():
            if not fut.done():
                fut.set_exception(self._closed_error())
        for fut in self._pending:
            if not fut.done():
                fut.set_exception(self._closed_error())

    def _closed_error(self) -> TransportError:
        """A fresh ``TransportError(kind="closed")`` with the reason the connection closed
        for (the node's close code and reason, e.g. 1009 for a frame over
        ``ws.max_frame_bytes``), so every later call says why."""
        if isinstance(self._closed, TransportError):
            return TransportError(str(self._closed), kind="closed")
        return _closed()

    def _on_answer(self, f: dict[str, Any]) -> None:
        entry = self._calls.pop(f.get("id"), None)  # type: ignore[arg-type]
        if entry is not None and not entry[0].done():
            entry[0].set_result(f)

    def _on_error(self, f: dict[str, Any]) -> None:
        entry = self._calls.pop(f.get("id"), None)  # type: ignore[arg-type]
        err = f.get("error") or {}
        if entry is None:
            log.warning("switchyard node: %s: %s", err.get("kind"), err.get("message"))
            return
        fut, topic, timeout = entry
        if not fut.done():
            fut.set_exception(gateway_error(err, topic=topic, timeout=timeout))

    def _check_open(self) -> None:
        if self._stopping:
            raise ShuttingDown("the connected bus is shutting down (or shut down)")
        if self._closed is not None:
            raise self._closed_error()

    async def _call(self, head: dict[str, Any], tail: str = "", *, topic: Optional[str] = None, timeout: Optional[float] = None) -> dict[str, Any]:
        """Sends one op and waits for its answer (or its error op, raised typed)."""
        if self._closed is not None:
            raise self._closed_error()
        cid = next(self._ids)
        head["id"] = cid
        # A frame the node could not parse would be answered by an error op without this
        # id, leaving the call waiting forever: what cannot be JSON (NaN, an object json
        # cannot hold, a lone surrogate) raises here, before anything is sent.
        try:
            text = _dumps(head)
            if tail:
                text = text[:-1] + tail + "}"
            data = text.encode()
        except (TypeError, ValueError) as e:
            raise EncodeFailed(f"cannot encode the {head.get('op')} frame: {e}") from e
        fut = self._loop.create_future()
        self._calls[cid] = (fut, topic, timeout)
        try:
            await self._ws.send(data, text=True)
        except ConnectionClosed as e:
            self._calls.pop(cid, None)
            # The reader may not have seen the close yet: the send's error has the reason.
            raise (self._closed_error() if self._closed is not None else _closed(f" ({e})")) from None
        except BaseException:
            self._calls.pop(cid, None)
            raise
        try:
            return await fut
        finally:
            self._calls.pop(cid, None)

    def _post(self, frame: str) -> None:
        """Queues a frame nobody awaits (acks, results, unsubscribes) for the writer."""
        if self._closed is None:
            self._out.append(frame)
            self._out_ready.set()
            self._out_idle.clear()

    async def _write(self) -> None:
        out, ready, ws = self._out, self._out_ready, self._ws
        try:
            while True:
                while out:
                    frame = out.popleft()
                    try:
                        data = frame.encode()
                    except UnicodeEncodeError:  # the settle frames replace what is not UTF-8
                        log.error("switchyard: dropped a frame that is not UTF-8: %r", frame[:200])
                        continue
                    await ws.send(data, text=True)
                ready.clear()
                self._out_idle.set()
                await ready.wait()
        except ConnectionClosed:
            out.clear()
        finally:
            self._out_idle.set()

    async def _flush(self, timeout: float) -> None:
        """Waits until the writer sent what is queued (or ended: the connection closed)."""
        if self._writer.done():
            return
        idle = self._loop.create_task(self._out_idle.wait())
        await asyncio.wait({idle, self._writer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()

    async def ready(self) -> None:
        """Waits until the node registered every handler added so far; raises the first
        refusal (:class:`Forbidden`, :class:`GatewayError` ``bad_request`` for a topic another
        connection already handles, ...)."""
        pending, self._pending = self._pending, []
        first: Optional[BaseException] = None
        for fut in pending:
            try:
                await asyncio.shield(fut)
            except SwitchyardError as e:
                first = first or e
        if first is not None:
            raise first

    # -- handlers ---------------------------------------------------------------------------

    def _target(self, target: Any, kind: str) -> tuple[str, Any]:
        if isinstance(target, str):
            return _topic_text(target), None
        spec = spec_of(target)
        if spec is None:
            raise TypeError(f"{target!r} is neither a topic nor a message class (decorate it with @switchyard.event / @switchyard.command)")
        if kind == "command" and spec.kind != "command":
            raise TypeError(f"{spec.name} is an event; handle() takes commands (@switchyard.command)")
        return spec.topic, target

    def on(
        self,
        target: Any,
        fn: Optional[Callable[..., Any]] = None,
        *,
        group: Optional[str] = None,
        name: Optional[str] = None,
        type: Any = None,
        workers: Optional[int] = None,
        **options: Any,
    ) -> Any:
        """Subscribes ``fn`` (or the decorated function) on the node to a pattern or a message
        class's topic, with manual ack: a handler that returns acks the delivery, one that
        raises nacks it (the node retries it by its policy, then dead-letters it; a
        :class:`Retry` ``after`` is the nack's delay; a :class:`HandBack` is the node's
        hand-back, not an attempt: back to the transport on the log or NATS, dead-lettered at
        once on the memory transport). ``group``: connections (Python, or any
        WebSocket client) subscribed with the same group share the messages; without it, the
        connection sees what is published while it is subscribed. ``workers``: deliveries
        handled at once (default 1: one at a time, in order). Registration is sent at once;
        publish/send/request and :meth:`ready` wait for it and raise a refusal."""
        for k, v in options.items():
            if k not in _ON_UNSUPPORTED:
                raise TypeError(f"on() got an unexpected keyword argument {k!r}")
            if v is not None:
                raise _unsupported(k, f"on(..., {k}=)")
        pattern, tp = self._target(target, "event")
        type = type if type is not None else tp
        if workers is not None and not 1 <= workers <= 1024:
            raise ValueError("workers must be 1 to 1024 on a connected bus (the node's max_in_flight)")

        def register(f: Callable[..., Any]) -> RemoteSubscription:
            self._check_open()
            label = name or getattr(f, "__qualname__", "handler")
            h = _RemoteHandler(f, type, False, label)
            head: dict[str, Any] = {"op": "subscribe", "pattern": pattern, "ack": "manual", "max_in_flight": workers or 1}
            if group is not None:
                head["group"] = group
            registered = self._loop.create_future()
            sub = RemoteSubscription(self, label, pattern, f, registered, False)

            async def go() -> None:
                try:
                    answer = await self._call(head, topic=pattern)
                except BaseException as e:
                    registered.set_exception(e)
                    return
                sid = answer["subscription"]
                sub.id = sid
                self._subs[sid] = h
                for early in self._early.pop(sid, []):
                    frame = self._on_message(early)
                    if frame is not None:
                        self._post(frame)
                registered.set_result(sid)

            self._loop.create_task(go())
            self._pending.append(registered)
            registered.add_done_callback(_consume_exception)
            return sub

        return register(fn) if fn is not None else register

    def handle(
        self,
        target: Any,
        fn: Optional[Callable[..., Any]] = None,
        *,
        name: Optional[str] = None,
        type: Any = None,
        workers: Optional[int] = None,
        **options: Any,
    ) -> Any:
        """Registers the connection as the one handler of a command topic on the node:
        commands sent from Rust, over HTTP or by another client arrive here. The return value
        is the sender's result; :class:`Reject` (or :class:`Permanent`) refuses the command
        for good (the sender gets :class:`Rejected`); any other exception is a failed attempt
        the node retries, then the sender gets :class:`HandlerFailed` with the exception's
        text and traceback. ``workers``: commands at once (default 1)."""
        for k, v in options.items():
            if k not in ("queue_capacity", "overflow", "overflow_timeout", "max_attempts", "retry_delay"):
                raise TypeError(f"handle() got an unexpected keyword argument {k!r}")
            if v is not None:
                raise _unsupported(k, f"handle(..., {k}=)")
        topic, tp = self._target(target, "command")
        type = type if type is not None else tp
        if workers is not None and not 1 <= workers <= 1024:
            raise ValueError("workers must be 1 to 1024 on a connected bus (the node's concurrency)")

        def register(f: Callable[..., Any]) -> RemoteSubscription:
            self._check_open()
            if topic in self._commands:
                raise GatewayError(f"this connection already handles {topic}", kind="bad_request")
            h = _RemoteHandler(f, type, True, name or topic)
            self._commands[topic] = h
            registered = self._loop.create_future()
            sub = RemoteSubscription(self, name or topic, topic, f, registered, True)

            async def go() -> None:
                try:
                    await self._call({"op": "handle", "topic": topic, "concurrency": workers or 1}, topic=topic)
                except BaseException as e:
                    if self._commands.get(topic) is h:
                        del self._commands[topic]
                    registered.set_exception(e)
                    return
                registered.set_result(topic)

            self._loop.create_task(go())
            self._pending.append(registered)
            registered.add_done_callback(_consume_exception)
            return sub

        return register(fn) if fn is not None else register

    def _unregister(self, sub: RemoteSubscription) -> bool:
        if self._closed is not None:
            return False
        if sub._command:
            if self._commands.pop(sub.pattern, None) is None:
                return False
            self._post(_dumps({"op": "unhandle", "topic": sub.pattern}))
            return True
        if sub.id is None or self._subs.pop(sub.id, None) is None:
            return False
        self._gone.add(sub.id)
        self._post(_dumps({"op": "unsubscribe", "subscription": sub.id}))
        return True

    def on_batch(self, *args: Any, **kwargs: Any) -> Any:
        """Not available on a connected bus."""
        raise _unsupported("on_batch", "on_batch()")

    def _on_message(self, f: dict[str, Any]) -> Optional[str]:
        sid = f.get("subscription")
        h = self._subs.get(sid)  # type: ignore[arg-type]
        if h is None:
            if sid not in self._gone:
                # The delivery overtook the `subscribed` answer (they are separate buffers).
                self._early.setdefault(sid, []).append(f)  # type: ignore[arg-type]
            return None
        delivery = _dumps(f["delivery"])
        if self._stopping:
            self._held.append(f["message"].get("id"))
            return None
        return self._invoke(h, RemoteEnvelope(f["message"]), functools.partial(_settle_event, delivery))

    def _on_command(self, f: dict[str, Any]) -> Optional[str]:
        call = _dumps(f["call"])
        env = RemoteEnvelope(f["message"])
        h = self._commands.get(env.topic)
        if h is None:
            return '{"op":"result","call":' + call + ',"ok":false,"reject":true,"error":"no Python handler for this topic on the connection"}'
        if self._stopping:
            self._held.append(env.id)
            return None
        return self._invoke(h, env, functools.partial(_settle_command, call))

    def _invoke(self, h: _RemoteHandler, env: RemoteEnvelope, settle: Callable[[Any, Optional[BaseException]], str]) -> Optional[str]:
        """Runs the handler's first step here; a handler that suspends continues as a Task,
        which sends its ack/result when it ends. Returns the frame to send now, if any."""
        try:
            arg = h.arg(env)
        except Exception as e:
            return settle(None, Permanent(f"the payload did not decode: {type(e).__name__}: {e}"))
        token = _CURRENT.set(env)
        try:
            try:
                arity = h.arity
                result = h.fn(arg, env) if arity == 2 else (h.fn(arg) if arity == 1 else h.fn())
                if type(result) is _CoroutineType:
                    yielded = result.send(None)
                    self._spawn(self._finish(_resume(result, yielded), env, settle))
                    return None
                if inspect.isawaitable(result):
                    self._spawn(self._finish(result, env, settle))
                    return None
            except StopIteration as stop:
                result = stop.value
            except BaseException as e:
                return settle(None, e)
            return settle(result, None)
        finally:
            _CURRENT.reset(token)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, awaitable: Any, env: RemoteEnvelope, settle: Callable[[Any, Optional[BaseException]], str]) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            # Shutdown past its deadline: not acked, so the node hands it on when the
            # connection closes (another group member, or its dead letters).
            self._left.append(env.id)
            raise
        except BaseException as e:
            frame = settle(None, e)
        else:
            frame = settle(result, None)
        self._post(frame)

    # -- publishing and sending -------------------------------------------------------------

    def _context_fields(self, head: dict[str, Any], correlation_id: Optional[str]) -> None:
        parent = _CURRENT.get()
        if correlation_id is not None:
            head["correlation_id"] = correlation_id
        elif parent is not None:
            head["correlation_id"] = parent.correlation_id
        if parent is not None:
            head["causation_id"] = parent.id
            tp = parent.header("traceparent")
            if tp:
                head["traceparent"] = tp

    def _head(self, op: str, target: Any, payload: Any, headers: Optional[Mapping[str, str]], priority: Optional[int], correlation_id: Optional[str]) -> tuple[dict[str, Any], str, str, Any]:
        topic, body, type_name, spec = _message(target, payload)
        head: dict[str, Any] = {"op": op, "topic": topic}
        if spec is not None:
            # The class's name and `version=`, as the in-process bus sets them: the node's
            # contracts check and upcast by them.
            head["type_name"] = type_name
            head["type_version"] = spec.version
        if headers:
            head["headers"] = dict(headers)
        if priority is not None:
            head["priority"] = priority
        self._context_fields(head, correlation_id)
        # The same bytes-like test as `encode`: what it passed through as bytes goes base64.
        try:
            tail = _payload_fields(body, is_bytes_like(payload))
        except ValueError as e:  # a body that is not UTF-8 JSON text
            raise EncodeFailed(f"cannot encode the message: {e}") from e
        return head, tail, topic, spec

    async def publish(
        self,
        target: Any,
        payload: Any = _NOTHING,
        *,
        headers: Optional[Mapping[str, str]] = None,
        priority: Optional[int] = None,
        correlation_id: Optional[str] = None,
        delay: Optional[float] = None,
        wait: bool = False,
    ) -> str:
        """Publishes an event on the node (as :meth:`Bus.publish`); returns its message id
        once the node's matching subscriptions queued it (on the log or NATS: once stored).
        ``correlation_id`` overrides the one inherited from the handled message."""
        if delay is not None:
            raise _unsupported("delay", "publish(..., delay=)")
        if wait:
            raise _unsupported("wait", "publish(..., wait=True)")
        self._check_open()
        if self._pending:
            await self.ready()
        head, tail, topic, _ = self._head("publish", target, payload, headers, priority, correlation_id)
        answer = await self._call(head, tail, topic=topic)
        return answer.get("message_id")  # type: ignore[return-value]

    async def send(
        self,
        target: Any,
        payload: Any = _NOTHING,
        *,
        returns: Any = _NOTHING,
        headers: Optional[Mapping[str, str]] = None,
        priority: Optional[int] = None,
        correlation_id: Optional[str] = None,
    ) -> Any:
        """Sends a command to its one handler on the node (Rust, a remote handler on any
        connection, ...) and returns its result, as :meth:`Bus.send`. The node's
        ``limits.send_timeout_ms`` bounds the wait."""
        return await self._send("send", target, payload, None, returns, headers, priority, correlation_id)

    async def request(
        self,
        target: Any,
        payload: Any = _NOTHING,
        *,
        timeout: float = 1.0,
        returns: Any = _NOTHING,
        headers: Optional[Mapping[str, str]] = None,
        priority: Optional[int] = None,
        correlation_id: Optional[str] = None,
    ) -> Any:
        """:meth:`send` with a deadline: :class:`RequestTimeout` after ``timeout`` seconds
        (at most the node's ``limits.max_request_timeout_ms``)."""
        return await self._send("request", target, payload, timeout, returns, headers, priority, correlation_id)

    async def _send(self, op: str, target: Any, payload: Any, timeout: Optional[float], returns: Any, headers: Any, priority: Any, correlation_id: Optional[str]) -> Any:
        self._check_open()
        if self._pending:
            await self.ready()
        head, tail, topic, spec = self._head(op, target, payload, headers, priority, correlation_id)
        if timeout is not None:
            head["timeout_ms"] = max(1, int(round(timeout * 1000)))
        answer = await self._call(head, tail, topic=topic, timeout=timeout)
        if returns is _NOTHING:
            returns = spec.returns if spec is not None else None
        return _reply_value(answer, returns)

    # -- what only the in-process bus has ---------------------------------------------------

    def session(self, session_id: str) -> Any:
        """Not available on a connected bus."""
        raise _unsupported("session", "session()")

    async def idle(self, timeout: Optional[float] = None) -> None:
        """Not available on a connected bus."""
        raise _unsupported("idle", "idle()")

    def pending(self) -> int:
        """Not available on a connected bus."""
        raise _unsupported("pending", "pending()")

    def registry(self) -> list[dict[str, Any]]:
        """Not available on a connected bus (the node's ``/v1/subscriptions`` has it)."""
        raise _unsupported("registry", "registry()")

    def metrics(self) -> dict[str, Any]:
        """Not available on a connected bus (the node's ``/metrics`` and ``/v1/stats``)."""
        raise _unsupported("metrics", "metrics()")

    def dead_letters(self) -> list[Any]:
        """Not available on a connected bus (the node's ``/v1/dlq`` has them)."""
        raise _unsupported("dead_letters", "dead_letters()")

    # -- shutdown ---------------------------------------------------------------------------

    async def shutdown(self, timeout: float = 5.0) -> ShutdownReport:
        """Stops intake (publishes and sends raise :class:`ShuttingDown`; deliveries that
        arrive are left unacked), lets running handlers and calls finish for up to
        ``timeout`` seconds, cancels the rest, and closes the connection. What was not
        handled goes back to the node (to another group member, or dead-lettered; commands'
        senders get ``handler_failed`` at once): ``report.nacked`` lists those message ids.
        Idempotent: a second call returns the first call's report."""
        if self._shutdown is None:
            self._stopping = True  # intake stops at once, before the drain task runs
            self._shutdown = self._loop.create_task(self._do_shutdown(timeout))
        return await asyncio.shield(self._shutdown)

    async def _do_shutdown(self, timeout: float) -> ShutdownReport:
        self._stopping = True
        handlers = set(self._tasks)
        running: set[Any] = handlers | {fut for fut, _, _ in self._calls.values()}
        drained = 0
        if running:
            done, rest = await asyncio.wait(running, timeout=timeout)
            drained = len(done & handlers)
            for t in rest:
                t.cancel()
            if rest:
                await asyncio.wait(rest, timeout=1.0)
        await self._flush(5.0)  # the drained handlers' acks go out first
        try:
            await self._ws.close()
        except Exception:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._reader.cancel()
        self._writer.cancel()
        self._on_closed(ShuttingDown("shut down"))
        return ShutdownReport(drained, [], [i for i in self._left + self._held if i])

    async def __aenter__(self) -> "ConnectedBus":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.shutdown()

    def close(self) -> None:
        """Closes the connection without draining (prefer ``await shutdown()``)."""
        if self._closed is None:
            self._stopping = True
            self._loop.create_task(self._ws.close())


def _consume_exception(fut: "asyncio.Future[Any]") -> None:
    # A refused registration is raised by ready()/publish/send; this keeps asyncio from
    # also logging it as never retrieved.
    if not fut.cancelled():
        fut.exception()


def _ws_url(url: str) -> str:
    p = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(p.scheme)
    if scheme is None or not p.netloc:
        raise ValueError(f"not a node URL: {url!r} (expected http://host:port, or ws://host:port/v1/ws)")
    path = p.path if p.path not in ("", "/") else "/v1/ws"
    return urllib.parse.urlunsplit((scheme, p.netloc, path, p.query, ""))


async def connect(url: str, token: Optional[str] = None, *, open_timeout: float = 10.0, max_frame_bytes: int = 16 * 1024 * 1024) -> ConnectedBus:
    """Opens a connection to a node (see :meth:`Bus.connect`)."""
    if _ws_connect is None:
        raise Unsupported("Bus.connect needs the `websockets` package (pip install websockets)", feature="connect")
    ws_url = _ws_url(url)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        ws = await _ws_connect(
            ws_url,
            additional_headers=headers,
            open_timeout=open_timeout,
            compression=None,
            max_size=max_frame_bytes,
            proxy=None,
        )
    except InvalidStatus as e:
        status = e.response.status_code
        try:
            err = json.loads(e.response.body or b"{}").get("error") or {}
        except ValueError:
            err = {}
        if not err:
            err = {"kind": "unauthenticated" if status == 401 else "internal", "message": f"HTTP {status}"}
        raise gateway_error(err) from None
    except (OSError, asyncio.TimeoutError, InvalidHandshake) as e:
        raise TransportError(f"cannot connect to the node at {ws_url}: {e}", kind="unavailable") from e
    return ConnectedBus(ws, ws_url)
