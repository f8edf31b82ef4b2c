"""Outside-in review (rev7), second part: the package across processes (fork, NATS, a bus
connected to a node). See test_review_rev7.py for the first part and the conventions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest

import switchyard
from conftest import Collector, drop_stream, require_nats

# -- fork ------------------------------------------------------------------------------------

FORK_PROBE = r"""
import asyncio, multiprocessing as mp, sys
import switchyard

async def use(tag):
    bus = switchyard.Bus()
    @bus.handle("fork.cmd")
    async def h(data: dict) -> dict:
        await asyncio.sleep(0)
        return {"tag": tag, "n": data["n"] + 1}
    seen = []
    bus.on("fork.ev", lambda env: seen.append(env.payload))
    reply = await asyncio.wait_for(bus.send("fork.cmd", {"n": 1}), 10)
    await bus.publish("fork.ev", b"x")
    await asyncio.wait_for(bus.idle(), 10)
    await asyncio.wait_for(bus.shutdown(timeout=2), 10)
    return reply, seen

def child(q):
    try:
        q.put(repr(asyncio.run(use("child"))))
    except BaseException as e:
        q.put(f"child failed: {type(e).__name__}: {e}")

if __name__ == "__main__":
    print(asyncio.run(use("parent")), flush=True)   # the runtime's threads exist now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    try:
        print(q.get(timeout=30), flush=True)
    except Exception as e:
        print(f"no answer from the child: {type(e).__name__}", flush=True)
    p.join(5)
    if p.is_alive():
        p.kill()
"""


def test_a_forked_child_can_use_a_bus_of_its_own(tmp_path):
    # Expected: multiprocessing's default start method on Linux (fork) gives a child that can
    # make and use a bus of its own (the docs' fork section: "A process forked from one that
    # uses switchyard ... makes message ids of its own"), so its send gets the reply.
    # Observed: the child's `bus.send` never completes: the child prints "child failed:
    # TimeoutError" (the 10 s wait_for): the process-wide tokio runtime
    # (crates/switchyard-py/src/ops.rs:24 `runtime()`, pyo3-async-runtimes' static) was built
    # in the parent; its worker threads do not exist in the child, so nothing spawned there
    # (bus workers, handler calls) ever runs. The at-fork hook (python/switchyard/__init__.py)
    # only resets the id run.
    script = tmp_path / "probe.py"
    script.write_text(FORK_PROBE)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, (out.stdout, out.stderr[-2000:])
    assert "'parent'" in lines[0]
    assert lines[1] == "({'tag': 'child', 'n': 2}, [b'x'])", (lines[1], out.stderr[-2000:])


FORK_NATS_PROBE = r"""
import asyncio, os, switchyard

async def use():
    bus = switchyard.Bus()
    bus.on("x.y", lambda env: None)
    await bus.publish("x.y", b"")
    await bus.shutdown(timeout=1)

async def connect():
    try:
        await asyncio.wait_for(switchyard.Bus.connect_nats("nats://127.0.0.1:1"), 10)
    except switchyard.TransportError as e:
        return f"{e.kind}: {e}"
    except BaseException as e:
        return f"{type(e).__name__}: {e}"

asyncio.run(use())
pid = os.fork()
if pid == 0:
    print(asyncio.run(connect()), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_connect_nats_in_a_forked_child_is_refused_at_once_not_a_hang(tmp_path):
    # The child's own runtime covers buses; connect_nats still resolves through
    # pyo3-async-runtimes' runtime (the parent's, without threads here): refused, named.
    script = tmp_path / "fork_nats.py"
    script.write_text(FORK_NATS_PROBE)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    line = out.stdout.strip()
    assert line.startswith("unsupported: connect_nats is not available in a process forked"), (line, out.stderr[-2000:])


EXIT_PROBE = r"""
import asyncio, sys, threading, switchyard
mode = sys.argv[1]
flowing = threading.Event()

async def main():
    bus = switchyard.Bus(queue_capacity=100000)
    handled = [0]

    @bus.on("exit.flow", workers=4)
    async def h(env):
        handled[0] += 1
        if handled[0] >= 2000:
            flowing.set()
        await asyncio.sleep(0)

    @bus.handle("exit.cmd")
    async def stuck(env):
        await asyncio.Event().wait()

    asyncio.ensure_future(bus.send("exit.cmd", {}))

    async def pump():
        while True:
            await bus.publish("exit.flow", b"x")

    if mode == "exit":
        pumps = [asyncio.ensure_future(pump()) for _ in range(2)]
        if not await asyncio.to_thread(flowing.wait, 30):
            sys.exit(9)
        sys.exit(3)
    await asyncio.gather(pump(), pump())

if mode == "exit":
    asyncio.run(main())
else:  # a daemon thread still publishing and handling when the interpreter exits
    threading.Thread(target=lambda: asyncio.run(main()), daemon=True).start()
    if not flowing.wait(30):
        sys.exit(9)
"""


@pytest.mark.parametrize("mode", ["exit", "daemon"])
def test_the_interpreter_exits_cleanly_with_handlers_and_commands_in_flight(tmp_path, mode):
    script = tmp_path / "exit_probe.py"
    script.write_text(EXIT_PROBE)
    for _ in range(3):
        out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=60)
        assert out.returncode == (3 if mode == "exit" else 0), out.stderr[-2000:]
        assert "panicked" not in out.stderr and "Fatal Python error" not in out.stderr, out.stderr[-2000:]


# -- NATS ------------------------------------------------------------------------------------


async def test_connect_nats_to_nothing_is_a_transport_error_not_a_hang(tmp_path):
    with pytest.raises(switchyard.TransportError) as e:
        await asyncio.wait_for(switchyard.Bus.connect_nats("nats://127.0.0.1:1", streams={"x": ["x.#"]}), 60)
    assert "127.0.0.1:1" in str(e.value)
    first = switchyard.Bus.open_log(tmp_path / "log")
    with pytest.raises(switchyard.TransportError):
        switchyard.Bus.open_log(tmp_path / "log")
    await first.shutdown()


async def test_a_transport_error_at_connect_or_open_carries_its_kind(tmp_path):
    # Expected (docs/python.md, Errors: `TransportError` fields `kind`; errors.py: "kind is
    # unavailable, timeout, ..."): an unreachable NATS is TransportError(kind="unavailable"),
    # a log another bus holds has a kind too.
    # Observed: AttributeError: 'TransportError' object has no attribute 'kind' (message
    # "cannot connect to NATS at nats://127.0.0.1:1: IO error: Connection refused (os error
    # 111)"). Cause: crates/switchyard-py/src/transport.rs:133 (connect_nats) and :84
    # (open_log) call `errors::raise(py, "TransportError", e.to_string(), &[])` instead of
    # `errors::transport_error`, which sets `kind`.
    with pytest.raises(switchyard.TransportError) as e:
        await asyncio.wait_for(switchyard.Bus.connect_nats("nats://127.0.0.1:1"), 60)
    assert e.value.kind == "unavailable"
    first = switchyard.Bus.open_log(tmp_path / "log")
    try:
        with pytest.raises(switchyard.TransportError) as e2:
            switchyard.Bus.open_log(tmp_path / "log")
        assert e2.value.kind == "unavailable", e2.value.kind  # locked by the other bus
    finally:
        await first.shutdown()


async def test_nats_publish_to_a_topic_no_stream_holds_is_a_typed_error_and_the_bus_stays_usable():
    require_nats()
    run = uuid.uuid4().hex[:10]
    stream = f"REV7_{run}"
    bus = await switchyard.Bus.connect_nats(streams={stream: [f"rev7{run}.#"]})
    try:
        got = Collector()

        @bus.on(f"rev7{run}.>".replace(">", "#"), name=f"rev7-{run}")
        async def h(payload: bytes):
            got.add(payload)

        with pytest.raises(switchyard.SwitchyardError) as e:
            await bus.publish(f"nostream{run}.x", b"lost")
        assert isinstance(e.value, switchyard.PublishError), repr(e.value)
        await bus.publish(f"rev7{run}.a", b"kept")
        assert await got.wait(1, timeout=20) == [b"kept"]
    finally:
        await bus.shutdown(timeout=5)
        await drop_stream(stream)


# -- a bus connected to a node (`Bus.connect`) ------------------------------------------------


async def test_connected_bus_bad_input_is_refused_per_call_and_the_connection_survives(node):
    from conftest import NODE_TOKEN

    bus = await switchyard.Bus.connect(node.url, token=NODE_TOKEN)
    try:
        got = Collector()
        sub = bus.on("rev7remote.x", lambda env: got.add(env.payload))
        await sub.ready()
        for bad in ("", "a..b", "a.*"):
            with pytest.raises(switchyard.InvalidTopic):
                await bus.publish(bad, b"")
        # Frames the node cannot read as its contract are refused with an error answer; the
        # connection stays open (docs/gateway.md: "a bad frame gets an error op").
        with pytest.raises(switchyard.SwitchyardError):
            await bus.publish("rev7remote.x", b"x", priority=300)
        with pytest.raises(switchyard.SwitchyardError):
            await bus.publish("rev7remote.x", b"x", headers={"tenant": None})
        with pytest.raises(switchyard.NoHandler):
            await bus.request("rev7remote.nobody", {}, timeout=1.0)
        await bus.publish("rev7remote.x", b"still open")
        assert await got.wait(1, timeout=10) == [b"still open"]
    finally:
        first = await bus.shutdown(timeout=2)
    assert await bus.shutdown() == first
    bus.close()
    bus.close()
    with pytest.raises(switchyard.ShuttingDown):
        await bus.publish("rev7remote.x", b"late")
    with pytest.raises(switchyard.ShuttingDown):
        bus.on("rev7remote.y", lambda env: None)


async def test_a_publish_over_the_nodes_frame_limit_says_why_the_connection_closed(node):
    # Expected: the node closes a connection whose frame exceeds `ws.max_frame_bytes` (1 MiB
    # by default; docs/gateway.md: code 1009, "the reason naming the limit"); the caller's
    # TransportError(kind="closed") says why (the close code or the reason naming
    # ws.max_frame_bytes), so a user knows the payload was too large.
    # Observed: TransportError('the connection to the node is closed') for the publish and
    # for every later call, with no reason. Cause: crates/switchyard-py/python/switchyard/
    # _remote.py:180/:183 `_on_closed` fails waiting calls with a fresh `_closed()` instead of
    # the `reason` it was given (which holds the ConnectionClosed text), and :204
    # `_check_open` raises a fresh `_closed()` rather than `self._closed`.
    from conftest import NODE_TOKEN

    bus = await switchyard.Bus.connect(node.url, token=NODE_TOKEN)
    try:
        with pytest.raises(switchyard.TransportError) as e:
            await asyncio.wait_for(bus.publish("rev7remote.big", b"x" * (2 * 1024 * 1024)), 30)
        assert e.value.kind == "closed"
        assert "1009" in str(e.value) or "max_frame_bytes" in str(e.value), str(e.value)
        with pytest.raises(switchyard.TransportError) as later:
            await bus.publish("rev7remote.big", b"small")
        assert "1009" in str(later.value) or "max_frame_bytes" in str(later.value), str(later.value)
    finally:
        await bus.shutdown(timeout=2)
