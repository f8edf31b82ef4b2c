"""How a Python handler is called: its payload decoder from its annotations, whether it takes
the envelope, and how many arguments (split from ``_bus``)."""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable

from . import _switchyard as _native
from ._codec import decoder

Envelope = _native.Envelope


class _Handler:
    """One Python subscription or command handler, as the loop calls it."""

    __slots__ = ("fn", "decode", "raw_env", "with_env", "command", "batch", "name", "arity")

    def __init__(self, fn: Callable[..., Any], decode: Callable[[bytes], Any], raw_env: bool, arity: int, command: bool, batch: bool, name: str) -> None:
        self.fn = fn
        self.decode = decode
        self.raw_env = raw_env
        self.arity = arity
        self.with_env = arity >= 2
        self.command = command
        self.batch = batch
        self.name = name


def _check_handler(fn: Any) -> None:
    """Refuses at registration (TypeError naming the handler and why) what the loop could not
    call with a message (the message, then the envelope), or could call without the handler's
    body running (its messages would be acked unhandled)."""
    if not callable(fn):
        raise TypeError(f"a handler must be callable with the message (and the envelope): {fn!r} is a {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None  # a builtin without a signature: taken as it is
    if sig is not None:
        name = getattr(fn, "__qualname__", repr(fn))
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        empty = inspect.Parameter.empty
        required = [p.name for p in sig.parameters.values() if p.kind in positional and p.default is empty]
        if len(required) > 2:
            raise TypeError(
                f"handler {name} requires {len(required)} positional parameters ({', '.join(required)}): "
                f"it is called with the message and, if it takes a second, the envelope"
            )
        keyword = [p.name for p in sig.parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is empty]
        if keyword:
            raise TypeError(f"handler {name} requires keyword-only parameters ({', '.join(keyword)}) nothing passes")
    target = fn
    if not (inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial)):
        target = getattr(type(fn), "__call__", fn)
    if inspect.isasyncgenfunction(target):
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"async generator functions cannot be handlers: {name} (calling it runs nothing; "
            f"make it an `async def` without `yield`)"
        )
    if inspect.isgeneratorfunction(target):
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"generator functions cannot be handlers: {name} (calling it runs nothing of its "
            f"body; make it a `def` or `async def` without `yield`)"
        )


def _plan(fn: Callable[..., Any], tp: Any, batch: bool) -> tuple[Callable[[bytes], Any], bool, int]:
    """How to call ``fn``: its payload decoder, whether it takes the envelope itself, and
    how many arguments it takes (message, then envelope)."""
    try:
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    except (TypeError, ValueError):
        params, varargs = [], True
    arity = 2 if varargs else min(len(params), 2)
    if tp is None and params:
        tp = _annotation(fn, params[0])
        if batch and tp is not None and typing.get_origin(tp) in (list, typing.List):
            args = typing.get_args(tp)
            tp = args[0] if args else None
    if tp is None or tp is Envelope or tp is inspect.Parameter.empty:
        return (decoder(Any) if batch else _identity_bytes), not batch, arity
    return decoder(tp), False, arity


def _annotation(fn: Callable[..., Any], param: inspect.Parameter) -> Any:
    """The type ``param`` (the message) is annotated with, resolved as typing.get_type_hints
    does (``from __future__ import annotations`` makes it a string); None when unannotated.
    An annotation that names nothing it can see (a class local to a function) is a
    TypeError: decoding to plain JSON instead would skip the type's validation."""
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return None
    if not isinstance(ann, str):
        return ann
    try:
        hints = typing.get_type_hints(fn)
        if param.name in hints:
            return hints[param.name]
    except Exception:
        pass  # another annotation (the return type, a second parameter) may be the one
    target = inspect.unwrap(fn)
    while isinstance(target, functools.partial):
        target = inspect.unwrap(target.func)
    namespace: dict[str, Any] = dict(getattr(target, "__globals__", None) or getattr(getattr(target, "__call__", None), "__globals__", None) or {})
    try:
        namespace.update(inspect.getclosurevars(target).nonlocals)
    except (TypeError, ValueError):
        pass
    try:
        # What typing.get_type_hints does with a string; a quoted annotation under
        # `from __future__ import annotations` is a string twice.
        tp: Any = ann
        for _ in range(3):
            if not isinstance(tp, str):
                break
            tp = eval(tp, namespace)
        if isinstance(tp, str):
            raise NameError(f"{tp!r} names no type")
        return tp
    except Exception as e:
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"cannot resolve the annotation {ann!r} of {name}'s parameter {param.name!r} "
            f"({type(e).__name__}: {e}): define the type at module level, or pass type="
        ) from None


def _identity_bytes(b: bytes) -> bytes:
    return b
