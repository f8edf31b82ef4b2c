"""Review rev29: a Python class's `version=` across the embedded log and a restart.

`python test_review_rev29.py write <dir>` writes the records the Rust test
`switchyard-contracts` `review_rev29::python` reads with an upcaster (version 2 as it is,
version 1 upcast)."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import switchyard

TOPIC = "rev29.orders"


def _order_v1():
    @switchyard.event(TOPIC)
    @dataclass
    class Order:
        id: int
        amount: float

    return Order


def _order_v2():
    @switchyard.event(TOPIC, version=2)
    @dataclass
    class Order:
        id: int
        amount_cents: int
        currency: str

    return Order


OrderV1 = _order_v1()
OrderV2 = _order_v2()


async def write_log(path) -> None:
    """A version-2 order, then a version-1 order from a producer not yet upgraded."""
    bus = switchyard.Bus.open_log(path)
    await bus.publish(OrderV2(id=10, amount_cents=250, currency="NOK"))
    await bus.publish(OrderV1(id=11, amount=1.5))
    await bus.shutdown()
    bus.close()


async def test_the_class_version_is_in_the_log_after_a_restart(tmp_path, collector):
    await write_log(tmp_path / "bus")
    bus = switchyard.Bus.open_log(tmp_path / "bus")

    @bus.on(TOPIC, name="raw")
    async def raw(env):
        collector.add((env.type_name, env.type_version))

    assert await collector.wait(2) == [("Order", 2), ("Order", 1)]
    await bus.shutdown()
    bus.close()


async def test_a_v1_handler_reads_a_v2_order_it_can_fill_and_ignores_extra_fields(tmp_path, collector):
    """Forward compatibility on the Python side: unknown fields ignored, like serde."""

    @switchyard.event(TOPIC, version=2)
    @dataclass
    class Order:
        id: int
        amount: float
        currency: str

    bus = switchyard.Bus.open_log(tmp_path / "bus")
    await bus.publish(Order(id=1, amount=2.5, currency="EUR"))
    await bus.shutdown()
    bus.close()

    bus = switchyard.Bus.open_log(tmp_path / "bus")

    @bus.on(OrderV1, name="legacy")
    async def legacy(o: OrderV1, env):
        collector.add((o, env.type_version))

    assert await collector.wait(1) == [(OrderV1(id=1, amount=2.5), 2)]
    await bus.shutdown()
    bus.close()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "write":
        sys.exit("usage: test_review_rev29.py write <dir>")
    asyncio.run(write_log(sys.argv[2]))
