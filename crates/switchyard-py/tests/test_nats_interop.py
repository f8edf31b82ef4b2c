"""Publishing to and consuming from switchyard with any NATS client (docs/interop.md):
nats-py, with foreign headers, talks to a Rust switchyard process (`rust-peer`).

Self-contained (no switchyard Python package needed), so it also runs with `--noconftest`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

nats = pytest.importorskip("nats", reason="nats-py is installed by .ci/run")
from nats.errors import NoRespondersError  # noqa: E402

from conftest import drop_stream  # noqa: E402

URL = "nats://127.0.0.1:4222"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MSG_ID = str(uuid.uuid4())
ROOT = Path(__file__).resolve().parents[3]


def _nats_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=1).close()
        return True
    except OSError:
        if os.environ.get("CI") in ("true", "1"):
            raise
        return False


def _peer() -> str:
    subprocess.run(
        ["cargo", "build", "-q", "-p", "python-examples", "--bin", "rust-peer"],
        cwd=ROOT, check=True, timeout=1800,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / "rust-peer")


async def test_a_nats_py_client_publishes_and_commands_a_rust_switchyard_process():
    if not _nats_up():
        pytest.skip("NATS unreachable on 127.0.0.1:4222 (set CI=true to make this a failure)")
    peer = _peer()
    run = uuid.uuid4().hex[:12]
    prefix, stream = f"pyinterop{run}", f"PYNATSINTEROP_{run}"
    proc = await asyncio.create_subprocess_exec(
        peer, "nats-interop", URL, stream, prefix, "1", stdout=asyncio.subprocess.PIPE,
    )
    nc = await nats.connect(URL)
    try:
        assert json.loads(await asyncio.wait_for(proc.stdout.readline(), 60)) == {"ready": True}
        # A command from a plain NATS request, handled by the Rust process (first: the peer
        # stops once it has seen the event).
        reply = await nc.request(f"_sy.cmd.{prefix}.double", b'{"n": 21}', timeout=10)
        assert reply.headers["Sy-Status"] == "ok"
        assert json.loads(reply.data) == 42
        # Its typed failure.
        reply = await nc.request(f"_sy.cmd.{prefix}.double", b'{"n": -1}', timeout=10)
        assert reply.headers["Sy-Status"] == "failed"
        assert "cannot double -1" in reply.headers["Sy-Error"]
        # A command that does not match its registered schema is refused before the handler.
        reply = await nc.request(f"_sy.cmd.{prefix}.double", b'{"n": "x"}', timeout=10)
        assert reply.headers["Sy-Status"] == "rejected"
        assert "/n" in reply.headers["Sy-Error"], reply.headers
        # Nobody serves this command: no responders, at once.
        start = time.monotonic()
        with pytest.raises(NoRespondersError):
            await nc.request(f"_sy.cmd.{prefix}.nobody", b"{}", timeout=10)
        assert time.monotonic() - start < 2

        js = nc.jetstream()
        echoes = await nc.subscribe(f"{prefix}.echo.>")
        await nc.flush()
        # A command published on an event topic is never handed to an event handler.
        await js.publish(f"{prefix}.events.orders", b'{"sneaky": true}', headers={"Sy-Kind": "command"})
        # An event that does not match the schema the Rust process registered for the topic
        # is dead-lettered there, with the path of what is wrong, and never handled.
        await js.publish(f"{prefix}.events.orders", json.dumps({"id": "seven", "sku": "py-7"}).encode())
        # The event, with the headers a service in another language sets.
        await js.publish(
            f"{prefix}.events.orders",
            json.dumps({"id": 7, "sku": "py-7"}).encode(),
            headers={
                "traceparent": TRACEPARENT,
                "tracestate": "vendor=opaque",
                "X-Correlation-Id": "abc-123",
                "X-Percent": "50%25 off",
                # Foreign ids: a UUID message id, a correlation id of this service's own.
                "Nats-Msg-Id": MSG_ID,
                "Sy-Correlation-Id": "corr-42",
            },
        )
        got = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert got["topic"] == f"{prefix}.events.orders"
        assert got["kind"] == "event"
        assert got["payload"] == {"id": 7, "sku": "py-7"}
        headers = got["headers"]
        assert headers["traceparent"] == TRACEPARENT
        assert headers["tracestate"] == "vendor=opaque"
        assert headers["X-Correlation-Id"] == "abc-123"
        assert headers["X-Percent"] == "50%25 off"
        # The ids arrive as they were sent ...
        assert got["id"] == MSG_ID
        assert got["correlation_id"] == "corr-42"
        # ... and come back unchanged on what the Rust handler publishes in turn.
        echo = await echoes.next_msg(timeout=30)
        assert echo.subject == f"{prefix}.echo.orders"
        assert echo.headers["Sy-Correlation-Id"] == "corr-42"
        assert echo.headers["Sy-Causation-Id"] == MSG_ID

        assert await asyncio.wait_for(proc.wait(), 30) == 0
        rest = [json.loads(line) for line in (await proc.stdout.read()).decode().splitlines()]
        assert [line for line in rest if "dead_letter" not in line] == [], "the invalid event was handled"
        letters = [
            line["dead_letter"] for line in rest
            if "dead_letter" in line and line["dead_letter"]["topic"] == f"{prefix}.events.orders"
        ]
        # The sneaky command (published, so without a reply subject: rejected, unanswerable),
        # then the invalid event (rejected at the intake).
        assert [letter["reason"] for letter in letters] == ["Rejected", "Rejected"], letters
        assert "without a reply subject" in letters[0]["error"], letters
        assert "/id" in letters[1]["error"] and "ForeignOrder" in letters[1]["error"], letters
        refused = [line["dead_letter"] for line in rest
                   if "dead_letter" in line and line["dead_letter"]["topic"] == f"{prefix}.double"
                   and line["dead_letter"]["reason"] == "Rejected"]
        assert len(refused) == 1 and "/n" in refused[0]["error"], refused
    finally:
        await nc.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await drop_stream(stream)
