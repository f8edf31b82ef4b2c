"""The exceptions switchyard raises, and the ones a handler raises to steer the bus.

Every error the bus reports is a :class:`SwitchyardError`; its subclasses mirror the Rust
error enums (``PublishError``, ``SendError``, ``SubscribeError``) and carry their fields as
attributes. A class that can come from several operations inherits from each, so
``except PublishError`` and ``except SendError`` both catch :class:`ShuttingDown`.
"""

from __future__ import annotations

import math
from typing import Any, Optional


class SwitchyardError(Exception):
    """Base class of every switchyard error. ``message`` is the Rust error's text."""

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in fields.items():
            setattr(self, key, value)


class PublishError(SwitchyardError):
    """``publish`` failed; nothing was delivered unless the subclass says so."""


class SendError(SwitchyardError):
    """``send`` / ``request`` failed, or the command's handler failed."""


class SubscribeError(SwitchyardError):
    """Registering a subscription or command handler failed."""


class InvalidTopic(PublishError, SendError, SubscribeError, ValueError):
    """The topic or pattern is not valid (``kind`` names the rule broken)."""

    kind: str


class EncodeFailed(PublishError, SendError, TypeError):
    """The message could not be encoded as JSON."""


class DecodeFailed(SendError):
    """A payload did not decode into the expected type: the command, in its handler (the
    command is dead-lettered with its raw bytes), or the reply, at the sender."""


class QueueFull(PublishError, SendError):
    """Queues were full: ``subscriptions`` names those that refused, ``delivered`` says how
    many other subscriptions accepted the message."""

    subscriptions: list[str]
    delivered: int


class ShuttingDown(PublishError, SendError, SubscribeError):
    """The bus (or the session) is shutting down and accepts no new work."""


class TooLarge(PublishError, SendError, ValueError):
    """The message is larger than the bus or its transport accepts (``size`` and ``limit`` in
    bytes, ``limit_of`` names whose limit: the bus's ``max_message_bytes``, the log's
    ``max_record_bytes``, the NATS server's ``max_payload``, or the node's
    ``limits.max_message_bytes``); nothing was delivered."""

    size: Optional[int]
    limit: Optional[int]
    limit_of: Optional[str]


class Refused(PublishError):
    """A publish hook or a layer rule refused the message."""


class NoHandler(SendError):
    """No handler is registered for the command's ``topic``."""

    topic: str


class Rejected(SendError):
    """The handler rejected the command (``reason``); it was dead-lettered."""

    reason: str


class HandlerFailed(SendError):
    """The handler failed on every attempt; ``error`` is the last error (for a Python
    handler, the exception and its traceback), ``attempts`` how many were made."""

    error: str
    attempts: int


class RequestTimeout(SendError, TimeoutError):
    """No reply within ``timeout`` seconds; the handler's late reply is discarded."""

    timeout: float


class NotProcessed(SendError):
    """The command was dropped without a result (its handler went away, or the bus shut
    down before it ran); it is in the dead-letter queue."""


class DuplicateHandler(SubscribeError):
    """The command ``topic`` already has its one handler (``existing``)."""

    topic: str
    existing: str


class InvalidConfig(SubscribeError, ValueError):
    """A setting is out of range."""


class TransportError(PublishError, SendError, SubscribeError):
    """The transport (log, NATS) failed; ``kind`` is ``unavailable``, ``timeout``,
    ``rejected``, ``io``, ``corrupt``, ``closed`` or ``unsupported``."""

    kind: str


class Forbidden(PublishError, SendError, SubscribeError, PermissionError):
    """A node refused the operation: the connection's principal lacks the grant (the
    message names the principal, the action and the topic)."""


class Unauthenticated(SwitchyardError, PermissionError):
    """A node refused the connection: no token, or an unknown or expired one."""


class RateLimited(PublishError, SendError):
    """A node refused the publish: the principal's publish rate is exceeded."""


class GatewayError(PublishError, SendError, SubscribeError):
    """A node refused the operation for a reason no other class names; ``kind`` is the
    gateway's error kind (``bad_request``, ``too_large``, ``not_ready``, ``internal``, ...)."""

    kind: str


class Unsupported(SwitchyardError, NotImplementedError):
    """The operation or option exists on the in-process bus but not on a bus connected to a
    node (``feature`` names it)."""

    feature: str


# Raised by handlers to tell the bus what to do with a message.


class Reject(Exception):
    """Raise in a handler to refuse the message for good: it is dead-lettered at once
    (reason ``rejected``) and a command's sender gets :class:`Rejected`."""

    def __init__(self, reason: str) -> None:
        if not isinstance(reason, str):
            raise TypeError(f"Reject(reason) takes the reason as a str, not {type(reason).__name__}")
        super().__init__(reason)
        self.reason = reason


class Retry(Exception):
    """Raise in a handler to have the message tried again, after ``after`` seconds or the
    subscription's retry delay. Counts as an attempt. ``after`` must be a finite,
    non-negative number of seconds (``Retry(after=-1)`` raises ValueError, a non-number
    TypeError: the handler's attempt then fails like any other exception)."""

    def __init__(self, after: Optional[float] = None) -> None:
        if after is not None:
            if isinstance(after, bool) or not isinstance(after, (int, float)):
                raise TypeError(f"Retry(after) takes seconds as a number, not {type(after).__name__}")
            if not math.isfinite(after) or after < 0:
                raise ValueError(f"Retry(after) must be a finite, non-negative number of seconds, not {after!r}")
        super().__init__(f"retry requested (after {after}s)" if after is not None else "retry requested")
        self.after = after


class Permanent(Exception):
    """Raise (or ``raise Permanent(...) from e``) for a failure retrying cannot fix: the
    message is dead-lettered without the remaining attempts."""


class HandBack(Exception):
    """Raise in a handler to give a transport's delivery back to the transport: "not mine
    (not now), deliver it again", e.g. to another member of the subscription's consumer
    group. It is not a failure of the handler: not an attempt (a message that comes back to
    this process keeps its attempt number), not retried in place, not dead-lettered, and a
    circuit breaker does not count it. The transport delivers it again at once, or after
    ``after`` seconds (a finite, non-negative number). Its own bound still holds (NATS's
    ``max_deliver``). A message that did not come from a transport (the memory transport, a
    batch) has nowhere to go back to: it fails for good at once and is dead-lettered with
    ``reason``, as with :class:`Permanent`."""

    def __init__(self, reason: str = "handed back by the handler", after: Optional[float] = None) -> None:
        if not isinstance(reason, str):
            raise TypeError(f"HandBack(reason) takes the reason as a str, not {type(reason).__name__}")
        if after is not None:
            if isinstance(after, bool) or not isinstance(after, (int, float)):
                raise TypeError(f"HandBack(after) takes seconds as a number, not {type(after).__name__}")
            if not math.isfinite(after) or after < 0:
                raise ValueError(f"HandBack(after) must be a finite, non-negative number of seconds, not {after!r}")
        super().__init__(reason)
        self.reason = reason
        self.after = after


__all__ = [
    "SwitchyardError",
    "PublishError",
    "SendError",
    "SubscribeError",
    "InvalidTopic",
    "EncodeFailed",
    "DecodeFailed",
    "QueueFull",
    "ShuttingDown",
    "Refused",
    "NoHandler",
    "Rejected",
    "HandlerFailed",
    "RequestTimeout",
    "NotProcessed",
    "DuplicateHandler",
    "InvalidConfig",
    "TransportError",
    "Forbidden",
    "Unauthenticated",
    "RateLimited",
    "GatewayError",
    "Unsupported",
    "Reject",
    "Retry",
    "Permanent",
    "HandBack",
]
