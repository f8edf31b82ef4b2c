"""``switchyard.HandBack`` from a command handler reached through a node (``Bus.connect``,
the handler registered over the WebSocket gateway) is a hand-back, as in process: not a
failed attempt the node retries in place. A command does not come from a transport
delivery, so (as with the in-process bus) it has nowhere to go back to: it fails for good at
once, the sender learns why, and it is dead-lettered after that one call."""

from __future__ import annotations

import pytest

import switchyard
from conftest import Collector
from test_node import connect, eventually, http


@pytest.mark.parametrize("after", [None, 0.05])
async def test_a_remote_command_handler_hand_back_is_not_retried_as_a_failure(node, after):
    server = await connect(node)
    topic = f"node.handback.cmd{'' if after is None else '.later'}"
    calls = Collector()
    try:

        @server.handle(topic)
        async def not_mine(p: dict, env) -> int:
            calls.add(env.attempt)
            raise switchyard.HandBack("not mine", after=after)

        await server.ready()
        status, body = await http(node, "POST", f"/v1/send/{topic}", {"n": 1})
        assert status == 422, body
        assert body["error"]["kind"] == "handler_failed", body
        assert "handed back to the transport" in body["error"]["message"], body
        assert "not mine" in body["error"]["message"], body
        assert calls.items == [1], "a hand-back is not a failed attempt to retry"

        async def dead_lettered():
            status, dlq = await http(node, "GET", f"/v1/dlq?topic={topic}")
            assert status == 200, dlq
            return dlq["items"]

        (letter,) = await eventually(dead_lettered)
        assert letter["attempts"] == 1, letter
        assert "handed back to the transport: " in letter["error"], letter
    finally:
        await server.shutdown()


async def test_a_remote_hand_back_reaches_a_sender_on_another_connection(node, remote):
    server = await connect(node)
    try:

        @server.handle("node.handback.ws")
        async def not_mine(p: dict) -> int:
            raise switchyard.HandBack("elsewhere")

        await server.ready()
        with pytest.raises(switchyard.HandlerFailed) as e:
            await remote.send("node.handback.ws", {})
        assert "handed back to the transport" in e.value.error
        assert "elsewhere" in e.value.error
        assert "after 1 attempt(s)" in e.value.error  # the error op does not carry `attempts`
    finally:
        await server.shutdown()
