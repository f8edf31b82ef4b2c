"""Through a node: `Bus.connect` to a running `switchyard serve` over its WebSocket gateway.

The `node` fixture (conftest.py) starts the CLI's node on an ephemeral port with auth on;
other clients are a second connection and the node's HTTP API (whose send is the Rust bus's
`send`, so a Python handler here serves commands sent from Rust).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

import switchyard
from conftest import NODE_TOKEN, READER_TOKEN, Collector, NodeProcess




@switchyard.event("node.users.created")
@dataclass
class NodeUserCreated:
    id: int
    name: str = ""


@switchyard.command("node.users.create", returns=int)
@dataclass
class NodeCreateUser:
    name: str


@dataclass
class Doubled:
    n: int


async def connect(node: NodeProcess, token: str = NODE_TOKEN) -> switchyard.ConnectedBus:
    return await switchyard.Bus.connect(node.url, token=token)


async def http(node: NodeProcess, method: str, path: str, body: object = None, **kw) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    return await asyncio.to_thread(node.http, method, path, data, **kw)


async def eventually(probe, timeout: float = 10.0, every: float = 0.02):
    """Polls the node's state until `probe()` returns something truthy (the node has no push
    for it), failing after `timeout`."""

    async def until():
        while True:
            value = await probe()
            if value:
                return value
            await asyncio.sleep(every)

    return await asyncio.wait_for(until(), timeout)


async def test_publish_and_subscribe_through_the_node(node, remote, collector: Collector):
    other = await connect(node)
    try:

        @remote.on(NodeUserCreated)
        async def seen(ev: NodeUserCreated, env) -> None:
            collector.add((ev, env))

        await remote.ready()
        message_id = await other.publish(NodeUserCreated(id=7, name="ada"))
        (ev, env), = await collector.wait(1)
        assert ev == NodeUserCreated(id=7, name="ada")
        assert env.id == message_id
        assert env.topic == "node.users.created"
        assert env.kind == "event"
        assert env.header("principal") == "py"
        assert json.loads(env.payload) == {"id": 7, "name": "ada"}
    finally:
        await other.shutdown()


async def test_bytes_and_pattern_subscriptions(node, remote, collector: Collector):
    @remote.on("node.raw.#")
    async def seen(env: switchyard.Envelope) -> None:
        collector.add(env)

    @remote.on("node.raw.bytes")
    async def raw(payload: bytes) -> None:
        collector.add(payload)

    await remote.publish("node.raw.bytes", b"\x00\x01binary")
    items = await collector.wait(2)
    envs = [i for i in items if isinstance(i, switchyard.RemoteEnvelope)]
    assert envs[0].content_type == "application/octet-stream"
    assert envs[0].payload == b"\x00\x01binary"
    assert b"\x00\x01binary" in items


@switchyard.event("node.versioned.ev", version=4)
@dataclass
class NodeVersioned:
    n: int


async def test_a_connected_bus_sends_the_message_class_name_and_version(node):
    """A typed publish through the gateway carries the class's name and `version=` (the
    node's contracts check and upcast by them), as the in-process bus does."""
    a, b = await connect(node), await connect(node)
    got: asyncio.Queue = asyncio.Queue()

    async def h(p: dict, env) -> None:
        await got.put((p, env.type_name, env.type_version))

    b.on("node.versioned.ev", h)
    await b.ready()
    await a.publish(NodeVersioned(n=5))
    await a.publish("node.versioned.ev", {"n": 6})
    first = await asyncio.wait_for(got.get(), 10)
    second = await asyncio.wait_for(got.get(), 10)
    assert sorted([first, second], key=lambda t: t[0]["n"]) == [
        ({"n": 5}, "NodeVersioned", 4),
        ({"n": 6}, None, 1),
    ]
    await a.shutdown()
    await b.shutdown()


async def test_a_group_shares_messages_between_connections(node):
    a, b = await connect(node), await connect(node)
    got: dict[str, list[int]] = {"a": [], "b": []}
    done = asyncio.Event()

    def make(side: str):
        async def h(p: dict) -> None:
            got[side].append(p["i"])
            if len(got["a"]) + len(got["b"]) == 10:
                done.set()

        return h

    a.on("node.shared.work", make("a"), group="workers")
    b.on("node.shared.work", make("b"), group="workers")
    await a.ready()
    await b.ready()
    for i in range(10):
        await a.publish("node.shared.work", {"i": i})
    await asyncio.wait_for(done.wait(), 10)
    assert sorted(got["a"] + got["b"]) == list(range(10))  # each message once
    assert got["a"] and got["b"]  # shared, not copied
    await a.shutdown()
    await b.shutdown()


async def test_a_python_handler_serves_a_command_sent_over_http(node, remote):
    seen = []

    @remote.handle(NodeCreateUser)
    async def create(cmd: NodeCreateUser, env) -> int:
        seen.append((cmd, env.kind))
        return 41 + len(cmd.name)

    await remote.ready()
    status, body = await http(node, "POST", "/v1/send/node.users.create", {"name": "a"})
    assert status == 200, body
    assert body["payload"] == 42
    assert body["attempts"] == 1
    assert seen == [(NodeCreateUser(name="a"), "command")]


async def test_send_and_request_reach_a_handler_on_another_connection(node, remote):
    server = await connect(node)
    try:

        @server.handle("node.math.double")
        def double(p: dict) -> Doubled:  # a plain function works too
            return Doubled(n=p["n"] * 2)

        await server.ready()
        assert await remote.send("node.math.double", {"n": 21}) == {"n": 42}
        assert await remote.request("node.math.double", {"n": 2}, timeout=5.0, returns=Doubled) == Doubled(n=4)
    finally:
        await server.shutdown()


async def test_gateway_errors_map_to_the_typed_exceptions(node, remote):
    server = await connect(node)
    release = asyncio.Event()
    try:

        @server.handle("node.err.slow")
        async def slow(p: dict) -> int:
            await release.wait()
            return 1

        @server.handle("node.err.reject")
        async def refuse(p: dict) -> int:
            raise switchyard.Reject("not today")

        @server.handle("node.err.fail")
        async def fail(p: dict) -> int:
            raise ValueError("the handler broke")

        await server.ready()

        with pytest.raises(switchyard.NoHandler) as e:
            await remote.send("node.err.nobody", {})
        assert e.value.topic == "node.err.nobody"
        assert e.value.gateway_kind == "no_handler"

        with pytest.raises(switchyard.RequestTimeout) as t:
            await remote.request("node.err.slow", {}, timeout=0.2)
        assert isinstance(t.value, TimeoutError)
        assert t.value.timeout == 0.2
        release.set()

        with pytest.raises(switchyard.Rejected) as r:
            await remote.send("node.err.reject", {})
        assert "not today" in r.value.reason

        with pytest.raises(switchyard.HandlerFailed) as f:
            await remote.send("node.err.fail", {})
        assert "ValueError: the handler broke" in f.value.error
        assert "Traceback" in f.value.error  # the Python traceback reaches the sender

        with pytest.raises(switchyard.InvalidTopic):
            await remote.publish("node..bad", {})
    finally:
        await server.shutdown()


async def test_a_second_handler_for_a_topic_is_refused(node, remote):
    other = await connect(node)
    try:
        remote.handle("node.dup.cmd", lambda p: 1)
        await remote.ready()
        other.handle("node.dup.cmd", lambda p: 2)
        with pytest.raises(switchyard.GatewayError) as e:
            await other.ready()
        assert e.value.kind == "bad_request"
        assert await other.send("node.dup.cmd", {}) == 1  # the first handler still serves it
    finally:
        await other.shutdown()


async def test_a_failing_handler_is_nacked_retried_then_dead_lettered(node, remote, collector: Collector):
    @remote.on("node.fails.always")
    async def broken(env: switchyard.Envelope) -> None:
        collector.add(env.attempt)
        raise RuntimeError("cannot handle this")

    await remote.ready()
    message_id = await remote.publish("node.fails.always", {"x": 1})
    attempts = await collector.wait(3)
    assert attempts[:3] == [1, 2, 3]  # nacked and redelivered by the node's retry policy

    async def dead_lettered():
        status, body = await http(node, "GET", "/v1/dlq?topic=node.fails.always")
        assert status == 200, body
        return [i for i in body["items"] if i["message"]["id"] == message_id]

    (letter,) = await eventually(dead_lettered)
    assert letter["attempts"] == 3
    assert len(collector.items) == 3  # not delivered again after it was dead-lettered


async def test_retry_after_is_a_delayed_nack(node, remote, collector: Collector):
    @remote.on("node.retry.once")
    async def flaky(env: switchyard.Envelope) -> None:
        collector.add(env.attempt)
        if env.attempt == 1:
            raise switchyard.Retry(after=0.05)

    await remote.publish("node.retry.once", {})
    assert await collector.wait(2) == [1, 2]


async def test_auth_token_accepted_and_refused(node):
    with pytest.raises(switchyard.Unauthenticated):
        await switchyard.Bus.connect(node.url, token="wrong-token")
    with pytest.raises(switchyard.Unauthenticated):
        await switchyard.Bus.connect(node.url)

    reader = await connect(node, READER_TOKEN)
    try:
        got = Collector()
        reader.on("limited.#", lambda env: got.add(env.topic))
        await reader.ready()  # its grant covers limited.#

        with pytest.raises(switchyard.Forbidden) as e:
            await reader.publish("limited.news", {})
        assert "reader" in str(e.value)
        assert isinstance(e.value, PermissionError)

        reader.on("other.#", lambda env: None)
        with pytest.raises(switchyard.Forbidden):
            await reader.ready()
        with pytest.raises(switchyard.Forbidden):
            await reader.send("node.math.double", {"n": 1})

        writer = await connect(node)
        await writer.publish("limited.news", {"ok": True})
        assert await got.wait(1) == ["limited.news"]
        await writer.shutdown()
    finally:
        await reader.shutdown()


async def test_one_correlation_id_end_to_end(node, remote, collector: Collector):
    watcher = await connect(node)
    correlation = "01J9Z5V7D3K4M0Q5W8Y2B6C1E0"
    try:

        @watcher.on(NodeUserCreated)
        async def created(ev: NodeUserCreated, env) -> None:
            collector.add(env)

        @remote.handle(NodeCreateUser)
        async def create(cmd: NodeCreateUser, env) -> int:
            collector.add(env)
            await remote.publish(NodeUserCreated(id=9, name=cmd.name))  # caused by the command
            return 9

        await watcher.ready()
        await remote.ready()
        # HTTP -> node (Rust bus.send) -> Python handler -> Python publish -> another client.
        status, body = await http(node, "POST", "/v1/send/node.users.create", {"name": "x"},
                                  headers={"x-correlation-id": correlation})
        assert status == 200, body
        assert body["correlation_id"] == correlation
        command_env, event_env = await collector.wait(2)
        assert command_env.correlation_id == correlation
        assert event_env.correlation_id == correlation
        assert event_env.causation_id == command_env.id
        trace = command_env.header("traceparent").split("-")[1]
        assert event_env.header("traceparent").split("-")[1] == trace  # one trace

        # And from Python: the id given to send reaches the handler on the other side.
        reply = await watcher.send(NodeCreateUser(name="y"), correlation_id="01J9Z5V7D3K4M0Q5W8Y2B6C1E1")
        assert reply == 9
        items = await collector.wait(4)
        assert items[2].correlation_id == "01J9Z5V7D3K4M0Q5W8Y2B6C1E1"
        assert items[3].correlation_id == "01J9Z5V7D3K4M0Q5W8Y2B6C1E1"
    finally:
        await watcher.shutdown()


async def test_shutdown_drains_running_handlers_then_refuses(node):
    bus = await connect(node)
    started, release = asyncio.Event(), asyncio.Event()
    finished = []

    @bus.on("node.drain.work")
    async def work(p: dict) -> None:
        started.set()
        await release.wait()
        finished.append(p["i"])

    await bus.publish("node.drain.work", {"i": 1})
    await asyncio.wait_for(started.wait(), 5)
    shutting = asyncio.ensure_future(bus.shutdown(timeout=5.0))
    await asyncio.sleep(0)  # let shutdown start (it stops intake first)
    with pytest.raises(switchyard.ShuttingDown):
        await bus.publish("node.drain.work", {"i": 2})
    release.set()
    report = await shutting
    assert finished == [1]
    assert report.drained == 1 and report.nacked == []
    assert await bus.shutdown() is report  # idempotent
    with pytest.raises(switchyard.ShuttingDown):
        await bus.send("node.math.double", {"n": 1})


async def test_shutdown_past_its_deadline_hands_the_message_to_another_group_member(node):
    a, b = await connect(node), await connect(node)
    stuck = asyncio.Event()
    got = Collector()

    async def never(env: switchyard.Envelope) -> None:
        stuck.set()
        await asyncio.Event().wait()  # never returns: cancelled by shutdown

    a.on("node.handover.job", never, group="handover")
    await a.ready()
    await a.publish("node.handover.job", {"job": 1})
    await asyncio.wait_for(stuck.wait(), 5)
    b.on("node.handover.job", lambda env: got.add(env), group="handover")
    await b.ready()
    report = await a.shutdown(timeout=0.1)
    assert len(report.nacked) == 1
    (env,) = await got.wait(1)
    assert env.id == report.nacked[0]  # handed on, not lost
    await b.shutdown()


async def test_a_command_handler_that_disconnects_fails_the_sender_at_once(node, remote):
    server = await connect(node)
    stuck = asyncio.Event()

    @server.handle("node.gone.cmd")
    async def hang(p: dict) -> int:
        stuck.set()
        await asyncio.Event().wait()
        return 0

    await server.ready()
    sending = asyncio.ensure_future(remote.send("node.gone.cmd", {}))
    await asyncio.wait_for(stuck.wait(), 5)
    await server.shutdown(timeout=0.05)
    with pytest.raises(switchyard.HandlerFailed) as e:
        await asyncio.wait_for(sending, 10)
    assert "disconnected" in e.value.error


async def test_in_process_only_features_raise_unsupported(remote):
    with pytest.raises(switchyard.Unsupported) as e:
        remote.session("s1")
    assert e.value.feature == "session"
    assert isinstance(e.value, NotImplementedError)
    with pytest.raises(switchyard.Unsupported):
        remote.on("node.x", lambda env: None, priority=1)
    with pytest.raises(switchyard.Unsupported):
        remote.on("node.x", lambda env: None, filter=lambda env: True)
    with pytest.raises(switchyard.Unsupported):
        remote.on_batch("node.x", lambda items: None)
    with pytest.raises(switchyard.Unsupported):
        await remote.publish("node.x", {}, delay=1.0)
    with pytest.raises(switchyard.Unsupported):
        await remote.publish("node.x", {}, wait=True)
    with pytest.raises(switchyard.Unsupported):
        remote.dead_letters()
    with pytest.raises(switchyard.Unsupported):
        await remote.idle()


async def test_an_unreachable_node_is_a_transport_error():
    with pytest.raises(switchyard.TransportError) as e:
        await switchyard.Bus.connect("http://127.0.0.1:9", open_timeout=2.0)
    assert e.value.kind == "unavailable"


async def test_a_lost_connection_fails_waiting_calls_with_a_transport_error(node, tmp_path):
    from conftest import start_node

    own = start_node(tmp_path, node.proc.args[0])  # a node of its own, to kill
    try:
        bus = await switchyard.Bus.connect(own.url, token=NODE_TOKEN)
        stuck = asyncio.Event()

        @bus.handle("node.lost.cmd")
        async def hang(p: dict) -> int:
            stuck.set()
            await asyncio.Event().wait()
            return 0

        sending = asyncio.ensure_future(bus.send("node.lost.cmd", {}))
        await asyncio.wait_for(stuck.wait(), 5)
        own.proc.kill()
        with pytest.raises(switchyard.TransportError) as e:
            await asyncio.wait_for(sending, 10)
        assert e.value.kind == "closed"
        with pytest.raises(switchyard.TransportError):
            await bus.publish("node.lost.event", {})
        await bus.shutdown(timeout=0.1)
    finally:
        own.proc.kill()
        own.proc.wait(10)


async def test_cancelling_an_awaiting_send_leaves_no_call_behind(node, remote):
    server = await connect(node)
    stuck, release = asyncio.Event(), asyncio.Event()
    try:

        @server.handle("node.cancel.cmd")
        async def slow(p: dict) -> int:
            stuck.set()
            await release.wait()
            return 5

        await server.ready()
        sending = asyncio.ensure_future(remote.send("node.cancel.cmd", {}))
        await asyncio.wait_for(stuck.wait(), 5)
        assert len(remote._calls) == 1
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        assert remote._calls == {}  # the late reply has nothing to wake
        release.set()
        assert await remote.send("node.cancel.cmd", {}) == 5  # the connection is fine
    finally:
        await server.shutdown()


@pytest.mark.parametrize(
    "kind, cls",
    [
        ("no_handler", switchyard.NoHandler),
        ("timeout", switchyard.RequestTimeout),
        ("handler_failed", switchyard.HandlerFailed),
        ("handler_rejected", switchyard.Rejected),
        ("forbidden", switchyard.Forbidden),
        ("unauthenticated", switchyard.Unauthenticated),
        ("invalid_topic", switchyard.InvalidTopic),
        ("queue_full", switchyard.QueueFull),
        ("shutting_down", switchyard.ShuttingDown),
        ("rate_limited", switchyard.RateLimited),
        ("too_large", switchyard.TooLarge),
        ("not_ready", switchyard.GatewayError),
    ],
)
def test_every_gateway_error_kind_has_its_exception(kind, cls):
    from switchyard._remote import gateway_error

    e = gateway_error({"kind": kind, "message": "m"}, topic="t", timeout=0.5)
    assert type(e) is cls
    assert e.gateway_kind == kind
    assert e.message == "m"
