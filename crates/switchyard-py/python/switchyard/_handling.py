"""How the loop runs Python handlers: the current envelope, the answers (ack, reply, the
exception kept with its traceback), and prefetch hand-overs (several messages of one
subscription at once, run in order and answered one by one)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import traceback
import types
from typing import Any, Optional

from ._codec import _identity as _codec_identity
from ._codec import encode
from .errors import HandBack, Permanent, Reject, Retry

#: The envelope of the message whose handler is running in this task, if any: messages
#: published or sent from it record it as their cause and keep its correlation id and
#: session (the Python counterpart of the Rust bus's task-local).
_CURRENT: contextvars.ContextVar[Optional[Any]] = contextvars.ContextVar("switchyard_current", default=None)

_CoroutineType = types.CoroutineType


def _describe(e: BaseException) -> str:
    """An exception as the dead letter keeps it: type and message, then the traceback."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return f"{type(e).__name__}: {e}\n{tb}"


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Any:
    """Continues a coroutine whose first step already ran (and suspended on ``yielded``)
    inside a Task: what Python 3.12's eager tasks do, for 3.10 and later."""
    while True:
        try:
            value = yield yielded
        except BaseException as exc:  # cancellation and throw() go through
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value


async def _continue(coro: Any, yielded: Any) -> Any:
    return await _resume(coro, yielded)


def _settle(h: _Handler, reply: Any, result: Any) -> None:
    if h.command:
        try:
            body = b"null" if result is None else encode(result)
        except Exception as e:
            reply.fail(f"the handler's result could not be encoded: {_describe(e)}", True)
            return
        reply.reply(body)
    else:
        reply.ack()


def _fail(reply: Any, e: BaseException) -> None:
    if isinstance(e, (Reject, Retry, HandBack)):
        # Its fields may have been changed after it was made (Retry / Reject / HandBack check them):
        # an answer the bus refuses still settles the message, as a failed attempt (retried,
        # then dead-lettered), never leaving it unanswered to be handed over again.
        try:
            if isinstance(e, Reject):
                reply.reject(e.reason)
            elif isinstance(e, HandBack):
                reply.hand_back(str(e.reason), e.after)
            else:
                reply.retry(e.after)
        except (TypeError, ValueError, OverflowError) as bad:
            reply.fail(f"the handler raised {type(e).__name__} with an invalid argument ({bad}):\n{_describe(e)}")
    elif isinstance(e, Permanent):
        reply.fail(_describe(e), True)
    elif isinstance(e, asyncio.CancelledError):
        reply.fail("the Python handler was cancelled")
    else:
        reply.fail(_describe(e))


def _fail_inline(reply: Any, e: BaseException) -> None:
    """:func:`_fail` for an exception a handler raised before it suspended, outside any task:
    a ``CancelledError`` there is the handler's own (``fut.result()`` of a cancelled future),
    not a cancellation of the handler, and is a failed attempt like any other exception."""
    if isinstance(e, asyncio.CancelledError):
        reply.fail(f"the handler raised CancelledError without being cancelled:\n{_describe(e)}")
    else:
        _fail(reply, e)



def invoke_many(bus: Any, h: Any, token: int, envs: list[Any], replies: Any) -> bool:
    """Runs ``h`` on each message of a prefetch hand-over, in order, and answers them
    through ``replies``; stops after a message that raised (the bus retries it before the
    ones after it, which it hands over again). True when answered before this returns;
    False when a handler suspended (a task runs the rest, then answers).

    The hand-over runs as one coroutine: a handler coroutine that finishes without
    suspending costs no ``StopIteration`` of its own, only the hand-over's one."""
    # [True] while the hand-over runs inline (in the loop's reader callback, not in a task).
    inline = [True]
    coro = _many(h, envs, replies, inline)
    current = _CURRENT
    prev = current.get()
    try:
        yielded = coro.send(None)
    except StopIteration:
        current.set(prev)
        return True
    except BaseException:
        current.set(prev)
        raise
    loop = bus._loop
    if loop is None:
        loop = asyncio.get_running_loop()
    inline[0] = False
    # Created while the suspended message's envelope is current: the task keeps it.
    task = loop.create_task(_continue(coro, yielded))
    current.set(prev)
    bus._tasks[token] = task
    task.add_done_callback(functools.partial(_many_done, bus, token, replies))
    return False


async def _many(h: Any, envs: list[Any], replies: Any, inline: list[bool]) -> None:
    fn, arity, decode, raw = h.fn, h.arity, h.decode, h.raw_env
    identity = decode is _codec_identity
    set_current = _CURRENT.set
    acked = 0
    try:
        for env in envs:
            if raw:
                arg = env
            elif identity:
                arg = env.payload
            else:
                try:
                    arg = decode(env.payload)
                except Exception as e:
                    replies.undecodable(f"{type(e).__name__}: {e}")
                    return
            # Set, not reset: after a suspension this runs in the task's own context.
            set_current(env)
            try:
                result = fn(arg, env) if arity == 2 else (fn(arg) if arity == 1 else fn())
                if result is not None and (type(result) is _CoroutineType or inspect.isawaitable(result)):
                    await result
            except BaseException as e:
                if inline[0]:
                    # No task to cancel: the handler's own exception, a failed attempt. Raised
                    # out of here it would leave the loop's reader callback and strand the
                    # other invocations it took.
                    _fail_inline(replies, e)
                    return
                _fail(replies, e)
                if isinstance(e, asyncio.CancelledError):
                    raise  # the task is being cancelled (shutdown): it ends cancelled
                return
            acked += 1
    finally:
        replies.finish(acked)


def _many_done(bus: Any, token: int, replies: Any, task: "asyncio.Task[Any]") -> None:
    bus._tasks.pop(token, None)
    # Cancelled before it resumed: the hand-over coroutine never ran its `finally`.
    replies.finish()
