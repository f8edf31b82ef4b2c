"""Outside-in review (rev37) of the Python package, as a Python developer uses it: handler
outcomes (sync handlers raising StopIteration / CancelledError), shutdown accounting across
subscriptions and retries, backpressure with several subscriptions and on commands,
cancellation, dead letters (browse in process, replay through a node). The embedded log, GIL,
wildcards, bad input and more are in test_review_rev37_more.py.

Earlier reviews (rev7, rev15, rev29) are not repeated. Passing tests are kept as coverage; a
test that exposes a defect is skipped with the reason ``defect: ...`` and a comment with what
was expected and what was observed."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass

import pytest

import switchyard
from switchyard import _switchyard as native
from conftest import Collector, NodeProcess, wait_for

rust = native.testing


def defect(reason: str):
    """Skips a test that shows a defect (``REV37_DEFECTS=1`` runs it, to see it fail)."""
    return pytest.mark.skipif(not os.environ.get("REV37_DEFECTS"), reason=f"defect: {reason}")


def uniq(prefix: str) -> str:
    """A topic of the test's own (tests share the session's node)."""
    return f"rev37.{prefix}.t{uuid.uuid4().hex[:10]}"


def index(payload: bytes) -> int:
    return json.loads(payload)["i"]


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Waits (polling the bus's state, which has no push for it) until `predicate()` holds,
    failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def stats_of(bus: switchyard.Bus, name: str) -> dict:
    for info in bus.registry():
        if info["name"] == name:
            return info["stats"]
    raise AssertionError(f"no subscription {name!r} in {[i['name'] for i in bus.registry()]}")


# -- handler outcomes ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [64, 1])
async def test_a_sync_event_handler_letting_stop_iteration_escape_is_a_failed_attempt(bus, prefetch):
    # A plain `def` handler calling next() on an exhausted iterator: a bug in the handler,
    # which must be retried then dead-lettered like any other exception, not acked.
    topic = uniq("stopiter")
    calls: list[int] = []

    @bus.on(topic, name=f"stopper-{prefetch}", prefetch=prefetch, max_attempts=2)
    def stopper(env):
        calls.append(env.attempt)
        return next(iter(()))

    await bus.publish(topic, {"i": 1})
    await bus.idle(timeout=10)
    letters = bus.dead_letters()
    assert calls == [1, 2] and len(letters) == 1, (
        f"a handler that raised StopIteration was called with attempts {calls} and left "
        f"{len(letters)} dead letters (expected attempts [1, 2], then one dead letter): the "
        f"StopIteration was taken for the handler's return; stats {stats_of(bus, f'stopper-{prefetch}')}"
    )
    assert "StopIteration" in letters[0].error, letters[0].error


async def test_a_sync_command_handler_letting_stop_iteration_escape_fails_the_sender(bus):
    topic = uniq("stopcmd")

    @bus.handle(topic, max_attempts=1)
    def lookup(data: dict) -> int:
        return next(iter(()))

    try:
        result = await bus.send(topic, {"i": 1})
    except switchyard.HandlerFailed as e:
        assert "StopIteration" in e.error, e.error
    else:
        pytest.fail(
            f"send returned {result!r}: the handler's StopIteration was taken as its return "
            f"value instead of a failure (expected HandlerFailed naming StopIteration)"
        )


async def test_a_sync_batch_handler_letting_stop_iteration_escape_is_a_failure(bus):
    topic = uniq("stopbatch")
    calls: list[int] = []

    @bus.on_batch(topic, max_size=10, max_wait=0.01, max_attempts=1)
    def batch(items: list[dict]):
        calls.append(len(items))
        next(iter(()))

    await bus.publish(topic, {"i": 1})
    await bus.idle(timeout=10)
    assert len(bus.dead_letters()) >= 1, (
        f"a batch handler that raised StopIteration (called with batches {calls}) left no "
        f"dead letter: the batch was acked as handled"
    )


async def test_a_handler_raising_cancelled_error_itself_is_a_failure_and_strands_nothing(bus):
    # `fut.result()` of a cancelled future raises CancelledError in a handler that was not
    # cancelled. The message is a failed attempt; the other subscriptions' messages and the
    # publishes handed over in the same loop callback still complete.
    topic = uniq("cancelraise")
    calls: list[int] = []
    seen = {f"bystander{k}": Collector() for k in range(4)}

    @bus.on(topic, name="raiser", max_attempts=2)
    def raiser(env):
        calls.append(env.attempt)
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()
        fut.result()

    for name, col in seen.items():
        bus.on(topic, (lambda c: (lambda env: c.add(index(env.payload))))(col), name=name)

    for i in range(5):
        await bus.publish(topic, {"i": i})
    try:
        for col in seen.values():
            await col.wait(5, timeout=10)
    except asyncio.TimeoutError:
        pytest.fail(
            f"other subscriptions got {[len(c.items) for c in seen.values()]} of 5 messages each within "
            f"10 s (raiser called {len(calls)} times, pending {bus.pending()}): the handler's "
            f"CancelledError escaped the loop callback and the rest of its hand-over batch was never run"
        )
    for name, col in seen.items():
        assert sorted(col.items) == list(range(5)), (name, col.items)
    try:
        await bus.idle(timeout=10)
    except asyncio.TimeoutError:
        pytest.fail(f"the bus never went idle: pending {bus.pending()}, raiser calls {calls}, registry {bus.registry()}")
    letters = [dl for dl in bus.dead_letters() if dl.handler == "raiser"]
    assert sorted(index(dl.envelope.payload) for dl in letters) == list(range(5)), [
        (dl.reason, dl.error[:80]) for dl in letters
    ]
    assert all(dl.attempts == 2 for dl in letters)
    # pyfix: the dead letter says what happened, with the traceback, not "was cancelled".
    assert all("raised CancelledError without being cancelled" in dl.error and "fut.result()" in dl.error
               for dl in letters), letters[0].error


@pytest.mark.parametrize("prefetch", [1, 64])
@pytest.mark.parametrize("suspend_first", [False, True], ids=["inline", "after-await"])
async def test_a_handlers_own_cancelled_error_is_retried_then_dead_lettered(bus, prefetch, suspend_first):
    # pyfix: on both paths (one message per hand-over, prefetch) and before or after the
    # handler's first await, its own CancelledError fails the attempt; the next messages run.
    topic = uniq("owncancel")
    calls: list[tuple[int, int]] = []

    @bus.on(topic, name="own", prefetch=prefetch, max_attempts=2)
    async def own(data: dict):
        calls.append((data["i"], current_attempt()))
        if suspend_first:
            await asyncio.sleep(0)
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()
        fut.result()

    for i in range(3):
        await bus.publish(topic, {"i": i})
    await bus.idle(timeout=10)
    assert sorted(calls) == [(i, a) for i in range(3) for a in (1, 2)], calls
    assert sorted(index(dl.envelope.payload) for dl in bus.dead_letters()) == [0, 1, 2]


def current_attempt() -> int:
    env = switchyard.current_envelope()
    assert env is not None
    return env.attempt


@pytest.mark.parametrize("bus_overflow", ["block", "drop_oldest"])
async def test_a_negative_overflow_timeout_is_refused_at_registration(bus_overflow):
    # pyfix: refused whatever the policy (drop_oldest has no timeout to check it against).
    bus = switchyard.Bus(overflow=bus_overflow)
    try:
        for register in (bus.on, bus.handle):
            with pytest.raises(ValueError, match="overflow_timeout"):
                register(uniq("negtimeout"), lambda env: None, overflow_timeout=-1)
        assert bus.registry() == []
    finally:
        await bus.shutdown(timeout=2)
        bus.close()


class _AgenCall:
    async def __call__(self, env):
        yield env


async def test_an_async_generator_handler_is_refused_by_handle_on_batch_and_as_a_callable(bus):
    # pyfix: the check covers every registration and a callable object whose __call__ is one.
    async def agen(env):
        yield env

    topic = uniq("agen2")
    for register, handler in ((bus.handle, agen), (bus.on_batch, agen), (bus.on, _AgenCall())):
        with pytest.raises(TypeError, match="async generator functions cannot be handlers"):
            register(topic, handler)
    assert bus.registry() == []


async def test_a_generator_function_handler_is_refused_at_registration(bus):
    # A plain `def` with `yield` is a generator function: calling it runs nothing of its body
    # and returns a generator, which the loop took as the handler's result (the message
    # acked, its handler never run), as with the async generator above.
    def gen(env):
        yield env

    class GenCall:
        def __call__(self, env):
            yield env

    topic = uniq("gen")
    for register, handler in ((bus.on, gen), (bus.handle, gen), (bus.on_batch, gen), (bus.on, GenCall())):
        try:
            register(topic + (".cmd" if register == bus.handle else ""), handler)
        except TypeError as e:
            assert "generator functions cannot be handlers" in str(e), str(e)
            continue
        pytest.fail(
            f"{register.__name__}(topic, {handler!r}), a generator function, was accepted: registered "
            f"{[(r['name'], r['pattern']) for r in bus.registry()]}"
        )
    assert bus.registry() == []


def _three(a, b, c):
    pass


@pytest.mark.parametrize("handler", [42, "handler", _three], ids=["int", "str", "three-required-parameters"])
async def test_a_handler_that_cannot_be_called_with_a_message_is_refused_at_registration(bus, handler):
    # Expected: a TypeError at `on()` / `handle()`, as for a target that is not a message
    # class. Accepted, such a handler fails every message it gets (TypeError at each call:
    # retried, then dead-lettered, reason handler_failed).
    topic = uniq("notcallable")
    for register in (bus.on, bus.handle):
        try:
            register(topic + (".cmd" if register == bus.handle else ""), handler)
        except TypeError as e:
            # pyfix: the error names the handler and why.
            assert repr(handler) in str(e) or "_three" in str(e) and "(a, b, c)" in str(e), str(e)
            continue
        pytest.fail(
            f"{register.__name__}(topic, {handler!r}) was accepted: registered "
            f"{[(r['name'], r['pattern']) for r in bus.registry()]}"
        )
    assert bus.registry() == []


async def test_an_async_generator_handler_is_not_acked_without_running(bus):
    # `async def h(env): ... yield ...` is an async generator function: calling it runs
    # nothing. Expected: refused at registration (TypeError), or at least each call failing.
    # A message acked without its handler's body having run is lost silently.
    topic = uniq("agen")
    ran: list[str] = []

    async def agen(env):
        ran.append(env.id)
        yield env

    try:
        bus.on(topic, agen, name="agen")
    except TypeError as e:
        # Fixed (pyfix): refused at registration, naming the handler.
        assert "async generator functions cannot be handlers" in str(e) and "agen" in str(e), str(e)
        assert bus.registry() == []
        return
    await bus.publish(topic, {"i": 1})
    await bus.idle(timeout=10)
    acked = stats_of(bus, "agen")["acked"]
    assert not (acked == 1 and ran == []), (
        f"an async generator handler was registered, and its message acked ({acked}) without its "
        f"body running (ran {ran}), dead letters {[(d.reason, d.error[:60]) for d in bus.dead_letters()]}"
    )


async def test_a_subscriptions_overflow_timeout_applies_without_naming_the_overflow_policy():
    # docs/python.md lists `overflow` and `overflow_timeout` among `on()`'s options; the bus
    # default policy is `block`. Expected: `on(..., overflow_timeout=0.05)` bounds a publish
    # to that subscription's full queue at 0.05 s, as `on(..., overflow="block",
    # overflow_timeout=0.05)` does.
    bus = switchyard.Bus(overflow_timeout=30.0)
    topic = uniq("ovtimeout")
    release = asyncio.Event()
    started = asyncio.Event()

    @bus.on(topic, name="slow", queue_capacity=1, overflow_timeout=0.05)
    async def slow(env):
        started.set()
        await release.wait()

    try:
        await bus.publish(topic, {"i": 0})
        await wait_for(started)
        await bus.publish(topic, {"i": 1})
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(bus.publish(topic, {"i": 2}), 5)
        except switchyard.QueueFull:
            took = time.monotonic() - t0
            assert took < 2, f"QueueFull after {took:.2f}s"
        except asyncio.TimeoutError:
            pytest.fail(
                "the publish to the full queue still waited after 5 s: the subscription's "
                "overflow_timeout=0.05 was ignored for the bus's 30 s (overflow= not given)"
            )
        else:
            pytest.fail("the publish to a full queue went through")
    finally:
        release.set()
        await bus.shutdown(timeout=5)
        bus.close()


# -- shutdown -------------------------------------------------------------------------------------


async def test_a_message_waiting_for_its_retry_at_the_shutdown_deadline_is_reported_not_lost():
    bus = switchyard.Bus()
    topic = uniq("retrywait")
    failed = asyncio.Event()
    attempts: list[int] = []

    @bus.on(topic, name="flaky", retry_delay=60.0, max_attempts=3)
    async def flaky(env):
        attempts.append(env.attempt)
        failed.set()
        raise RuntimeError("first attempt fails")

    await bus.publish(topic, {"i": 1})
    await wait_for(failed)
    started = time.monotonic()
    report = await asyncio.wait_for(bus.shutdown(timeout=0.3), 20)
    took = time.monotonic() - started
    letters = bus.dead_letters()
    assert took < 10, f"shutdown(timeout=0.3) took {took:.1f}s: it waited for the 60 s retry"
    assert len(letters) == 1, f"the message waiting for its retry is gone: report {report}, attempts {attempts}"
    assert letters[0].envelope.id in report.left, (report, letters[0].reason)
    assert letters[0].reason == "shutdown", letters[0].reason
    assert attempts == [1]
    bus.close()


async def test_shutdown_accounts_for_every_copy_in_every_subscription():
    # Three subscriptions on one topic: a quick one, a slower one with two workers and a
    # prefetch of 4, and one that hangs. Every copy is either handled or dead-lettered
    # (reason shutdown, under its subscription) and listed in the report; none twice.
    bus = switchyard.Bus()
    topic = uniq("drain")
    n = 60
    handled: dict[str, list[int]] = {"quick": [], "slower": [], "stuck": []}
    stuck_started = asyncio.Event()

    @bus.on(topic, name="quick")
    def quick(env):
        handled["quick"].append(index(env.payload))

    @bus.on(topic, name="slower", workers=2, prefetch=4)
    async def slower(env):
        await asyncio.sleep(0.005)
        handled["slower"].append(index(env.payload))

    @bus.on(topic, name="stuck", prefetch=8)
    async def stuck(env):
        stuck_started.set()
        await asyncio.Event().wait()

    for i in range(n):
        await bus.publish(topic, {"i": i})
    await wait_for(stuck_started)
    report = await asyncio.wait_for(bus.shutdown(timeout=0.5), 20)
    letters = bus.dead_letters()
    for name, got in handled.items():
        dead = [index(dl.envelope.payload) for dl in letters if dl.handler == name]
        assert len(set(got) & set(dead)) == 0, f"{name}: both handled and dead-lettered: {set(got) & set(dead)}"
        assert sorted(got + dead) == list(range(n)), (
            f"{name}: handled {len(got)} + dead-lettered {len(dead)} of {n}: missing "
            f"{sorted(set(range(n)) - set(got) - set(dead))}, duplicated "
            f"{sorted(i for i in set(got + dead) if (got + dead).count(i) > 1)}"
        )
    assert handled["quick"] == list(range(n)), "the quick subscription handles every message, in order"
    assert handled["stuck"] == []
    assert {dl.reason for dl in letters} <= {"shutdown"}, {dl.reason for dl in letters}
    assert {dl.envelope.id for dl in letters} == set(report.left), report
    bus.close()


# -- backpressure -----------------------------------------------------------------------------


async def test_queue_full_on_one_of_two_subscriptions_names_it_and_the_other_still_gets_it(bus):
    topic = uniq("partial")
    release = asyncio.Event()
    started = asyncio.Event()
    wide = Collector()

    @bus.on(topic, name="narrow", queue_capacity=1, overflow="reject_new")
    async def narrow(env):
        started.set()
        await release.wait()

    bus.on(topic, lambda env: wide.add(index(env.payload)), name="wide")

    await bus.publish(topic, {"i": 0})
    await wait_for(started)
    await bus.publish(topic, {"i": 1})
    with pytest.raises(switchyard.QueueFull) as e:
        await bus.publish(topic, {"i": 2})
    assert e.value.subscriptions == ["narrow"] and e.value.delivered == 1, (e.value.subscriptions, e.value.delivered)
    assert "narrow" in str(e.value), str(e.value)
    assert sorted(await wide.wait(3)) == [0, 1, 2], "the other subscription got the refused message"
    release.set()
    await bus.idle(timeout=10)
    assert stats_of(bus, "narrow")["acked"] == 2
    assert bus.dead_letters() == []


async def test_a_full_command_queue_refuses_a_send_with_queue_full(bus):
    topic = uniq("cmdfull")
    release = asyncio.Event()
    started = asyncio.Event()

    @bus.handle(topic, queue_capacity=1, overflow="reject_new")
    async def slow(data: dict) -> int:
        started.set()
        await release.wait()
        return data["i"] * 10

    first = asyncio.ensure_future(bus.send(topic, {"i": 1}))
    await wait_for(started)
    second = asyncio.ensure_future(bus.send(topic, {"i": 2}))
    await until(lambda: bus.pending() == 2, what="the second command to be queued")
    with pytest.raises(switchyard.QueueFull) as e:
        await bus.send(topic, {"i": 3})
    assert isinstance(e.value, switchyard.SendError)
    release.set()
    assert await asyncio.wait_for(first, 10) == 10
    assert await asyncio.wait_for(second, 10) == 20


async def test_drop_oldest_dead_letters_what_it_evicts_so_nothing_is_lost(bus):
    topic = uniq("dropoldest")
    release = asyncio.Event()
    started = asyncio.Event()
    got: list[int] = []

    @bus.on(topic, name="lossy", queue_capacity=3, overflow="drop_oldest", prefetch=1)
    async def lossy(env):
        started.set()
        await release.wait()
        got.append(index(env.payload))

    await bus.publish(topic, {"i": 0})
    await wait_for(started)
    for i in range(1, 11):
        await bus.publish(topic, {"i": i})
    release.set()
    await bus.idle(timeout=10)
    dropped = sorted(index(dl.envelope.payload) for dl in bus.dead_letters())
    assert got == [0, 8, 9, 10], got
    assert dropped == list(range(1, 8)), dropped
    assert stats_of(bus, "lossy")["dropped"] == 7, stats_of(bus, "lossy")


# -- cancellation ---------------------------------------------------------------------------------


async def test_sends_abandoned_by_wait_for_never_hand_their_late_result_to_later_sends(bus):
    # The usual asyncio idiom `await asyncio.wait_for(bus.send(...), t)` cancels the await;
    # the command still runs, and its late reply must not resolve any other caller's send.
    topic = uniq("abandon")
    gates: dict[int, asyncio.Event] = {}

    @bus.handle(topic, workers=8)
    async def echo(data: dict) -> int:
        gate = gates.get(data["i"])
        if gate is not None:
            await gate.wait()
        return data["i"]

    for i in range(0, 40, 2):
        gates[i] = asyncio.Event()
    abandoned = 0
    for i in range(40):
        if i in gates:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(bus.send(topic, {"i": i}), 0.01)
            abandoned += 1
        else:
            results = await asyncio.gather(*(bus.send(topic, {"i": i}) for _ in range(3)))
            assert results == [i, i, i], (i, results)
        if i % 4 == 0:
            for k in list(gates)[: i // 2]:
                gates[k].set()  # late replies arrive while later sends wait
    for g in gates.values():
        g.set()
    await bus.idle(timeout=10)
    assert abandoned == 20
    assert bus._native.calls_in_flight() == 0 and bus._futures == {}
    assert stats_of(bus, topic)["acked"] == 20 + 20 * 3


async def test_cancelling_a_publish_that_waits_for_every_handler_leaves_nothing_behind(bus):
    topic = uniq("waitcancel")
    release = asyncio.Event()
    started = asyncio.Event()
    done = Collector()

    @bus.on(topic, name="slow")
    async def slow(env):
        started.set()
        await release.wait()
        done.add(env.id)

    waiting = asyncio.ensure_future(bus.publish(topic, {"i": 1}, wait=True))
    await wait_for(started)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await done.wait(1)
    await bus.idle(timeout=10)
    assert bus._native.calls_in_flight() == 0 and bus._futures == {} and bus._tasks == {}
    # The bus still serves a wait=True publish afterwards.
    release.set()
    report = await asyncio.wait_for(bus.publish(topic, {"i": 2}, wait=True), 10)
    assert report.handled == 1 and report.failures == []


# -- dead letters ---------------------------------------------------------------------------------


@switchyard.event("rev37.orders.placed")
@dataclass
class Placed:
    id: int
    sku: str


async def test_dead_letters_name_the_reason_subscription_attempts_and_keep_the_message(bus):
    topic = Placed.TOPIC if hasattr(Placed, "TOPIC") else "rev37.orders.placed"

    @bus.on(Placed, name="exhausts", max_attempts=3)
    async def exhausts(ev: Placed):
        raise RuntimeError(f"cannot place {ev.sku}")

    @bus.on(Placed, name="rejects")
    def rejects(ev: Placed):
        raise switchyard.Reject(f"sku {ev.sku} unknown")

    @bus.on(Placed, name="permanent", max_attempts=5)
    async def permanent(ev: Placed):
        try:
            raise KeyError(ev.sku)
        except KeyError as e:
            raise switchyard.Permanent("no such sku") from e

    @bus.on(Placed, name="fine")
    def fine(ev: Placed):
        pass

    await bus.publish(Placed(id=1, sku="a-1"))
    await bus.publish(topic, {"id": "not a number", "sku": "b-2"})
    await bus.idle(timeout=10)
    letters = bus.dead_letters()
    by = {(dl.handler, index_or_raw(dl.envelope.payload)): dl for dl in letters}
    summary = sorted((dl.handler, dl.reason, dl.attempts) for dl in letters)
    # Message 1: three failures. Message 2 (undecodable): decode_failed in each typed handler.
    assert len(letters) == 7, summary
    ex = by[("exhausts", 1)]
    assert ex.attempts == 3 and "RuntimeError: cannot place a-1" in ex.error and "Traceback" in ex.error, ex.error
    assert ex.envelope.type_name == "Placed" and ex.envelope.topic == topic
    rj = by[("rejects", 1)]
    assert rj.reason == "rejected" and rj.attempts == 1 and "sku a-1 unknown" in rj.error, (rj.reason, rj.error)
    pm = by[("permanent", 1)]
    assert pm.attempts == 1 and "no such sku" in pm.error and "KeyError" in pm.error, (pm.attempts, pm.error)
    for h in ("exhausts", "rejects", "permanent", "fine"):
        dl = by[(h, "raw")]
        assert dl.reason == "decode_failed" and dl.attempts == 1, (h, dl.reason, dl.attempts)
        assert json.loads(dl.envelope.payload) == {"id": "not a number", "sku": "b-2"}
    # The same message's id in each subscription's dead letter.
    assert len({by[(h, 1)].envelope.id for h in ("exhausts", "rejects", "permanent")}) == 1


def index_or_raw(payload: bytes):
    v = json.loads(payload)["id"]
    return v if isinstance(v, int) else "raw"


async def test_a_dead_letter_republished_by_hand_is_handled_again(bus):
    # The in-process bus has no replay call: a user replays a dead letter by publishing its
    # envelope's topic, payload and headers again.
    topic = uniq("manualreplay")
    broken = True
    seen = Collector()

    @bus.on(topic, name="picky", max_attempts=1)
    async def picky(data: dict, env):
        if broken:
            raise RuntimeError("dependency down")
        seen.add((data, dict(env.headers)))

    await bus.publish(topic, {"i": 7}, headers={"tenant": "acme"})
    await bus.idle(timeout=10)
    [dl] = bus.dead_letters()
    broken = False
    await bus.publish(dl.envelope.topic, dl.envelope.payload, headers=dl.envelope.headers)
    [(data, headers)] = await seen.wait(1)
    assert data == {"i": 7} and headers.get("tenant") == "acme", headers


# -- through a node: a Python subscriber's dead letter replayed by an admin ------------------------


async def _http(node: NodeProcess, method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    return await asyncio.to_thread(node.http, method, path, data)


async def test_a_python_subscribers_dead_letter_replayed_through_the_node_reaches_it_again(node, remote):
    topic = uniq("replay")
    calls = Collector()
    healthy = False

    @remote.on(topic, group="rev37-replayers")
    async def fragile(env) -> None:
        calls.add((env.id, dict(env.headers)))
        if not healthy:
            raise switchyard.Reject("not yet")

    await remote.ready()
    message_id = await remote.publish(topic, {"i": 1})
    await calls.wait(1)

    async def letters():
        status, body = await _http(node, "GET", f"/v1/dlq?topic={topic}")
        assert status == 200, body
        return [i for i in body["items"] if i["message"]["id"] == message_id]

    deadline = time.monotonic() + 10
    found = await letters()
    while not found and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        found = await letters()
    assert len(found) == 1, found
    healthy = True
    status, body = await _http(node, "POST", "/v1/dlq/replay", {"ids": [found[0]["id"]]})
    assert status == 200 and body.get("replayed") == 1, (status, body)
    (first, _), (again, headers) = await calls.wait(2)
    assert first == again == message_id, "a replay keeps the message id"
    lowered = {k.lower(): v for k, v in headers.items()}
    assert any("replay-count" in k for k in lowered), headers
    assert await letters() == [], "a replayed entry leaves the dead-letter queue"
