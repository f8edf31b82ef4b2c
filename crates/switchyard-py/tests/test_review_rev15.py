"""Review rev15, from a Python service's side: a Rust switchyard node (`switchyard serve`) and
the Python services talking to it through its WebSocket gateway (`Bus.connect`), raw
WebSocket clients, and plain NATS clients (nats-py) talking to a node on NATS
(docs/python.md "Through a node", docs/gateway.md "WebSocket", docs/interop.md).

Every test waits on events with timeouts (no sleeps as synchronisation).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

import switchyard
from conftest import (
    NODE_TOKEN,
    READER_TOKEN,
    Collector,
    NodeProcess,
    drop_stream,
    node_binary,
    require_nats,
)

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect as ws_connect  # noqa: E402


@switchyard.command("rev15.users.create", returns=int)
@dataclass
class R15CreateUser:
    name: str


@switchyard.event("rev15.orders.placed")
@dataclass
class R15Order:
    id: int
    sku: str


async def connect(node: NodeProcess, token: str = NODE_TOKEN) -> switchyard.ConnectedBus:
    return await switchyard.Bus.connect(node.url, token=token)


async def http(node: NodeProcess, method: str, path: str, body: object = None, raw: Optional[bytes] = None, **kw) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    return await asyncio.to_thread(node.http, method, path, data, **kw)


async def eventually(probe, timeout: float = 10.0, every: float = 0.02):
    """Polls `probe()` (an async callable) until it returns something truthy."""

    async def until():
        while True:
            value = await probe()
            if value:
                return value
            await asyncio.sleep(every)

    return await asyncio.wait_for(until(), timeout)


async def dlq_items(node: NodeProcess, topic: str) -> list[dict]:
    import urllib.parse

    status, body = await http(node, "GET", f"/v1/dlq?topic={urllib.parse.quote(topic)}&limit=1000")
    assert status == 200, body
    return body["items"]


def ws_url(node: NodeProcess, token: str = NODE_TOKEN) -> str:
    return node.url.replace("http://", "ws://") + "/v1/ws?token=" + token


async def next_op(ws, *ops: str, timeout: float = 10.0) -> dict:
    """The next frame whose op is one of `ops` (others skipped)."""

    async def go():
        while True:
            f = json.loads(await ws.recv())
            if f.get("op") in ops:
                return f

    return await asyncio.wait_for(go(), timeout)


# -- a node of the test's own ---------------------------------------------------------------


def _sha(t: str) -> str:
    return hashlib.sha256(t.encode()).hexdigest()


def _config(tmp: Path, transport: str, ws: str = "") -> Path:
    cfg = tmp / "node.toml"
    cfg.write_text(
        f"""listen = "127.0.0.1:0"

{transport}

[auth]
enabled = true
[[auth.principals]]
name = "py"
publish = ["#"]
subscribe = ["#"]
send = ["#"]
admin = true
[[auth.principals]]
name = "reader"
subscribe = ["limited.#"]
[[auth.tokens]]
principal = "py"
sha256 = "{_sha(NODE_TOKEN)}"
[[auth.tokens]]
principal = "reader"
sha256 = "{_sha(READER_TOKEN)}"

{ws}

[logging]
format = "text"
filter = "warn"
"""
    )
    return cfg


def own_node(tmp: Path, transport: str = '[transport]\nkind = "memory"', ws: str = "") -> NodeProcess:
    binary = node_binary()
    stderr_path = tmp / "node.stderr"
    proc = subprocess.Popen(
        [binary, "serve", "--config", str(_config(tmp, transport, ws)), "--listen", "127.0.0.1:0"],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=open(stderr_path, "wb"),
        text=True,
    )
    first: list[str] = []
    got = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not first:
                first.append(line)
                got.set()
        got.set()

    threading.Thread(target=pump, daemon=True).start()
    if not got.wait(60) or not first or "listening on" not in first[0]:
        proc.kill()
        raise RuntimeError(f"the node did not start: {first!r}\n{stderr_path.read_text()[-2000:]}")
    return NodeProcess(proc, first[0].split("listening on", 1)[1].strip(), stderr_path)


def stop(n: NodeProcess) -> None:
    n.proc.kill()
    n.proc.wait(10)


# -- a Python handler in another process, killed mid-command --------------------------------

CHILD = r"""
import asyncio, sys, switchyard

async def main():
    bus = await switchyard.Bus.connect(sys.argv[1], token=sys.argv[2])

    @bus.handle(sys.argv[3])
    async def hang(p: dict) -> int:
        print("got", flush=True)
        await asyncio.Event().wait()
        return 0

    await bus.ready()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def _child_handler(node: NodeProcess, topic: str) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, node.url, NODE_TOKEN, topic, stdout=asyncio.subprocess.PIPE
    )
    assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
    return child


async def test_a_python_handler_process_killed_mid_command_fails_the_http_sender_at_once_and_is_dead_lettered(node):
    topic = f"rev15.kill.{uuid.uuid4().hex[:8]}"
    child = await _child_handler(node, topic)
    try:
        sending = asyncio.ensure_future(http(node, "POST", f"/v1/send/{topic}", {"job": 1}))
        assert (await asyncio.wait_for(child.stdout.readline(), 10)).strip() == b"got"
        start = time.monotonic()
        child.send_signal(signal.SIGKILL)
        status, body = await asyncio.wait_for(sending, 10)
        took = time.monotonic() - start
        assert status == 422, body
        assert body["error"]["kind"] == "handler_failed", body
        assert "disconnected" in body["error"]["message"], body
        assert took < 5, f"the sender waited {took:.1f}s for a killed handler"
        (letter,) = await eventually(lambda: dlq_items(node, topic))
        assert letter["message"]["payload"] == {"job": 1}
        # The registration ended with the process: a later send is no_handler at once.
        status, body = await http(node, "POST", f"/v1/send/{topic}", {"job": 2})
        assert (status, body["error"]["kind"]) == (404, "no_handler"), body
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


async def test_a_python_handler_process_killed_mid_command_fails_a_python_sender_with_handler_failed(node, remote):
    topic = f"rev15.kill.{uuid.uuid4().hex[:8]}"
    child = await _child_handler(node, topic)
    try:
        sending = asyncio.ensure_future(remote.request(topic, {"job": 1}, timeout=20.0))
        assert (await asyncio.wait_for(child.stdout.readline(), 10)).strip() == b"got"
        child.send_signal(signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(switchyard.HandlerFailed) as e:
            await asyncio.wait_for(sending, 10)
        assert time.monotonic() - start < 5
        assert e.value.gateway_kind == "handler_failed"
        with pytest.raises(switchyard.NoHandler):
            await remote.send(topic, {})
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


# -- Python command handlers: what the sender gets -------------------------------------------


async def test_a_command_handler_returning_something_unencodable_gives_the_sender_a_typed_error(node, remote):
    server = await connect(node)
    try:

        @server.handle("rev15.bad.result")
        async def bad(p: dict) -> Any:
            return object()  # not JSON-able

        @server.handle("rev15.bad.fine")
        def fine(p: dict) -> Any:
            return {"fine": True}

        await server.ready()
        with pytest.raises(switchyard.SwitchyardError) as e:
            await asyncio.wait_for(remote.send("rev15.bad.result", {}), 10)
        assert isinstance(e.value, (switchyard.Rejected, switchyard.HandlerFailed)), repr(e.value)
        assert "encode" in str(e.value), str(e.value)
        # The handler connection survives it.
        assert await remote.send("rev15.bad.fine", {}) == {"fine": True}
    finally:
        await server.shutdown()


async def test_a_command_handler_returning_nan_gives_the_sender_a_typed_error_in_bounded_time(node, remote):
    """Was a defect (fixed: h-fixpy). `float("nan")` is not JSON, yet the connected bus's encoder (`json` with
    allow_nan) writes `{"op":"result",...,"payload":{"x":NaN}}`; the node answers an
    id-less `malformed_json` error op (logged: "switchyard node: malformed_json: malformed
    JSON: expected value at line 1 column 52") and the call stays open, so the sender waits
    for the node's handler timeout (30 s) instead of getting a typed error. Failure:
    `asyncio.TimeoutError` from `asyncio.wait_for(remote.send("rev15.bad.nan", {}), 10)`.
    The same result in process is `HandlerFailed`/`EncodeFailed` at once."""
    server = await connect(node)
    try:

        @server.handle("rev15.bad.nan")
        def nan(p: dict) -> Any:
            return {"x": float("nan")}

        await server.ready()
        with pytest.raises(switchyard.SwitchyardError) as e:
            await asyncio.wait_for(remote.send("rev15.bad.nan", {}), 10)
        assert isinstance(e.value, (switchyard.Rejected, switchyard.HandlerFailed)), repr(e.value)
    finally:
        await server.shutdown(timeout=0.5)


async def test_an_undecodable_command_for_a_typed_handler_is_refused_at_once_without_calling_it(node, remote):
    server = await connect(node)
    called = []
    try:

        @server.handle(R15CreateUser)
        async def create(cmd: R15CreateUser) -> int:
            called.append(cmd)
            return 1

        await server.ready()
        start = time.monotonic()
        with pytest.raises(switchyard.Rejected) as e:
            await remote.send("rev15.users.create", {"nombre": "x"})
        assert time.monotonic() - start < 5
        assert "decode" in e.value.reason, e.value.reason
        assert called == []
        status, body = await http(node, "POST", "/v1/send/rev15.users.create", raw=b"\xff\xfe", headers={"Content-Type": "application/octet-stream"})
        assert (status, body["error"]["kind"]) == (422, "handler_rejected"), body
        assert called == []
        assert await remote.send(R15CreateUser(name="ok")) == 1
    finally:
        await server.shutdown()


async def test_a_slow_python_handler_times_the_request_out_and_its_late_result_is_harmless(node, remote):
    server = await connect(node)
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    try:

        @server.handle("rev15.slow.cmd")
        async def slow(p: dict) -> int:
            started.set()
            await release.wait()
            finished.set()
            return p["n"]

        await server.ready()
        start = time.monotonic()
        with pytest.raises(switchyard.RequestTimeout) as e:
            await remote.request("rev15.slow.cmd", {"n": 1}, timeout=0.3)
        assert time.monotonic() - start < 3
        assert e.value.gateway_kind == "timeout"
        await asyncio.wait_for(started.wait(), 5)
        release.set()
        await asyncio.wait_for(finished.wait(), 5)
        # The late result went to nobody; both connections still work.
        assert await remote.request("rev15.slow.cmd", {"n": 2}, timeout=5) == 2
        status, body = await http(node, "POST", "/v1/request/rev15.slow.cmd?timeout_ms=5000", {"n": 3})
        assert (status, body["payload"]) == (200, 3), body
    finally:
        await server.shutdown()


async def test_a_raising_python_handler_is_retried_by_the_node_then_the_sender_gets_handler_failed(node, remote):
    server = await connect(node)
    attempts: list[int] = []
    try:

        @server.handle("rev15.flaky.cmd")
        async def flaky(p: dict, env) -> int:
            attempts.append(env.attempt)
            if p["fail"] > len(attempts) - 1:
                raise RuntimeError(f"attempt {len(attempts)} broke")
            return len(attempts)

        await server.ready()
        # Fails once, then succeeds: retried by the node, the sender sees the success.
        assert await remote.send("rev15.flaky.cmd", {"fail": 1}) == 2
        attempts.clear()
        with pytest.raises(switchyard.HandlerFailed) as e:
            await remote.send("rev15.flaky.cmd", {"fail": 99})
        assert "RuntimeError: attempt 3 broke" in e.value.error, e.value.error
        assert len(attempts) == 3
        letters = await eventually(lambda: dlq_items(node, "rev15.flaky.cmd"))
        assert any(i["message"]["payload"] == {"fail": 99} for i in letters), letters
    finally:
        await server.shutdown()


# -- Python subscribers ----------------------------------------------------------------------


async def test_wildcard_subscribers_get_exactly_the_topics_their_patterns_match(node, remote):
    one, many, zero = Collector(), Collector(), Collector()
    run = uuid.uuid4().hex[:6]
    remote.on(f"rev15w{run}.*.created", lambda env: one.add(env.topic))
    remote.on(f"rev15w{run}.#", lambda env: many.add(env.topic))
    remote.on(f"rev15w{run}.#.created", lambda env: zero.add(env.topic))
    await remote.ready()
    topics = [f"rev15w{run}", f"rev15w{run}.a.created", f"rev15w{run}.a.b.created", f"rev15w{run}.created", f"rev15w{run}.a.deleted"]
    for t in topics:
        await remote.publish(t, {})
    await many.wait(5)
    await one.wait(1)
    await zero.wait(3)
    # A marker published last, then waited for, so nothing further is in flight.
    await remote.publish(f"rev15w{run}.end.created", {})
    await many.wait(6)
    await one.wait(2)
    await zero.wait(4)
    assert sorted(many.items) == sorted(topics + [f"rev15w{run}.end.created"])
    assert sorted(one.items) == sorted([f"rev15w{run}.a.created", f"rev15w{run}.end.created"])
    assert sorted(zero.items) == sorted([f"rev15w{run}.a.created", f"rev15w{run}.a.b.created", f"rev15w{run}.created", f"rev15w{run}.end.created"])


async def test_an_undecodable_event_for_a_typed_subscriber_is_dead_lettered_at_once_with_its_raw_bytes(node, remote):
    # As in process (a decode failure is not retried: the same bytes fail the same way), the
    # client refuses it for good (a `nack` with `reject: true`, docs/python.md); before the
    # nack had `reject`, it was a plain nack, tried 3 times.
    called = []

    @remote.on(R15Order)
    async def placed(o: R15Order) -> None:
        called.append(o)

    await remote.ready()
    raw = b"\xff\x00not json"
    message_id = await remote.publish("rev15.orders.placed", raw)

    async def letter():
        return [i for i in await dlq_items(node, "rev15.orders.placed") if i["message"]["id"] == message_id]

    (item,) = await eventually(letter)
    assert base64.b64decode(item["message"]["payload_base64"]) == raw
    assert item["attempts"] == 1, item
    assert item["reason"] == "rejected", item
    assert "the payload did not decode" in item["error"], item
    assert called == []
    # A well-formed one still goes through.
    await remote.publish(R15Order(id=1, sku="a"))
    await eventually(lambda: asyncio.sleep(0, called))
    assert called == [R15Order(id=1, sku="a")]


async def test_headers_and_correlation_survive_python_to_node_to_python_hops(node, remote):
    watcher = await connect(node)
    seen = Collector()
    corr = "corr-rev15-" + uuid.uuid4().hex[:6]
    try:

        @watcher.on("rev15.hop.done")
        async def done(env) -> None:
            seen.add(env)

        @remote.handle("rev15.hop.first")
        async def first(p: dict, env) -> int:
            seen.add(env)
            return await remote.send("rev15.hop.second", {"n": p["n"]}, headers={"tenant": env.header("tenant") or "lost"})

        @watcher.handle("rev15.hop.second")
        async def second(p: dict, env) -> int:
            seen.add(env)
            await watcher.publish("rev15.hop.done", {"n": p["n"]}, headers={"step": "3"})
            return p["n"] * 2

        await watcher.ready()
        await remote.ready()
        status, body = await http(node, "POST", "/v1/send/rev15.hop.first", {"n": 5},
                                  headers={"x-correlation-id": corr, "x-meta-tenant": "acme"})
        assert status == 200, body
        assert body["payload"] == 10
        first_env, second_env, done_env = await seen.wait(3)
        assert first_env.header("tenant") == "acme"
        assert second_env.header("tenant") == "acme"
        assert done_env.header("step") == "3"
        assert [e.correlation_id for e in (first_env, second_env, done_env)] == [corr] * 3
        assert second_env.causation_id == first_env.id
        assert done_env.causation_id == second_env.id
        trace = first_env.header("traceparent").split("-")[1]
        assert done_env.header("traceparent").split("-")[1] == trace
    finally:
        await watcher.shutdown()


async def test_bytes_like_payloads_and_unicode_round_trip_through_the_node(node, remote):
    got = Collector()

    @remote.on("rev15.bytes.#")
    async def raw(p: bytes, env) -> None:
        got.add((env.topic, p, env.message.get("content_type")))

    await remote.ready()
    await remote.publish("rev15.bytes.plain", b"\x00\xff\x10")
    await remote.publish("rev15.bytes.text", "héllo ✓ \u0000")
    await got.wait(2)
    assert got.items[0] == ("rev15.bytes.plain", b"\x00\xff\x10", "application/octet-stream")
    assert json.loads(got.items[1][1]) == "héllo ✓ \u0000"


BYTES_LIKE_DEFECT = (
    "defect: ConnectedBus.publish sends a bytearray/memoryview payload as raw JSON text "
    "(_remote.py _head checks `type(payload) is bytes` only): b'123' arrives as JSON 123, "
    "b'abc' makes an unparseable frame and the publish hangs, b'\\xff' is a bare UnicodeDecodeError"
)


@pytest.mark.parametrize("value", [bytearray(b"123"), memoryview(b"abc"), bytearray(b"\xff\x01")], ids=["digits", "letters", "non-utf8"])
async def test_a_bytearray_or_memoryview_payload_goes_as_bytes_like_bytes_does(remote, value):
    """Was a defect (fixed: h-fixpy). docs/python.md: "Bytes go as `application/octet-stream`", and the package's
    own `encode` and command results treat bytearray / memoryview as bytes. A bytes-like
    payload must arrive as those bytes with that content type, or be refused with a typed
    error, in bounded time. Failures (3 of 3 runs):
    digits: `assert ('rev15.ba.x', b'123', 'application/json') == ('rev15.ba.x', b'123', 'application/octet-stream')`;
    letters: `TimeoutError` (the node answers the unparseable frame with an id-less
    `malformed_json` error op, logged "switchyard node: malformed_json: malformed JSON:
    expected value at line 1 column 48", and the publish waits forever);
    non-utf8: `UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 0`."""
    got = Collector()
    topic = "rev15.ba.x"

    @remote.on(topic)
    def seen(env) -> None:
        got.add((env.topic, env.payload, env.message.get("content_type")))

    await remote.ready()
    try:
        await asyncio.wait_for(remote.publish(topic, value), 10)
    except switchyard.SwitchyardError:
        return  # refused with a typed error: fine
    (item,) = await got.wait(1)
    assert item == (topic, bytes(value), "application/octet-stream")


async def test_publishing_a_nan_payload_is_a_typed_error_not_a_hang(remote):
    """Was a defect (fixed: h-fixpy). `{"x": float("nan")}` is not JSON; the connected bus writes `NaN` into the
    frame (json with allow_nan, _gateway.py `_dumps` / _codec `encode`), the node answers
    an id-less `malformed_json` error op ("malformed JSON: expected value at line 1 column
    53") and `publish` never returns. Failure (3 of 3 runs): `TimeoutError` from
    `asyncio.wait_for(remote.publish(...), 10)`. Expected: EncodeFailed (a TypeError) at once."""
    with pytest.raises(switchyard.SwitchyardError):
        await asyncio.wait_for(remote.publish("rev15.nan.x", {"x": float("nan")}), 10)


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.publish("rev15.enc.x", {}, headers={"h": float("nan")}),
        lambda b: b.publish("rev15.enc.x", {}, headers={"h": object()}),
        lambda b: b.publish("rev15.enc.x", "lone \ud800 surrogate"),
        lambda b: b.publish("rev15.enc.x", {}, headers={"h": "lone \udfff"}),
        lambda b: b.send("rev15.enc.cmd", {"x": float("inf")}),
        lambda b: b.request("rev15.enc.cmd", {}, headers={"h": float("-inf")}, timeout=5),
    ],
    ids=["nan-header", "object-header", "surrogate-payload", "surrogate-header", "inf-send", "inf-request-header"],
)
async def test_a_frame_the_client_cannot_encode_raises_encode_failed_at_the_caller_at_once(remote, call):
    """Every frame is JSON the node parses, or the call raises before sending: a frame the
    node could not parse is answered without its id, and the call would never settle."""
    with pytest.raises(switchyard.EncodeFailed):
        await asyncio.wait_for(call(remote), 5)
    # Nothing was sent, nothing is left waiting; the connection works.
    assert remote._calls == {}
    assert await asyncio.wait_for(remote.publish("rev15.enc.x", {"ok": 1}), 5)


async def test_a_command_handler_rejecting_with_a_lone_surrogate_answers_the_sender(node, remote):
    """The result frame's error text is made UTF-8 (the writer would fail on it otherwise)."""
    server = await connect(node)
    try:

        @server.handle("rev15.bad.surrogate")
        def bad(p: dict) -> Any:
            raise switchyard.Reject("no \ud800 way")

        @server.handle("rev15.bad.fine2")
        def fine(p: dict) -> Any:
            return {"fine": True}

        await server.ready()
        with pytest.raises(switchyard.Rejected) as e:
            await asyncio.wait_for(remote.send("rev15.bad.surrogate", {}), 10)
        assert "no ? way" in e.value.reason, e.value.reason
        assert await asyncio.wait_for(remote.send("rev15.bad.fine2", {}), 10) == {"fine": True}
    finally:
        await server.shutdown(timeout=0.5)


async def test_a_unicode_topic_round_trips_between_http_python_and_a_unicode_pattern(node, remote):
    got = Collector()
    remote.on("rev15.café.*", lambda env: got.add((env.topic, env.message.get("payload"))))
    await remote.ready()
    await remote.publish("rev15.café.crème", {"a": "ü"})
    import urllib.parse

    status, body = await http(node, "POST", "/v1/publish/" + urllib.parse.quote("rev15.café.naïve"), {"b": 1})
    assert status == 202, body
    await got.wait(2)
    assert sorted(got.items, key=lambda t: t[0]) == [("rev15.café.crème", {"a": "ü"}), ("rev15.café.naïve", {"b": 1})]


# -- raw WebSocket clients ------------------------------------------------------------------


async def test_a_binary_frame_gets_an_error_op_and_the_connection_stays_open(node):
    async with ws_connect(ws_url(node), compression=None) as ws:
        await ws.send(b'{"op":"publish","id":1,"topic":"rev15.bin.x","payload":{}}')
        f = await next_op(ws, "error", "published")
        assert f["op"] == "error", f
        assert f["error"]["kind"] in ("bad_request", "malformed_json"), f
        await ws.send(json.dumps({"op": "publish", "id": 2, "topic": "rev15.bin.x", "payload": {}}))
        f = await next_op(ws, "published", "error")
        assert f == {**f, "op": "published", "id": 2}, f


async def test_a_text_frame_that_is_not_json_or_not_an_op_is_an_error_op_echoing_the_id(node):
    async with ws_connect(ws_url(node), compression=None) as ws:
        await ws.send("not json at all")
        f = await next_op(ws, "error")
        assert f["error"]["kind"] == "malformed_json", f
        await ws.send(json.dumps({"op": "teleport", "id": {"x": [1]}}))
        f = await next_op(ws, "error")
        assert f["id"] == {"x": [1]}, f
        assert f["error"]["kind"] == "bad_request", f
        await ws.send(json.dumps({"op": "publish", "id": "ü", "topic": "rev15.ok", "payload": None}))
        f = await next_op(ws, "published", "error")
        assert (f["op"], f["id"]) == ("published", "ü"), f


async def test_acl_denials_are_typed_errors_for_every_op_and_the_connection_survives(node):
    reader = await connect(node, READER_TOKEN)
    try:
        h = reader.handle("limited.cmd", lambda p: 1)
        with pytest.raises(switchyard.Forbidden) as e:
            await h.ready()
        assert e.value.gateway_kind == "forbidden"
        with pytest.raises(switchyard.Forbidden):
            await reader.request("limited.cmd", {}, timeout=1.0)
        s = reader.on("limited", lambda env: None)  # `limited.#` covers `limited` itself
        await s.ready()
        s2 = reader.on("#", lambda env: None)  # wider than the grant
        with pytest.raises(switchyard.Forbidden):
            await s2.ready()
    finally:
        await reader.shutdown()
    async with ws_connect(ws_url(node, READER_TOKEN), compression=None) as ws:
        await ws.send(json.dumps({"op": "publish_batch", "id": "b", "messages": [{"topic": "limited.a", "payload": 1}]}))
        f = await next_op(ws, "error", "published_batch")
        assert (f["op"], f["error"]["kind"]) == ("error", "forbidden"), f
        assert "reader" in f["error"]["message"]
    with pytest.raises(Exception) as refused:
        async with ws_connect(ws_url(node, "bogus"), compression=None):
            pass
    assert "401" in str(refused.value)


# -- slow WebSocket subscribers ---------------------------------------------------------------


async def _fill(node: NodeProcess, topic: str, n: int, size: int) -> None:
    pub = await connect(node)
    try:
        blob = "x" * size
        for i in range(n):
            await pub.publish(topic, {"i": i, "pad": blob})
    finally:
        await pub.shutdown()


async def test_a_slow_ws_subscriber_under_drop_oldest_is_told_of_every_drop(tmp_path):
    n = own_node(tmp_path, ws='[ws]\noutbound_buffer = 4\nslow_client = "drop_oldest"')
    try:
        total = 400
        async with ws_connect(ws_url(n), compression=None, max_size=None, max_queue=1) as ws:
            await ws.send(json.dumps({"op": "subscribe", "id": "s", "pattern": "rev15.slow.#"}))
            await next_op(ws, "subscribed")
            # The client stops reading (websockets buffers at most one frame) while 400
            # messages of 64 KiB are published: far beyond the socket buffers.
            await _fill(n, "rev15.slow.x", total, 64 * 1024)
            got, dropped = set(), 0

            async def drain():
                nonlocal dropped
                while len(got) + dropped < total:
                    f = json.loads(await ws.recv())
                    if f["op"] == "message":
                        got.add(f["message"]["payload"]["i"])
                    elif f["op"] == "dropped":
                        dropped += f["count"]

            await asyncio.wait_for(drain(), 60)
            assert dropped > 0
            assert len(got) + dropped == total
            assert total - 1 in got  # the newest is kept
        status, stats = await http(n, "GET", "/v1/stats")
        assert status == 200
        gw = stats["gateway"]
        assert gw["ws_dropped"] == dropped, gw
        assert gw["ws_buffer_high_water"] <= 4, gw
    finally:
        stop(n)


async def test_a_slow_ws_subscriber_under_disconnect_is_closed_with_1008(tmp_path):
    n = own_node(tmp_path, ws='[ws]\noutbound_buffer = 4\nslow_client = "disconnect"')
    try:
        async with ws_connect(ws_url(n), compression=None, max_size=None, max_queue=1) as ws:
            await ws.send(json.dumps({"op": "subscribe", "id": "s", "pattern": "rev15.slow.#"}))
            await next_op(ws, "subscribed")
            await _fill(n, "rev15.slow.x", 400, 64 * 1024)

            async def until_closed():
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed as e:
                    return e

            closed = await asyncio.wait_for(until_closed(), 60)
            assert closed.rcvd is not None and closed.rcvd.code == 1008, closed
            assert "buffer" in closed.rcvd.reason, closed.rcvd.reason
        status, stats = await http(n, "GET", "/v1/stats")
        assert stats["gateway"]["ws_slow_disconnects"] >= 1, stats["gateway"]
    finally:
        stop(n)


async def test_a_python_subscriber_reconnecting_after_the_node_restarts_gets_later_messages(tmp_path):
    """No automatic reconnect (documented): the old bus fails typed, a new connect works."""
    (tmp_path / "a").mkdir()
    n = own_node(tmp_path / "a")
    bus = await switchyard.Bus.connect(n.url, token=NODE_TOKEN)
    bus.on("rev15.re.x", lambda env: None)
    await bus.ready()
    stop(n)
    with pytest.raises(switchyard.TransportError) as e:
        await asyncio.wait_for(bus.publish("rev15.re.x", {}), 10)
    assert e.value.kind == "closed"
    await bus.shutdown(timeout=0.5)
    (tmp_path / "b").mkdir()
    n2 = own_node(tmp_path / "b")
    try:
        got = Collector()
        bus2 = await switchyard.Bus.connect(n2.url, token=NODE_TOKEN)
        bus2.on("rev15.re.x", lambda env: got.add(env.message["payload"]))
        await bus2.publish("rev15.re.x", {"after": True})
        assert await got.wait(1) == [{"after": True}]
        await bus2.shutdown()
    finally:
        stop(n2)


# -- a node on NATS, and plain NATS clients ----------------------------------------------------


@pytest.fixture
async def nats_node(tmp_path):
    require_nats()
    nats = pytest.importorskip("nats")
    run = uuid.uuid4().hex[:10]
    prefix, stream = f"r15{run}", f"REV15_{run}"
    transport = f"""[transport]
kind = "nats"
url = "nats://127.0.0.1:4222"
storage = "memory"
max_bytes = 8388608
[[transport.streams]]
name = "{stream}"
patterns = ["{prefix}.#"]"""
    n = own_node(tmp_path, transport)
    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        yield n, nc, prefix
    finally:
        await nc.close()
        stop(n)
        await drop_stream(stream)


async def test_nats_py_raw_events_with_and_without_headers_reach_a_typed_python_subscriber(nats_node):
    n, nc, prefix = nats_node
    bus = await connect(n)
    got = Collector()
    try:

        @bus.on(f"{prefix}.orders.#", group="rev15")
        async def placed(o: R15Order, env) -> None:
            got.add((o, env))

        await bus.ready()
        js = nc.jetstream()
        await js.publish(f"{prefix}.orders.plain", json.dumps({"id": 1, "sku": "a"}).encode())
        await js.publish(
            f"{prefix}.orders.rich",
            json.dumps({"id": 2, "sku": "b"}).encode(),
            headers={"Nats-Msg-Id": "order-2", "Sy-Correlation-Id": "corr-2", "X-Tenant": "acme", "Sy-Priority": "not-a-number"},
        )
        items = await got.wait(2, timeout=20)
        by_id = {o.id: env for o, env in items}
        assert by_id[1].kind == "event"
        assert by_id[1].id and by_id[1].correlation_id == by_id[1].id
        assert by_id[2].id == "order-2"
        assert by_id[2].correlation_id == "corr-2"
        assert by_id[2].header("X-Tenant") == "acme"
        assert by_id[2].priority == 128  # a bad Sy-Priority is ignored, not fatal
    finally:
        await bus.shutdown()


async def test_a_nats_py_event_that_does_not_decode_is_dead_lettered_on_the_node_with_its_bytes(nats_node):
    n, nc, prefix = nats_node
    bus = await connect(n)
    called = []
    try:

        @bus.on(f"{prefix}.orders.#", group="rev15bad")
        async def placed(o: R15Order) -> None:
            called.append(o)

        await bus.ready()
        await nc.jetstream().publish(f"{prefix}.orders.bad", b"\x00garbage", headers={"Nats-Msg-Id": "bad-1"})

        async def letter():
            return [i for i in await dlq_items(n, f"{prefix}.orders.#") if i["message"]["id"] == "bad-1"]

        (item,) = await eventually(letter, timeout=30)
        assert base64.b64decode(item["message"]["payload_base64"]) == b"\x00garbage"
        assert called == []
    finally:
        await bus.shutdown()


async def test_a_nats_py_event_marked_as_a_reply_is_not_silently_lost(nats_node):
    """`Sy-Kind: reply` on a stream: delivered as an event or dead-lettered, but not lost."""
    n, nc, prefix = nats_node
    bus = await connect(n)
    got = Collector()
    try:
        bus.on(f"{prefix}.kinds.#", lambda env: got.add(env), group="rev15kinds")
        await bus.ready()
        js = nc.jetstream()
        await js.publish(f"{prefix}.kinds.a", b'{"k":1}', headers={"Sy-Kind": "reply", "Nats-Msg-Id": "kind-reply"})
        await js.publish(f"{prefix}.kinds.b", b'{"k":2}', headers={"Sy-Kind": "bogus", "Nats-Msg-Id": "kind-bogus"})
        await js.publish(f"{prefix}.kinds.c", b'{"k":3}', headers={"Nats-Msg-Id": "kind-none"})

        async def accounted():
            ids = {e.id for e in got.items}
            ids |= {i["message"]["id"] for i in await dlq_items(n, f"{prefix}.kinds.#")}
            return ids >= {"kind-reply", "kind-bogus", "kind-none"} and ids

        await eventually(accounted, timeout=20)
    finally:
        await bus.shutdown()


async def test_nats_py_commands_reach_a_python_remote_handler_with_typed_statuses(nats_node):
    n, nc, prefix = nats_node
    bus = await connect(n)
    events = await nc.subscribe(f"{prefix}.done.>")
    await nc.flush()
    release = asyncio.Event()
    try:

        @bus.handle(f"{prefix}.double")
        async def double(p: dict, env) -> int:
            if p["n"] < 0:
                raise ValueError(f"cannot double {p['n']}")
            if p["n"] == 0:
                raise switchyard.Reject("zero is not welcome")
            if p["n"] == 7:
                await release.wait()
            await bus.publish(f"{prefix}.done.x", {"n": p["n"]})
            return p["n"] * 2

        await bus.ready()
        reply = await nc.request(f"_sy.cmd.{prefix}.double", b'{"n": 21}', timeout=10,
                                 headers={"Sy-Correlation-Id": "corr-nats-1", "X-Tenant": "acme"})
        assert reply.headers["Sy-Status"] == "ok", reply.headers
        assert json.loads(reply.data) == 42
        done = await events.next_msg(timeout=10)
        assert json.loads(done.data) == {"n": 21}
        assert done.headers["Sy-Correlation-Id"] == "corr-nats-1", done.headers
        assert done.headers.get("Sy-Causation-Id"), done.headers

        reply = await nc.request(f"_sy.cmd.{prefix}.double", b'{"n": -1}', timeout=20)
        assert reply.headers["Sy-Status"] == "failed", reply.headers
        assert "cannot double -1" in reply.headers["Sy-Error"], reply.headers
        assert "\n" not in reply.headers["Sy-Error"]

        reply = await nc.request(f"_sy.cmd.{prefix}.double", b'{"n": 0}', timeout=10)
        assert reply.headers["Sy-Status"] == "rejected", reply.headers
        assert "zero is not welcome" in reply.headers["Sy-Error"]

        start = time.monotonic()
        reply = await nc.request(f"_sy.cmd.{prefix}.double", b'{"n": 7}', timeout=10, headers={"Sy-Deadline-Ms": "300"})
        assert reply.headers["Sy-Status"] == "timeout", reply.headers
        assert time.monotonic() - start < 5
        release.set()

        reply = await nc.request(f"_sy.cmd.{prefix}.double", b"not json", timeout=10)
        assert reply.headers["Sy-Status"] in ("rejected", "failed"), reply.headers
    finally:
        await bus.shutdown()


async def test_a_nats_command_with_a_garbage_deadline_header_is_answered(nats_node):
    n, nc, prefix = nats_node
    bus = await connect(n)
    try:
        bus.handle(f"{prefix}.echo", lambda p: p)
        await bus.ready()
        for bad in ("abc", "-5", "0", "99999999999999999999999"):
            reply = await nc.request(f"_sy.cmd.{prefix}.echo", b'{"v": 1}', timeout=10, headers={"Sy-Deadline-Ms": bad})
            assert reply.headers.get("Sy-Status") in ("ok", "timeout", "rejected"), (bad, reply.headers)
            if reply.headers["Sy-Status"] == "ok":
                assert json.loads(reply.data) == {"v": 1}
    finally:
        await bus.shutdown()


async def test_a_python_handler_on_a_nats_node_killed_mid_command_answers_the_nats_requester(nats_node):
    n, nc, prefix = nats_node
    topic = f"{prefix}.kill"
    child = await _child_handler(n, topic)
    try:
        asking = asyncio.ensure_future(nc.request(f"_sy.cmd.{topic}", b"{}", timeout=25))
        assert (await asyncio.wait_for(child.stdout.readline(), 10)).strip() == b"got"
        start = time.monotonic()
        child.send_signal(signal.SIGKILL)
        reply = await asking
        assert time.monotonic() - start < 5
        assert reply.headers["Sy-Status"] == "failed", reply.headers
        assert "disconnected" in reply.headers["Sy-Error"], reply.headers
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
