"""The same bus on the embedded log and on NATS JetStream, with a Rust process on the other
side exchanging the same JSON messages."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from dataclasses import dataclass

import pytest

import switchyard
from conftest import Collector, OrderPlaced, drop_stream, require_nats, rust_peer


@switchyard.event("orders.shipped")
@dataclass
class OrderShipped:
    id: int
    carrier: str


async def test_events_survive_a_restart_on_the_log(tmp_path, collector):
    bus = switchyard.Bus.open_log(tmp_path / "bus")
    for i in range(5):
        await bus.publish(OrderShipped(id=i, carrier="post"))
    await bus.shutdown()
    bus.close()

    bus = switchyard.Bus.open_log(tmp_path / "bus")

    @bus.on(OrderShipped, name="tracker")
    async def track(ev: OrderShipped):
        collector.add(ev.id)

    assert sorted(await collector.wait(5)) == [0, 1, 2, 3, 4]
    await bus.shutdown()
    bus.close()


async def test_a_log_is_locked_while_open(tmp_path):
    bus = switchyard.Bus.open_log(tmp_path / "bus")
    with pytest.raises(switchyard.TransportError):
        switchyard.Bus.open_log(tmp_path / "bus")
    await bus.shutdown()
    bus.close()


async def test_rust_and_python_processes_on_one_log(tmp_path):
    peer = rust_peer()
    log = str(tmp_path / "shared-log")
    # 1. A Rust process publishes typed Rust structs.
    out = subprocess.run([peer, "log-publish", log, "6"], check=True, capture_output=True, text=True, timeout=60)
    published = [json.loads(l) for l in out.stdout.splitlines()]
    assert len(published) == 6

    # 2. Python reads them as dataclasses and answers each with an event caused by it.
    bus = switchyard.Bus.open_log(log)
    got = Collector()

    @bus.on(OrderPlaced, name="py-fulfilment")
    async def fulfil(order: OrderPlaced, env):
        got.add((order, env))
        await bus.publish("py.shipped", OrderShipped(id=order.id, carrier="py"))

    items = await got.wait(6)
    assert sorted(o.id for o, _ in items) == list(range(6))
    for order, env in items:
        assert order == OrderPlaced(id=order.id, sku=f"sku-{order.id}", qty=order.id + 1, tags=["rust"])
        assert env.type_name == "OrderPlaced"
    await bus.shutdown()
    bus.close()

    # 3. The Rust process reads Python's events, with causation and correlation intact.
    out = subprocess.run([peer, "log-consume", log, "rust-audit", "py.#", "6"], check=True, capture_output=True, text=True, timeout=60)
    replies = [json.loads(l) for l in out.stdout.splitlines()]
    assert len(replies) == 6
    by_id = {p["id"]: p for p in published}
    for r in replies:
        assert r["topic"] == "py.shipped" and r["type_name"] == "OrderShipped"
        cause = by_id[r["causation_id"]]
        assert r["correlation_id"] == cause["correlation_id"]
        assert r["payload"] == {"id": cause["payload"]["id"], "carrier": "py"}


async def test_rust_and_python_processes_on_nats():
    require_nats()
    peer = rust_peer()
    run = uuid.uuid4().hex[:12]
    prefix, stream = f"interop{run}", f"PYINTEROP_{run}"
    n = 5
    proc = await asyncio.create_subprocess_exec(
        peer, "nats-echo", "nats://127.0.0.1:4222", stream, prefix, str(n),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert ready == {"ready": True}
        bus = await switchyard.Bus.connect_nats(streams={stream: [f"{prefix}.#"]}, max_age=3600)
        confirmations = Collector()
        starts = []

        @bus.on(f"{prefix}.rust.confirmed", name=f"py-confirmations-{run}")
        async def confirmed(data: dict, env):
            confirmations.add((data, env))

        @bus.on(f"{prefix}.start", name=f"py-start-{run}")
        async def start(env):
            starts.append(env)
            for i in range(n):
                await bus.publish(f"{prefix}.py.orders", OrderPlaced(id=i, sku=f"py-{i}", qty=1))

        await bus.publish(f"{prefix}.start", {})
        items = await confirmations.wait(n, timeout=30)
        [start_env] = starts
        assert sorted(d["id"] for d, _ in items) == list(range(n))
        for data, env in items:
            assert data["by"] == "rust"
            # One flow across both processes: the Python start event's correlation id.
            assert env.correlation_id == start_env.correlation_id == start_env.id
            assert env.causation_id is not None and env.causation_id != start_env.id
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await bus.shutdown()
        bus.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await drop_stream(stream)
