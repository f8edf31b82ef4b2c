"""What a subscriber reached through a node (``Bus.connect``, a manual-ack WebSocket
subscription) raises reaches the node's dead letters, as in process: ``Reject`` and
``Permanent`` dead-letter the message at once (reason ``rejected``), any other exception is a
failed attempt whose text the dead letter keeps, and a ``HandBack``'s reason is kept too.
Before, every one of them was a plain ``nack`` (the protocol had no reject or reason for
deliveries): a rejected message was tried 3 times and the dead letter said only "handler
asked for a retry"."""

from __future__ import annotations

import pytest

import switchyard
from conftest import Collector
from test_node import connect, eventually, http


async def _dead_letter(node, topic: str) -> dict:
    async def listed():
        status, dlq = await http(node, "GET", f"/v1/dlq?topic={topic}")
        assert status == 200, dlq
        return dlq["items"]

    (letter,) = await eventually(listed)
    return letter


@pytest.mark.parametrize(
    "raised, reason, text",
    [
        (lambda: switchyard.Reject("not an order"), "rejected", "not an order"),
        (lambda: switchyard.Permanent("schema v1 is gone"), "rejected", "schema v1 is gone"),
    ],
    ids=["reject", "permanent"],
)
async def test_a_subscriber_s_reject_dead_letters_at_once_with_its_reason(node, raised, reason, text):
    topic = f"node.subfail.{reason}.{text.split()[0]}"
    sub = await connect(node)
    pub = await connect(node)
    calls = Collector()
    try:

        @sub.on(topic)
        async def refuse(p: dict, env) -> None:
            calls.add(env.attempt)
            raise raised()

        await sub.ready()
        await pub.publish(topic, {"n": 1})
        letter = await _dead_letter(node, topic)
        assert calls.items == [1], "a refused message was tried again"
        assert letter["reason"] == reason, letter
        assert text in letter["error"], letter
    finally:
        await sub.shutdown(timeout=2.0)
        await pub.shutdown(timeout=2.0)


async def test_a_subscriber_s_exception_text_is_kept_in_the_dead_letter(node):
    topic = "node.subfail.exception"
    sub = await connect(node)
    pub = await connect(node)
    calls = Collector()
    try:

        @sub.on(topic)
        async def divide(p: dict, env) -> None:
            calls.add(env.attempt)
            _ = p["n"] / 0

        await sub.ready()
        await pub.publish(topic, {"n": 1})
        letter = await _dead_letter(node, topic)
        assert calls.items == [1, 2, 3], "the node's 3 attempts"
        assert "ZeroDivisionError" in letter["error"], letter
    finally:
        await sub.shutdown(timeout=2.0)
        await pub.shutdown(timeout=2.0)


async def test_a_subscriber_s_hand_back_reason_is_kept_in_the_dead_letter(node):
    topic = "node.subfail.handback"
    sub = await connect(node)
    pub = await connect(node)
    try:

        @sub.on(topic)
        async def elsewhere(p: dict, env) -> None:
            raise switchyard.HandBack("tenant 7 lives on another node")

        await sub.ready()
        await pub.publish(topic, {"n": 1})
        letter = await _dead_letter(node, topic)
        assert "tenant 7 lives on another node" in letter["error"], letter
    finally:
        await sub.shutdown(timeout=2.0)
        await pub.shutdown(timeout=2.0)
