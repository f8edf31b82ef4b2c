"""switchyard for Python: the switchyard message bus (Rust) under an asyncio API.

::

    from dataclasses import dataclass
    import switchyard

    @switchyard.event("users.created")
    @dataclass
    class UserCreated:
        id: int

    @switchyard.command("users.create", returns=int)
    @dataclass
    class CreateUser:
        name: str

    bus = switchyard.Bus()

    @bus.on(UserCreated)
    async def welcome(ev: UserCreated) -> None:
        print("welcome, user", ev.id)

    @bus.handle(CreateUser)
    async def create(cmd: CreateUser) -> int:
        await bus.publish(UserCreated(id=7))   # caused by the command, same correlation id
        return 7

    user_id = await bus.send(CreateUser(name="ada"))
    report = await bus.shutdown()

Messages are dataclasses or pydantic models, JSON on the wire: a Rust struct with the same
fields reads and writes them. See docs/python.md.
"""

from ._bus import (
    Bus,
    DeadLetter,
    Envelope,
    Session,
    ShutdownReport,
    Subscription,
    WaitReport,
    current_envelope,
)
from ._remote import ConnectedBus, RemoteEnvelope, RemoteSubscription
from ._codec import MessageSpec, command, encode, event, spec_of
from .errors import (
    DecodeFailed,
    DuplicateHandler,
    EncodeFailed,
    Forbidden,
    GatewayError,
    HandBack,
    HandlerFailed,
    InvalidConfig,
    InvalidTopic,
    NoHandler,
    NotProcessed,
    Permanent,
    PublishError,
    QueueFull,
    RateLimited,
    Refused,
    Reject,
    Rejected,
    RequestTimeout,
    Retry,
    SendError,
    ShuttingDown,
    SubscribeError,
    SwitchyardError,
    TooLarge,
    TransportError,
    Unauthenticated,
    Unsupported,
)
from ._switchyard import __version__

__all__ = [
    "Bus",
    "ConnectedBus",
    "RemoteEnvelope",
    "RemoteSubscription",
    "Session",
    "Subscription",
    "Envelope",
    "DeadLetter",
    "ShutdownReport",
    "WaitReport",
    "MessageSpec",
    "event",
    "command",
    "encode",
    "spec_of",
    "current_envelope",
    "SwitchyardError",
    "PublishError",
    "SendError",
    "SubscribeError",
    "InvalidTopic",
    "EncodeFailed",
    "DecodeFailed",
    "QueueFull",
    "TooLarge",
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
    "__version__",
]
