"""Prefetch: a worker hands the loop several queued messages at once (``on(prefetch=)``),
each still one handler call, in order, with its own outcome."""

from __future__ import annotations

import asyncio

import pytest

import switchyard
from conftest import Collector, wait_for


def in_flight(bus: switchyard.Bus) -> int:
    [info] = bus.registry()
    return info["in_flight"]


@pytest.mark.parametrize("prefetch", [1, 4])
async def test_a_hand_over_holds_up_to_prefetch_messages_in_flight(bus, prefetch):
    gate = asyncio.Event()
    seen: list[int] = []
    flight: list[int] = []
    done = asyncio.Event()

    @bus.on("pf.x", prefetch=prefetch)
    async def handler(payload: bytes) -> None:
        i = int(payload)
        if i == 0:
            await gate.wait()
        seen.append(i)
        flight.append(in_flight(bus))
        if i == 8:
            done.set()

    for i in range(9):
        await bus.publish("pf.x", str(i).encode())
    gate.set()
    await wait_for(done)
    assert seen == list(range(9))
    # However the first hand-over was cut, 9 queued messages make one of `prefetch`.
    assert max(flight) == prefetch, flight
    await bus.idle()
    assert bus.pending() == 0


async def test_order_and_in_place_retries_hold_with_suspending_and_failing_handlers(bus):
    n = 40
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    @bus.on("pf.order", queue_capacity=n)
    async def handler(payload: bytes, env) -> None:
        i = int(payload)
        if i % 3 == 0:
            await asyncio.sleep(0)  # suspends: the rest of the hand-over runs in a task
        seen.append((i, env.attempt))
        if i in (5, 6, 21) and env.attempt == 1:  # 6 and 21 fail after suspending
            raise RuntimeError(f"once {i}")
        if i == n - 1:
            done.set()

    for i in range(n):
        await bus.publish("pf.order", str(i).encode())
    await asyncio.wait_for(done.wait(), 10)
    expected = []
    for i in range(n):
        expected.append((i, 1))
        if i in (5, 6, 21):
            expected.append((i, 2))
    assert seen == expected
    await bus.idle()  # the last hand-over's answers are settled after its handlers ran
    assert bus.dead_letters() == []
    stats = bus.registry()[0]["stats"]
    assert stats["acked"] == n and stats["retried"] == 3


async def test_a_failing_prefetched_message_is_dead_lettered_with_its_traceback(bus):
    handled = Collector()

    @bus.on("pf.dl", name="pf-dl", max_attempts=2)
    async def handler(payload: bytes) -> None:
        i = int(payload)
        if i == 2:
            raise ValueError(f"bad item {i}")
        handled.add(i)

    for i in range(5):
        await bus.publish("pf.dl", str(i).encode())
    await bus.idle()
    assert handled.items == [0, 1, 3, 4]
    [dl] = bus.dead_letters()
    assert dl.reason == "handler_failed" and dl.attempts == 2 and dl.handler == "pf-dl"
    assert dl.error.startswith("ValueError: bad item 2")
    assert "Traceback" in dl.error and "raise ValueError" in dl.error


async def test_shutdown_accounts_for_messages_handed_over_and_not_run():
    bus = switchyard.Bus()
    started = asyncio.Event()
    calls = Collector()

    @bus.on("pf.stuck", prefetch=4)
    async def stuck(payload: bytes) -> None:
        calls.add(int(payload))
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            calls.add("cancelled")
            raise

    for i in range(6):
        await bus.publish("pf.stuck", str(i).encode())
    await wait_for(started)
    report = await bus.shutdown(timeout=0.05)
    assert report.drained == 0 and len(report.left) == 6, report
    assert await calls.wait(2) == [0, "cancelled"], "the messages after the stuck one never ran"
    letters = bus.dead_letters()
    assert sorted(dl.envelope.id for dl in letters) == sorted(report.left)
    assert {dl.reason for dl in letters} == {"shutdown"}
    assert bus.pending() == 0
    bus.close()


async def test_prefetch_below_one_is_refused(bus):
    with pytest.raises(ValueError):
        bus.on("pf.bad", lambda p: None, prefetch=0)
