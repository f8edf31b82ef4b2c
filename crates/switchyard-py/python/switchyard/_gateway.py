"""The gateway's WebSocket frames as Python sees them: its error kinds as the typed
exceptions, delivered messages as envelopes, payloads and results in and out."""

from __future__ import annotations

import base64
import datetime
import inspect
import json
import logging
from typing import Any, Callable, Mapping, Optional

from . import _switchyard as _native
from ._bus import _describe
from ._plan import _annotation
from ._codec import _is_pydantic, converter, decoder, encode, is_bytes_like
from .errors import (
    DecodeFailed,
    Forbidden,
    GatewayError,
    HandBack,
    HandlerFailed,
    InvalidTopic,
    NoHandler,
    Permanent,
    QueueFull,
    TooLarge,
    RateLimited,
    Reject,
    Rejected,
    RequestTimeout,
    Retry,
    ShuttingDown,
    SwitchyardError,
    TransportError,
    Unauthenticated,
    Unsupported,
)

log = logging.getLogger("switchyard")

# allow_nan=False: a frame must be JSON the node parses; NaN raises ValueError here instead.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


# -- errors ---------------------------------------------------------------------------------


def gateway_error(err: Mapping[str, Any], *, topic: Optional[str] = None, timeout: Optional[float] = None) -> SwitchyardError:
    """The typed exception for a gateway error object ``{"kind", "message"}``; every one
    carries the gateway's ``kind`` as ``gateway_kind``."""
    kind = str(err.get("kind", "internal"))
    msg = str(err.get("message", ""))
    e: SwitchyardError
    if kind == "no_handler":
        e = NoHandler(msg, topic=topic)
    elif kind == "timeout":
        e = RequestTimeout(msg, timeout=timeout)
    elif kind == "handler_failed":
        e = HandlerFailed(msg, error=msg, attempts=None)
    elif kind == "handler_rejected":
        e = Rejected(msg, reason=msg)
    elif kind == "forbidden":
        e = Forbidden(msg)
    elif kind == "unauthenticated":
        e = Unauthenticated(msg)
    elif kind == "invalid_topic":
        e = InvalidTopic(msg, kind=kind)
    elif kind == "queue_full":
        e = QueueFull(msg, subscriptions=[], delivered=0)
    elif kind == "shutting_down":
        e = ShuttingDown(msg)
    elif kind == "rate_limited":
        e = RateLimited(msg)
    elif kind == "too_large":
        e = TooLarge(msg, size=None, limit=None, limit_of="the node's limits.max_message_bytes")
    else:
        e = GatewayError(msg, kind=kind)
    e.gateway_kind = kind  # type: ignore[attr-defined]
    return e


def _closed(what: str = "") -> TransportError:
    return TransportError(f"the connection to the node is closed{what}", kind="closed")


def _unsupported(feature: str, what: str) -> Unsupported:
    return Unsupported(f"{what} is not available on a bus connected to a node (Bus.connect); use an in-process bus", feature=feature)


# -- messages -------------------------------------------------------------------------------


class RemoteEnvelope:
    """A message delivered by the node: the :class:`Envelope` attributes, read from the
    gateway's Message JSON."""

    __slots__ = ("message", "_payload")

    def __init__(self, message: dict[str, Any]) -> None:
        #: The Message JSON as the node sent it.
        self.message = message
        self._payload: Optional[bytes] = None

    id = property(lambda self: self.message.get("id"), doc="Message id (a ULID).")
    topic = property(lambda self: self.message.get("topic"), doc="Its topic.")
    kind = property(lambda self: self.message.get("kind"), doc="``event``, ``command``, ``request`` or ``reply``.")
    correlation_id = property(lambda self: self.message.get("correlation_id"), doc="Correlation id, kept across every hop.")
    causation_id = property(lambda self: self.message.get("causation_id"), doc="Id of the message that caused it.")
    attempt = property(lambda self: self.message.get("attempt", 1), doc="Delivery attempt, 1-based.")
    priority = property(lambda self: self.message.get("priority", 128), doc="Priority, 0-255.")
    type_name = property(lambda self: self.message.get("type_name"), doc="The payload's type name, if given.")
    type_version = property(lambda self: self.message.get("type_version", 1), doc="The payload's schema version (1 unless set).")
    source = property(lambda self: self.message.get("source"), doc="The publishing component, if given.")
    content_type = property(lambda self: self.message.get("content_type"), doc="The payload's content type.")

    @property
    def headers(self) -> dict[str, str]:
        """Its headers (``principal`` is set by the node)."""
        return dict(self.message.get("headers") or {})

    def header(self, name: str) -> Optional[str]:
        """One header, or ``None``."""
        return (self.message.get("headers") or {}).get(name)

    @property
    def session_id(self) -> Optional[str]:
        """The session it belongs to (header ``session-id``), if any."""
        return self.header("session-id")

    @property
    def timestamp(self) -> float:
        """When it was created, in seconds since the epoch."""
        ts = self.message.get("timestamp")
        if not ts:
            return 0.0
        return datetime.datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()

    @property
    def payload(self) -> bytes:
        """The payload bytes (compact JSON for a JSON payload)."""
        if self._payload is None:
            m = self.message
            if "payload" in m:
                self._payload = _dumps(m["payload"]).encode()
            elif "payload_base64" in m:
                self._payload = base64.b64decode(m["payload_base64"])
            else:
                self._payload = b"null"
        return self._payload

    def __repr__(self) -> str:
        return f"RemoteEnvelope(id={self.id!r}, topic={self.topic!r}, kind={self.kind!r}, correlation_id={self.correlation_id!r})"


def _value_decoder(tp: Any) -> Callable[[RemoteEnvelope], Any]:
    """A function from a delivered message to the handler's argument of type ``tp``: JSON
    payloads are converted from the value the frame already parsed (no second parse)."""
    if tp is None or tp is inspect.Parameter.empty or tp is _native.Envelope or tp is RemoteEnvelope:
        return lambda env: env
    if tp is bytes:
        return lambda env: env.payload
    from_bytes = decoder(tp)
    if _is_pydantic(tp):
        from_value: Callable[[Any], Any] = tp.model_validate
    elif tp is Any or tp is dict or tp is list:
        from_value = lambda v: v  # noqa: E731
    else:
        from_value = converter(tp)

    def decode(env: RemoteEnvelope) -> Any:
        m = env.message
        if "payload" in m:
            return from_value(m["payload"])
        return from_bytes(env.payload)

    return decode


def _first_param_type(fn: Callable[..., Any], tp: Any) -> tuple[Any, int]:
    """(the type the first parameter wants, or ``tp`` when given; how many arguments)."""
    try:
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    except (TypeError, ValueError):
        params, varargs = [], True
    arity = 2 if varargs else min(len(params), 2)
    if tp is None and params:
        tp = _annotation(fn, params[0])
    return tp, arity


def _payload_fields(body: bytes, raw_bytes: bool) -> str:
    """The ``payload`` / ``payload_base64`` part of a frame, starting with a comma."""
    if raw_bytes:
        return ',"payload_base64":"' + base64.b64encode(body).decode() + '","content_type":"application/octet-stream"'
    return ',"payload":' + body.decode()


def _reply_value(f: Mapping[str, Any], returns: Any) -> Any:
    try:
        if "payload" in f:
            value = f["payload"]
            if returns is None or value is None:
                return value
            if _is_pydantic(returns):
                return returns.model_validate(value)
            return converter(returns)(value)
        if "payload_base64" in f:
            raw = base64.b64decode(f["payload_base64"])
            return raw if returns is None or returns is bytes else decoder(returns)(raw)
        return None
    except Exception as e:
        raise DecodeFailed(f"cannot decode the reply as {getattr(returns, '__name__', returns)}: {e}") from e


def _delay_ms(after: Any) -> Optional[int]:
    """``after`` seconds as whole milliseconds; None without one, or for an ``after`` changed
    to something else after Retry/HandBack checked it."""
    if after is None:
        return None
    try:
        return max(0, int(after * 1000))
    except (TypeError, ValueError, OverflowError):
        return None


def _nack_frame(delivery: str, *, hand_back: bool = False, reject: bool = False, after: Any = None, error: Optional[str] = None) -> str:
    """A ``nack`` of ``delivery`` (docs/gateway.md): ``error`` is why (the dead letter keeps it)."""
    frame = '{"op":"nack","delivery":' + delivery
    if hand_back:
        frame += ',"hand_back":true'
    if reject:
        frame += ',"reject":true'
    delay_ms = _delay_ms(after)
    if delay_ms is not None:
        frame += ',"delay_ms":' + str(delay_ms)
    if error is not None:
        frame += ',"error":' + _text(error)
    return frame + "}"


def _settle_event(delivery: str, result: Any, exc: Optional[BaseException]) -> str:
    if exc is None:
        return '{"op":"ack","delivery":' + delivery + "}"
    if isinstance(exc, HandBack):
        # The bus's hand-back (not a failed attempt): back to the transport, delivered again
        # after ``after``; in memory it has nowhere to go back to and fails for good at once.
        return _nack_frame(delivery, hand_back=True, after=exc.after, error=str(exc.reason))
    if isinstance(exc, Reject):
        return _nack_frame(delivery, reject=True, error=str(exc.reason))
    if isinstance(exc, Permanent):
        log.warning("switchyard handler failed for good (dead-lettered):\n%s", _describe(exc))
        return _nack_frame(delivery, reject=True, error=_describe(exc))
    if isinstance(exc, Retry):
        return _nack_frame(delivery, after=exc.after)
    log.warning("switchyard handler failed (nacked, the node retries it):\n%s", _describe(exc))
    return _nack_frame(delivery, error=_describe(exc))


def _text(value: Any) -> str:
    """``value`` as a JSON string whose frame is UTF-8 (a lone surrogate becomes ``?``)."""
    return _dumps(str(value).encode("utf-8", "replace").decode("utf-8"))


def _settle_command(call: str, result: Any, exc: Optional[BaseException]) -> str:
    if exc is None:
        try:
            if result is None:
                return '{"op":"result","call":' + call + ',"ok":true}'
            body = encode(result)
            return '{"op":"result","call":' + call + ',"ok":true' + _payload_fields(body, is_bytes_like(result)) + "}"
        except Exception as e:
            exc = Permanent(f"the handler's result could not be encoded: {_describe(e)}")
    if isinstance(exc, HandBack):
        # The bus's hand-back (not a failed attempt): delivered again after ``after`` when the
        # command came from a transport delivery; otherwise it fails for good at once.
        frame = '{"op":"result","call":' + call + ',"ok":false,"hand_back":true,"error":' + _text(exc.reason)
        delay_ms = _delay_ms(exc.after)
        if delay_ms is not None:
            frame += ',"delay_ms":' + str(delay_ms)
        return frame + "}"
    if isinstance(exc, Reject):
        return '{"op":"result","call":' + call + ',"ok":false,"reject":true,"error":' + _text(exc.reason) + "}"
    if isinstance(exc, Permanent):
        return '{"op":"result","call":' + call + ',"ok":false,"reject":true,"error":' + _text(_describe(exc)) + "}"
    return '{"op":"result","call":' + call + ',"ok":false,"error":' + _text(_describe(exc)) + "}"
