"""``switchyard.HandBack`` from a subscriber reached through a node (``Bus.connect``, a
manual-ack WebSocket subscription) is the bus's hand-back, as in process: the client sends
``nack`` with ``hand_back: true``. Before, it went as a plain nack, an attempt of the node's
retry policy: a message handed back 3 times was dead-lettered.

On the log the delivery goes back to the transport (not an attempt: it comes back as
attempt 1, counted in ``handed_back``); in memory it has nowhere to go back to and fails for
good at once (one call), as with the in-process bus (docs/bus.md)."""

from __future__ import annotations

import asyncio

import pytest

import switchyard
from conftest import Collector, node_binary, start_node
from test_node import connect, eventually, http


@pytest.fixture(scope="module")
def log_node(tmp_path_factory: pytest.TempPathFactory):
    """A node of its own on the embedded log (auth on), killed at the end of the module."""
    tmp = tmp_path_factory.mktemp("log-node")
    n = start_node(tmp, node_binary(), transport=f'kind = "log"\ndata_dir = "{tmp / "data"}"')
    yield n
    n.proc.kill()
    n.proc.wait(10)


async def _row(node, topic: str) -> dict | None:
    """The `/v1/stats` `handlers` row of the subscription that handles ``topic``."""
    status, stats = await http(node, "GET", "/v1/stats")
    assert status == 200, stats
    rows = stats["handlers"]["handlers"]
    return next((r for r in rows if r["topic"] == topic and r["handler"].startswith("ws:py:")), None)


async def test_a_subscriber_hand_back_through_a_log_node_is_no_attempt(log_node):
    topic = "node.subback.log"
    sub = await connect(log_node)
    pub = await connect(log_node)
    calls = Collector()
    try:

        @sub.on(topic)
        async def not_yet(p: dict, env) -> None:
            calls.add(env.attempt)
            if len(calls.items) <= 4:
                raise switchyard.HandBack("not now", after=0.01)

        await sub.ready()
        await pub.publish(topic, {"n": 1})
        try:
            await calls.wait(5)
        except asyncio.TimeoutError:
            _, dlq = await http(log_node, "GET", f"/v1/dlq?topic={topic}")
            pytest.fail(f"called with attempts {calls.items}, then no more; dead letters: {dlq['items']}")
        assert calls.items == [1, 1, 1, 1, 1], "a hand-back counted as an attempt"

        async def acked():
            row = await _row(log_node, topic)
            return row if row and row["acked"] == 1 else None

        row = await eventually(acked)
        assert row["handed_back"] == 4, row
        assert row["failed"] == 0, row
        status, dlq = await http(log_node, "GET", f"/v1/dlq?topic={topic}")
        assert status == 200, dlq
        assert dlq["items"] == [], "handed back, yet dead-lettered"
    finally:
        await sub.shutdown(timeout=2.0)
        await pub.shutdown(timeout=2.0)


async def test_in_memory_a_subscriber_hand_back_fails_for_good_at_once(node):
    topic = "node.subback.memory"
    sub = await connect(node)
    pub = await connect(node)
    calls = Collector()
    try:

        @sub.on(topic)
        async def not_mine(p: dict, env) -> None:
            calls.add(env.attempt)
            raise switchyard.HandBack("not mine")

        await sub.ready()
        await pub.publish(topic, {"n": 1})
        await calls.wait(1)

        async def dead_lettered():
            status, dlq = await http(node, "GET", f"/v1/dlq?topic={topic}")
            assert status == 200, dlq
            return dlq["items"]

        (letter,) = await eventually(dead_lettered)
        assert calls.items == [1], "a hand-back was retried as a failed attempt"
        assert letter["attempts"] == 1, letter
    finally:
        await sub.shutdown(timeout=2.0)
        await pub.shutdown(timeout=2.0)
