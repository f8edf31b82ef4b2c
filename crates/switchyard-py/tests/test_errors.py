"""Each Rust error reaches Python as its typed exception, with its fields."""

from __future__ import annotations

import asyncio

import pytest

import switchyard
from switchyard import errors
from conftest import CreateUser, wait_for


async def test_no_handler(bus):
    with pytest.raises(switchyard.NoHandler) as e:
        await bus.send(CreateUser(name="x"))
    assert e.value.topic == "users.create"
    assert isinstance(e.value, switchyard.SendError) and isinstance(e.value, switchyard.SwitchyardError)


async def test_request_timeout(bus):
    release = asyncio.Event()

    @bus.handle(CreateUser)
    async def slow(cmd: CreateUser) -> int:
        await release.wait()
        return 1

    with pytest.raises(switchyard.RequestTimeout) as e:
        await bus.request(CreateUser(name="x"), timeout=0.05)
    assert e.value.timeout == pytest.approx(0.05)
    assert isinstance(e.value, TimeoutError)
    release.set()
    await bus.idle()


async def test_a_request_expired_in_the_queue_is_dead_lettered_expired(bus):
    release = asyncio.Event()
    started = asyncio.Event()
    calls = []

    @bus.handle(CreateUser)
    async def slow(cmd: CreateUser) -> int:
        calls.append(cmd.name)
        started.set()
        await release.wait()
        return 1

    first = asyncio.ensure_future(bus.send(CreateUser(name="first")))
    await wait_for(started)
    # Queued behind "first"; its deadline passes while it waits.
    with pytest.raises(switchyard.RequestTimeout):
        await bus.request(CreateUser(name="late"), timeout=0.05)
    release.set()
    assert await asyncio.wait_for(first, 5) == 1
    await bus.idle()
    assert calls == ["first"], "the expired request is not handled"
    [dl] = bus.dead_letters()
    assert dl.reason == "expired" and dl.attempts == 0
    assert dl.error.startswith("deadline passed while queued ("), dl.error


async def test_queue_full_names_the_subscription(bus):
    release = asyncio.Event()
    started = asyncio.Event()

    @bus.on("busy.x", name="busy", queue_capacity=1, overflow="reject_new")
    async def busy(env):
        started.set()
        await release.wait()

    await bus.publish("busy.x", {})  # taken by the worker
    await wait_for(started)
    await bus.publish("busy.x", {})  # waits in the queue
    with pytest.raises(switchyard.QueueFull) as e:
        await bus.publish("busy.x", {})
    assert e.value.subscriptions == ["busy"] and e.value.delivered == 0
    assert isinstance(e.value, switchyard.PublishError)
    release.set()
    await bus.idle()


async def test_block_overflow_waits_for_room_then_reports_full(bus):
    release = asyncio.Event()
    started = asyncio.Event()

    @bus.on("slow.x", name="slow", queue_capacity=1, overflow="block", overflow_timeout=0.05)
    async def slow(env):
        started.set()
        await release.wait()

    await bus.publish("slow.x", {})
    await wait_for(started)
    await bus.publish("slow.x", {})
    # Full: this publish waits on tokio (the pending path), then gives up after 50 ms.
    with pytest.raises(switchyard.QueueFull):
        await bus.publish("slow.x", {})
    # Full again, and room is made while it waits: it goes through.
    waiting = asyncio.ensure_future(bus.publish("slow.x", {}))
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(waiting, 5)
    await bus.idle()


async def test_decode_failed_in_the_handler_and_at_the_sender(bus):
    @bus.handle(CreateUser)
    async def create(cmd: CreateUser) -> int:
        return 1

    with pytest.raises(switchyard.DecodeFailed):
        await bus.send("users.create", {"nom": 1})
    [dl] = bus.dead_letters()
    assert dl.reason == "decode_failed" and dl.envelope.payload == b'{"nom":1}'

    @bus.handle("users.count")
    async def count(env) -> str:
        return "not a number"

    with pytest.raises(switchyard.DecodeFailed):
        await bus.send("users.count", {}, returns=int)


async def test_handler_failed_carries_the_traceback(bus):
    @bus.handle(CreateUser, max_attempts=2)
    async def create_user_that_fails(cmd: CreateUser) -> int:
        raise ValueError(f"bad name {cmd.name}")

    with pytest.raises(switchyard.HandlerFailed) as e:
        await bus.send(CreateUser(name="x"))
    assert e.value.attempts == 2
    assert "ValueError: bad name x" in e.value.error
    assert "Traceback (most recent call last)" in e.value.error
    assert "create_user_that_fails" in e.value.error


async def test_rejected(bus):
    @bus.handle(CreateUser)
    async def create(cmd: CreateUser) -> int:
        raise switchyard.Reject("names must be longer")

    with pytest.raises(switchyard.Rejected) as e:
        await bus.send(CreateUser(name="x"))
    assert e.value.reason == "names must be longer"
    [dl] = bus.dead_letters()
    assert dl.reason == "rejected" and dl.attempts == 1


async def test_shutting_down(bus):
    first = await bus.shutdown()
    with pytest.raises(switchyard.ShuttingDown) as p:
        await bus.publish("a.b", {})
    assert isinstance(p.value, switchyard.PublishError)
    with pytest.raises(switchyard.ShuttingDown) as s:
        await bus.send(CreateUser(name="x"))
    assert isinstance(s.value, switchyard.SendError)
    # Shutdown is idempotent, as in Rust: a second call returns the first call's report.
    assert await bus.shutdown() == first
    with pytest.raises(switchyard.ShuttingDown):
        bus.on("a.b", lambda env: None)


async def test_invalid_topics_and_patterns(bus):
    with pytest.raises(switchyard.InvalidTopic) as e:
        await bus.publish("bad..topic", {})
    assert isinstance(e.value, ValueError) and e.value.kind == "EmptySegment"
    with pytest.raises(switchyard.InvalidTopic):
        await bus.send("wild.*", {})
    with pytest.raises(switchyard.InvalidTopic):
        bus.on("a.#x", lambda env: None)


async def test_duplicate_handler_and_invalid_config(bus):
    bus.handle(CreateUser, lambda cmd: 1, name="first")
    with pytest.raises(switchyard.DuplicateHandler) as e:
        bus.handle(CreateUser, lambda cmd: 2)
    assert e.value.topic == "users.create" and e.value.existing == "first"
    with pytest.raises(switchyard.InvalidConfig):
        bus.on("a.b", lambda env: None, workers=0)
    with pytest.raises(switchyard.InvalidConfig):
        switchyard.Bus(queue_capacity=0)


async def test_not_processed_when_shutdown_cuts_commands_off():
    bus = switchyard.Bus()
    started = asyncio.Event()

    @bus.handle(CreateUser)
    async def stuck(cmd: CreateUser) -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    first = asyncio.ensure_future(bus.send(CreateUser(name="in-flight")))
    await wait_for(started)
    second = asyncio.ensure_future(bus.send(CreateUser(name="queued")))
    await asyncio.sleep(0)
    report = await bus.shutdown(timeout=0.05)
    assert len(report.left) == 2
    for f in (first, second):
        with pytest.raises(switchyard.NotProcessed):
            await f
    assert {dl.reason for dl in bus.dead_letters()} == {"shutdown"}


async def test_encode_failed(bus):
    with pytest.raises(switchyard.EncodeFailed) as e:
        await bus.publish("a.b", object())
    assert isinstance(e.value, TypeError) and "object is not JSON serializable" in str(e.value)


async def test_nan_and_infinities_are_encode_failed_not_invalid_json(bus):
    """NaN is not JSON: a Rust peer or the node cannot read it, so it is refused at once."""
    seen = []
    bus.on("a.#", lambda env: seen.append(env.payload))
    for bad in (float("nan"), float("inf"), {"x": [float("-inf")]}):
        with pytest.raises(switchyard.EncodeFailed) as e:
            await bus.publish("a.b", bad)
        assert "Out of range float values are not JSON compliant" in str(e.value), str(e.value)
    await bus.publish("a.b", {"x": 1.5})
    await bus.idle(5)
    assert seen == [b'{"x":1.5}']


def test_every_class_is_exported():
    for name in errors.__all__:
        assert getattr(switchyard, name) is getattr(errors, name)


async def test_too_large_names_both_sizes_and_nothing_is_delivered():
    bus = switchyard.Bus(max_message_bytes=1000)
    seen = []

    @bus.on("files.*")
    async def files(payload: bytes):
        seen.append(len(payload))

    with pytest.raises(switchyard.TooLarge) as e:
        await bus.publish("files.uploaded", b"x" * 1001)
    assert (e.value.size, e.value.limit) == (1001, 1000)
    assert e.value.limit_of == "the bus's max_message_bytes"
    assert isinstance(e.value, switchyard.PublishError)
    with pytest.raises(switchyard.TooLarge):
        await bus.send("files.store", b"y" * 2000)
    await bus.publish("files.uploaded", b"x" * 1000)
    await bus.idle()
    assert seen == [1000]
    await bus.shutdown()
