"""Outside-in review (rev37), second part: the embedded log across a reopen (what shutdown
left, large payloads, delayed messages), GIL and many wildcard subscribers, bad input, typed
command results, workers, shutdown while a publish waits for room. Helpers and the defect
marker are in test_review_rev37.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

import switchyard
from conftest import Collector, wait_for
from test_review_rev37 import index, rust, stats_of, uniq, until

# -- the embedded log ---------------------------------------------------------------------------


async def test_on_the_log_what_shutdown_left_comes_back_after_a_reopen_and_what_was_acked_does_not(tmp_path):
    path = tmp_path / "log"
    topic = uniq("durable")
    n = 20
    bus = switchyard.Bus.open_log(path)
    first: list[int] = []
    blocked = asyncio.Event()

    @bus.on(topic, name="worker", prefetch=8)
    async def worker(env):
        i = index(env.payload)
        if i == 5:
            blocked.set()
            await asyncio.Event().wait()
        first.append(i)

    for i in range(n):
        await bus.publish(topic, {"i": i})
    await wait_for(blocked, 10)
    report = await asyncio.wait_for(bus.shutdown(timeout=0.2), 20)
    bus.close()
    assert first == [0, 1, 2, 3, 4], first
    assert report.nacked, f"the message its handler held at the deadline is not reported nacked: {report}"
    assert bus.dead_letters() == [], "on a transport, what is left goes back to it"

    bus = switchyard.Bus.open_log(path)
    second = Collector()
    auditor = Collector()
    bus.on(topic, lambda env: second.add(index(env.payload)), name="worker")
    bus.on(topic, lambda env: auditor.add(index(env.payload)), name="auditor")
    try:
        await bus.publish(topic, {"i": 99})
        got = await second.wait(n - 5 + 1, timeout=20)
        assert sorted(got) == list(range(5, n)) + [99], (
            f"after the reopen the group got {sorted(got)}: expected what it had not acked "
            f"(5..{n - 1}) and the new message, not the acked 0..4"
        )
        assert sorted(await auditor.wait(n + 1, timeout=20)) == list(range(n)) + [99], (
            "a new group starts at the oldest message"
        )
    finally:
        await bus.shutdown()
        bus.close()


async def test_large_payloads_on_the_log_survive_a_reopen_and_one_over_its_record_limit_is_too_large(tmp_path):
    path = tmp_path / "log"
    topic = uniq("big")
    blob = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    bus = switchyard.Bus.open_log(path)
    try:
        await bus.publish(topic, blob)
        with pytest.raises(switchyard.TooLarge) as e:
            await bus.publish(topic, b"x" * (9 * 1024 * 1024))
        assert e.value.size and e.value.size >= 9 * 1024 * 1024 and e.value.limit == 8 * 1024 * 1024, (
            e.value.size, e.value.limit, str(e.value))
        assert "max_record_bytes" in (e.value.limit_of or ""), e.value.limit_of
    finally:
        await bus.shutdown()
        bus.close()
    bus = switchyard.Bus.open_log(path)
    got = Collector()

    @bus.on(topic, name="reader")
    async def reader(payload: bytes):
        got.add(payload)

    try:
        [received] = await got.wait(1, timeout=30)
        assert received == blob
    finally:
        await bus.shutdown()
        bus.close()


# -- GIL and many subscribers ---------------------------------------------------------------------


async def test_a_headers_filtered_python_subscription_does_not_stall_a_rust_publisher_while_the_gil_is_held(bus):
    # Documented: `headers=` filters do not need the GIL (only `filter=` callables do), so a
    # Python subscription on the Rust publisher's topic that filters by header does not
    # slow it down while a Python handler holds the GIL.
    counter = rust.rust_counter(bus._native, "rust-counter", "rev37.rust.ticks")
    bus.on("rev37.rust.ticks", lambda env: None, name="tenant-only", headers={"tenant": "acme"})
    measured = Collector()

    @bus.on("rev37.py.spin")
    def spin(env):
        before = counter.count()
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass
        measured.add(counter.count() - before)

    publisher = bus._wait(rust.rust_publish(bus._native, "rev37.rust.ticks", 2_000_000, b"x" * 64))
    await bus.publish("rev37.py.spin", {})
    [moved] = await measured.wait(1)
    publisher.cancel()
    assert moved >= 1000, f"the Rust publisher moved {moved} messages in 300 ms while the GIL was held"
    assert stats_of(bus, "tenant-only")["filtered"] > 0


def _matches(pattern: str, topic: str) -> bool:
    """AMQP topic matching (docs/bus.md): `*` one segment, `#` zero or more."""

    def go(p: list[str], t: list[str]) -> bool:
        if not p:
            return not t
        if p[0] == "#":
            return any(go(p[1:], t[k:]) for k in range(len(t) + 1))
        if not t:
            return False
        return (p[0] == "*" or p[0] == t[0]) and go(p[1:], t[1:])

    return go(pattern.split("."), topic.split("."))


async def test_hundreds_of_wildcard_subscribers_each_get_exactly_the_topics_they_match(bus):
    base = uniq("wild")
    words = ["a", "b", "c"]
    topics = [f"{base}.{x}" for x in words]
    topics += [f"{base}.{x}.{y}" for x in words for y in words]
    topics += [f"{base}.{x}.{y}.{z}" for x in words for y in words for z in ("a", "z")]
    topics.append(base)
    shapes = ["#", "*", "*.*", "a.#", "#.a", "*.b.#", "#.b.*", "a.*.z", "#.#", "c", "a.b", "*.#.z", "b.#.a"]
    patterns = [f"{base}.{s}" for s in shapes] + [base]
    subs: dict[str, list[str]] = {}
    for k in range(300):
        pattern = patterns[k % len(patterns)]
        name = f"w{k}"
        subs[name] = []
        bus.on(pattern, (lambda acc: (lambda env: acc.append(env.topic)))(subs[name]), name=name)
    for t in topics:
        await bus.publish(t, b"")
    await bus.idle(timeout=30)
    for k in range(300):
        pattern = patterns[k % len(patterns)]
        expected = sorted(t for t in topics if _matches(pattern, t))
        assert sorted(subs[f"w{k}"]) == expected, (pattern, sorted(subs[f"w{k}"]), expected)


# -- bad input ------------------------------------------------------------------------------------


async def test_bad_bus_and_log_settings_are_python_errors_naming_the_setting(tmp_path):
    cases = [
        (lambda: switchyard.Bus(workers=0), "workers"),
        (lambda: switchyard.Bus(queue_capacity=0), "capacity"),
        (lambda: switchyard.Bus(max_attempts=0), "attempts"),
        (lambda: switchyard.Bus(retry_delay=-1.0), "retry"),
        (lambda: switchyard.Bus(overflow_timeout=float("nan")), "timeout"),
        (lambda: switchyard.Bus(max_message_bytes=0), "max_message_bytes"),
        (lambda: switchyard.Bus.open_log(tmp_path / "a", durability="sometimes"), "durability"),
        (lambda: switchyard.Bus.open_log(tmp_path / "b", durability="interval", interval=-1.0), "interval"),
    ]
    problems = []
    for make, word in cases:
        try:
            made = make()
        except (ValueError, TypeError, OverflowError) as e:
            if word not in str(e).lower().replace(" ", "_") and word not in str(e).lower():
                problems.append(f"{word}: the message does not name it: {type(e).__name__}: {e}")
        except BaseException as e:  # a PanicException is a BaseException
            problems.append(f"{word}: {type(e).__module__}.{type(e).__name__}: {e}")
        else:
            problems.append(f"{word}: accepted")
            if isinstance(made, switchyard.Bus):
                await made.shutdown(timeout=1)
                made.close()
    assert problems == [], "\n".join(problems)


async def test_a_log_path_that_is_a_file_is_a_transport_error_of_kind_io(tmp_path):
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    with pytest.raises(switchyard.TransportError) as e:
        switchyard.Bus.open_log(f)
    assert e.value.kind == "io", (e.value.kind, str(e.value))
    assert str(f) in str(e.value) or "not-a-dir" in str(e.value), str(e.value)


async def test_bad_subscription_options_are_refused_and_register_nothing(bus):
    topic = uniq("badopts")
    cases = [
        ("workers=0", lambda: bus.on(topic, lambda env: None, workers=0)),
        ("max_attempts=0", lambda: bus.on(topic, lambda env: None, max_attempts=0)),
        ("block, overflow_timeout=-1", lambda: bus.on(topic, lambda env: None, overflow="block", overflow_timeout=-1.0)),
        ("on_batch max_size=0", lambda: bus.on_batch(topic, lambda items: None, max_size=0)),
        ("on_batch max_wait=-1", lambda: bus.on_batch(topic, lambda items: None, max_wait=-1.0)),
        ("handle workers=0", lambda: bus.handle(topic + ".cmd", lambda c: None, workers=0)),
        ("pattern of 300 bytes", lambda: bus.on("a." * 150 + "#", lambda env: None)),
    ]
    problems = []
    for what, call in cases:
        try:
            call()
        except (ValueError, TypeError, OverflowError):
            pass
        except BaseException as e:
            problems.append(f"{what}: {type(e).__module__}.{type(e).__name__}: {e}")
        else:
            problems.append(f"{what}: accepted")
    assert problems == [], "\n".join(problems)
    assert bus.registry() == [], bus.registry()


async def test_bad_publish_input_is_refused_with_a_message_naming_the_problem(bus):
    topic = uniq("badpub")
    long_topic = ".".join(["seg"] * 70)  # 279 bytes: over the 255-byte limit
    with pytest.raises(switchyard.InvalidTopic) as e:
        await bus.publish(long_topic, b"x")
    assert e.value.kind and "255" in str(e.value), (e.value.kind, str(e.value))
    with pytest.raises(switchyard.InvalidTopic) as e:
        await bus.publish("orders..placed", b"x")
    assert "orders..placed" in str(e.value) or "empty" in str(e.value).lower(), str(e.value)
    with pytest.raises(switchyard.EncodeFailed) as e:
        await bus.publish(topic, {"at": object()})
    assert "object" in str(e.value), str(e.value)
    with pytest.raises(switchyard.EncodeFailed) as e:
        await bus.publish(topic, {1j: "complex key"})
    assert "complex" in str(e.value), str(e.value)
    with pytest.raises(TypeError):
        await bus.publish(b"bytes.topic", b"x")
    with pytest.raises(TypeError):
        await bus.request(topic, {}, timeout="1")
    with pytest.raises(TypeError):
        await bus.publish(topic, b"x", priority="high")
    assert bus.pending() == 0
    # Still usable.
    seen = Collector()
    bus.on(topic, lambda env: seen.add(env.payload))
    await bus.publish(topic, "text")
    assert await seen.wait(1) == [b'"text"']


async def test_a_request_deadline_bounds_the_wait_while_the_handler_is_busy(bus):
    topic = uniq("deadline")
    release = asyncio.Event()
    started = asyncio.Event()

    @bus.handle(topic)
    async def slow(data: dict) -> int:
        started.set()
        await release.wait()
        return 1

    first = asyncio.ensure_future(bus.send(topic, {}))
    await wait_for(started)
    t0 = time.monotonic()
    with pytest.raises(switchyard.RequestTimeout) as e:
        await bus.request(topic, {}, timeout=0.2)
    took = time.monotonic() - t0
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, asyncio.TimeoutError)
    assert e.value.timeout == pytest.approx(0.2), e.value.timeout
    assert 0.15 <= took < 5, took
    release.set()
    assert await asyncio.wait_for(first, 10) == 1
    await bus.idle(timeout=10)
    reasons = [dl.reason for dl in bus.dead_letters()]
    assert reasons == ["expired"], reasons


# -- typed commands, concurrency, delays and shutdown while publishing ---------------------------


@dataclass
class Line:
    sku: str
    qty: int


@switchyard.command("rev37.basket.lines", returns=list[Line])
@dataclass
class BasketLines:
    basket: int


async def test_a_typed_command_result_decodes_into_its_declared_type_or_fails_at_the_sender(bus):
    @bus.handle(BasketLines)
    def lines(cmd: BasketLines) -> list[Line]:
        return [Line(sku=f"s{cmd.basket}-{k}", qty=k) for k in range(3)]

    got = await bus.send(BasketLines(basket=4))
    assert got == [Line("s4-0", 0), Line("s4-1", 1), Line("s4-2", 2)], got
    # The reply does not fit the type the sender asked for: DecodeFailed at the sender,
    # and the handler's work is not redone.
    with pytest.raises(switchyard.DecodeFailed) as e:
        await bus.send(BasketLines(basket=5), returns=int)
    assert "int" in str(e.value), str(e.value)
    assert stats_of(bus, BasketLines.TOPIC if hasattr(BasketLines, "TOPIC") else "rev37.basket.lines")["acked"] == 2


@pytest.mark.parametrize("prefetch", [1, 64])
async def test_a_queued_backlog_is_spread_over_the_workers(bus, prefetch):
    # docs/python.md: `workers` is the number of handler calls in flight. Four blockers keep
    # the four workers busy while twelve messages queue; once the blockers finish, the
    # backlog should run four at a time, as it does with prefetch=1.
    topic = uniq("backlog")
    blockers_gate = asyncio.Event()
    backlog_gate = asyncio.Event()
    four = asyncio.Event()
    started: list[int] = []
    in_flight = 0
    peak = 0
    done = Collector()

    @bus.on(topic, name="pool", workers=4, prefetch=prefetch)
    async def pool(data: dict):
        nonlocal in_flight, peak
        if "b" in data:
            started.append(data["b"])
            await blockers_gate.wait()
            return
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 4:
            four.set()
        await backlog_gate.wait()
        in_flight -= 1
        done.add(data["i"])

    for b in range(4):
        await bus.publish(topic, {"b": b})
        await until(lambda: len(started) == b + 1, what=f"blocker {b} to start")
    for i in range(12):
        await bus.publish(topic, {"i": i})
    blockers_gate.set()
    try:
        await asyncio.wait_for(four.wait(), 5)
    except asyncio.TimeoutError:
        pass
    seen_peak = peak
    backlog_gate.set()
    assert sorted(await done.wait(12, timeout=20)) == list(range(12))
    assert seen_peak == 4, (
        f"only {seen_peak} of the 12 queued messages were in flight at once with workers=4 "
        f"(prefetch={prefetch}): one worker took the backlog and ran it one by one"
    )


async def test_a_delayed_publish_on_the_log_is_delivered_after_a_reopen(tmp_path):
    # docs/log.md: delayed messages keep their due time across a restart. From Python: a
    # message published with delay= and not due at shutdown is not lost.
    path = tmp_path / "log"
    topic = uniq("later")
    bus = switchyard.Bus.open_log(path)
    try:
        message_id = await bus.publish(topic, {"i": 1}, delay=1.0)
        assert isinstance(message_id, str) and message_id
    finally:
        report = await bus.shutdown(timeout=1)
        bus.close()
    bus = switchyard.Bus.open_log(path)
    got = Collector()
    bus.on(topic, lambda env: got.add(env.id), name="later-reader")
    try:
        try:
            [seen] = await got.wait(1, timeout=20)
        except asyncio.TimeoutError:
            pytest.fail(f"the delayed message {message_id} never arrived after the reopen (shutdown report {report})")
        assert seen == message_id
    finally:
        await bus.shutdown()
        bus.close()


async def test_shutdown_while_a_publish_waits_for_room_settles_it_one_way_or_the_other():
    bus = switchyard.Bus()
    topic = uniq("blockedpub")
    release = asyncio.Event()
    started = asyncio.Event()
    handled: list[int] = []

    @bus.on(topic, name="narrow", queue_capacity=1, overflow="block", overflow_timeout=30.0)
    async def narrow(env):
        started.set()
        await release.wait()
        handled.append(index(env.payload))

    await bus.publish(topic, {"i": 0})
    await wait_for(started)
    await bus.publish(topic, {"i": 1})
    blocked = asyncio.ensure_future(bus.publish(topic, {"i": 2}))
    await until(lambda: bus._native.calls_in_flight() == 1, what="the third publish to wait for room")
    shutdown = asyncio.ensure_future(bus.shutdown(timeout=0.3))
    outcome = None
    try:
        await asyncio.wait_for(asyncio.shield(blocked), 10)
        outcome = "published"
    except (switchyard.ShuttingDown, switchyard.QueueFull) as e:
        outcome = type(e).__name__
    except asyncio.TimeoutError:
        pytest.fail("the publish waiting for room neither went in nor failed within 10 s of the shutdown")
    report = await asyncio.wait_for(shutdown, 10)
    release.set()
    dead = sorted(index(dl.envelope.payload) for dl in bus.dead_letters())
    accounted = sorted(handled + dead)
    if outcome == "published":
        assert accounted == [0, 1, 2], (outcome, handled, dead, report)
    else:
        assert accounted == [0, 1], (outcome, handled, dead, report)
    bus.close()
