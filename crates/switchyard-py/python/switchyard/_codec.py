"""Messages as Python classes, JSON on the wire.

A message class is a dataclass or a pydantic model with a topic, given by :func:`event` or
:func:`command` (or a ``TOPIC`` class variable). It is encoded as the same compact JSON
``serde_json`` writes for a Rust struct with the same fields, so a Rust component and a Python
one exchange it unchanged. Decoding ignores unknown fields, as serde does by default.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import types
import typing
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

T = TypeVar("T")

_NOTHING: Any = object()


@dataclass(frozen=True)
class MessageSpec:
    """What the bus needs to know about a message class."""

    topic: str
    kind: str  # "event" or "command"
    returns: Any  # the result type of a command (None: any JSON)
    version: int
    name: str


def _attach(cls: type, spec: MessageSpec) -> type:
    cls.__switchyard__ = spec  # type: ignore[attr-defined]
    return cls


def event(topic: str, *, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Class decorator: instances are events published on ``topic``.

    >>> @event("users.created")
    ... @dataclass
    ... class UserCreated:
    ...     id: int
    """

    def wrap(cls: type[T]) -> type[T]:
        return _attach(cls, MessageSpec(topic, "event", None, version, cls.__name__))  # type: ignore[return-value]

    return wrap


def command(topic: str, *, returns: Any = None, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Class decorator: instances are commands on ``topic`` whose one handler returns a
    ``returns`` (decoded from the reply's JSON at the sender; ``None``: plain JSON)."""

    def wrap(cls: type[T]) -> type[T]:
        return _attach(cls, MessageSpec(topic, "command", returns, version, cls.__name__))  # type: ignore[return-value]

    return wrap


def spec_of(obj: Any) -> Optional[MessageSpec]:
    """The spec of a message class or instance, or ``None``."""
    cls = obj if isinstance(obj, type) else type(obj)
    spec = getattr(cls, "__switchyard__", None)
    if isinstance(spec, MessageSpec):
        return spec
    topic = getattr(cls, "TOPIC", None)
    if isinstance(topic, str):
        kind = getattr(cls, "KIND", "event")
        spec = MessageSpec(topic, kind, getattr(cls, "RETURNS", None), getattr(cls, "VERSION", 1), cls.__name__)
        try:
            cls.__switchyard__ = spec  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass
        return spec
    return None


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_validate_json") and hasattr(tp, "model_fields")


def _default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    dump = getattr(o, "model_dump", None)
    if dump is not None:
        # By alias, as model_validate reads it (a nested model round-trips too).
        return dump(mode="json", by_alias=True)
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
        return o.isoformat()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, uuid.UUID):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


# allow_nan=False: NaN and the infinities are not JSON (a Rust peer, the node's gateway and
# any strict parser refuse them), so encoding one raises ValueError instead of writing it.
_dumps = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def is_bytes_like(value: Any) -> bool:
    """Whether ``value`` is a payload sent as raw bytes (``bytes``, ``bytearray``,
    ``memoryview``): the one test :func:`encode` and every frame builder share."""
    return isinstance(value, (bytes, bytearray, memoryview))


def encode(value: Any) -> bytes:
    """The payload of ``value``: bytes-like values (:func:`is_bytes_like`) as their bytes,
    anything else as compact JSON (``ValueError`` for NaN or an infinity, ``TypeError`` for
    what JSON cannot hold)."""
    if type(value) is bytes:
        return value
    if is_bytes_like(value):
        return bytes(value)
    dump_json = getattr(value, "model_dump_json", None)
    if dump_json is not None:
        # By alias: the decoder (model_validate_json) reads aliases, as does a Rust peer
        # whose struct has `#[serde(rename = ...)]` / `rename_all`.
        return dump_json(by_alias=True).encode()
    return _dumps(value).encode()


# Decoding: JSON-decoded value -> the annotated type.

_converters: dict[Any, Callable[[Any], Any]] = {}


def _identity(v: Any) -> Any:
    return v


def converter(tp: Any) -> Callable[[Any], Any]:
    """A function turning a JSON-decoded value into ``tp`` (dataclasses, pydantic models,
    lists, dicts, tuples, Optional/Union, enums, datetimes, primitives)."""
    try:
        return _converters[tp]
    except (KeyError, TypeError):
        pass
    conv = _make_converter(tp)
    try:
        _converters[tp] = conv
    except TypeError:
        pass
    return conv


def _check(tp: type) -> Callable[[Any], Any]:
    def conv(v: Any) -> Any:
        if tp is float and type(v) is int:
            return float(v)
        if isinstance(v, tp) and not (tp is int and isinstance(v, bool)):
            return v
        raise TypeError(f"expected {tp.__name__}, got {type(v).__name__}")

    return conv


def _make_converter(tp: Any) -> Callable[[Any], Any]:
    if tp is Any or tp is object or tp is None:
        return _identity
    if tp is type(None):
        def none(v: Any) -> Any:
            if v is not None:
                raise TypeError(f"expected null, got {type(v).__name__}")
            return None
        return none
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        convs = [converter(a) for a in args]

        def union(v: Any) -> Any:
            errors = []
            for c in convs:
                try:
                    return c(v)
                except (TypeError, ValueError) as e:
                    errors.append(str(e))
            raise TypeError(f"no variant of {tp} fits: {'; '.join(errors)}")

        return union
    if origin in (list, set, frozenset) or tp in (list, set, frozenset):
        item = converter(args[0]) if args else _identity
        container = origin or tp

        def seq(v: Any) -> Any:
            if not isinstance(v, list):
                raise TypeError(f"expected a list, got {type(v).__name__}")
            return container(item(x) for x in v)

        return seq
    if origin is tuple or tp is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = converter(args[0])
            return lambda v: tuple(item(x) for x in v)
        convs = [converter(a) for a in args]
        if not convs:
            return lambda v: tuple(v)

        def tup(v: Any) -> Any:
            if not isinstance(v, list) or len(v) != len(convs):
                raise TypeError(f"expected a list of {len(convs)}")
            return tuple(c(x) for c, x in zip(convs, v))

        return tup
    if origin is dict or tp is dict:
        key = converter(args[0]) if args else _identity
        val = converter(args[1]) if len(args) > 1 else _identity

        def mapping(v: Any) -> Any:
            if not isinstance(v, dict):
                raise TypeError(f"expected an object, got {type(v).__name__}")
            return {key(k): val(x) for k, x in v.items()}

        return mapping
    if origin is typing.Literal:
        allowed = set(args)

        def literal(v: Any) -> Any:
            if v not in allowed:
                raise ValueError(f"{v!r} is not one of {sorted(map(repr, allowed))}")
            return v

        return literal
    if origin is not None:  # Annotated, generics we do not know: take the value as it is
        return converter(args[0]) if origin is typing.Annotated and args else _identity
    if _is_pydantic(tp):
        return tp.model_validate
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_converter(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    if tp is datetime.datetime:
        return lambda v: datetime.datetime.fromisoformat(v.replace("Z", "+00:00") if isinstance(v, str) else v)
    if tp is datetime.date:
        return datetime.date.fromisoformat
    if tp is uuid.UUID:
        return uuid.UUID
    if tp is bytes:
        return lambda v: bytes(v)
    if tp in (int, float, str, bool):
        return _check(tp)
    return _identity


def _dataclass_converter(cls: type) -> Callable[[Any], Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    fields = [(f.name, f) for f in dataclasses.fields(cls) if f.init]
    convs: dict[str, Callable[[Any], Any]] = {}

    def conv(v: Any) -> Any:
        if not isinstance(v, dict):
            raise TypeError(f"expected an object for {cls.__name__}, got {type(v).__name__}")
        if not convs:
            for name, _ in fields:
                convs[name] = converter(hints.get(name, Any))
        kwargs = {}
        for name, _f in fields:
            if name in v:
                try:
                    kwargs[name] = convs[name](v[name])
                except (TypeError, ValueError) as e:
                    raise TypeError(f"{cls.__name__}.{name}: {e}") from None
        return cls(**kwargs)

    return conv


def decoder(tp: Any) -> Callable[[bytes], Any]:
    """A function from a payload to ``tp``."""
    if tp is bytes:
        return _identity
    if _is_pydantic(tp):
        return tp.model_validate_json
    loads = json.loads
    if tp is Any or tp is None or tp is dict or tp is list:
        return loads
    conv = converter(tp)

    def decode(payload: bytes) -> Any:
        return conv(loads(payload))

    return decode
