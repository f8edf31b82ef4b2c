"""W10: 1 -> 1 events with 64-byte payloads from Python, and the command round trip.

Sides, in one run, alternating their order every round:

- ``asyncio.Queue``: a bounded queue (1024, the bus's default capacity) between a producer
  and one consumer task calling an async handler: the floor, pure Python pass-through.
- ``switchyard``: ``await bus.publish(topic, payload)`` into a ``Bus()`` with one Python
  async handler, default settings (1 worker: one call at a time, in order; the worker hands
  the loop up to 64 queued messages at once).
- ``switchyard prefetch=1``: the same, the worker handing over one message at a time.
- ``switchyard workers=16``: the same with 16 handler calls in flight (no order).
- ``switchyard through a node``: a ``switchyard serve`` node (memory transport, release
  build) and two ``Bus.connect`` connections: one publishes (``await publish``, answered
  once the node queued the message), the other handles (manual ack; 1 delivery in flight,
  and 16; and with 64 publishes awaiting their answers at once). Every message crosses two
  WebSocket connections and the node's bus.
- ``bubus`` (if installed): ``bus.dispatch(event)`` with one async handler, then
  ``wait_until_idle``. Fewer events per round: it is much slower.

Each round times every side once; the result is the median over rounds of each round's
ratio (so a slow spell of the machine hits both sides of a ratio). Then the command round
trip ``await bus.send(...)`` to a Python handler and to a Rust handler, p50 / p99, and
through the node to a Python handler on another connection.

Run (release build of the extension first):

    pip install ./crates/switchyard-py bubus   # or: maturin develop --release
    python crates/switchyard-py/bench/w10.py [--events 20000] [--rounds 7]

The node is ``target/release/switchyard`` (built with cargo if missing), or ``--node-bin``;
``--no-node`` leaves the node sides out.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import switchyard
from switchyard._switchyard import testing as rust_testing

PAYLOAD = b"x" * 64


async def asyncio_queue(n: int) -> float:
    q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1024)
    done = asyncio.Event()
    seen = 0

    async def handler(payload: bytes) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    async def consumer() -> None:
        while True:
            item = await q.get()
            await handler(item)

    task = asyncio.ensure_future(consumer())
    start = time.perf_counter()
    for _ in range(n):
        await q.put(PAYLOAD)
    await done.wait()
    elapsed = time.perf_counter() - start
    task.cancel()
    return n / elapsed


async def switchyard_bus(n: int, workers: int = 1, prefetch: int | None = None) -> float:
    bus = switchyard.Bus()
    done = asyncio.Event()
    seen = 0
    options = {} if prefetch is None else {"prefetch": prefetch}

    @bus.on("bench.event", workers=workers, **options)
    async def handler(payload: bytes) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    publish = bus.publish
    start = time.perf_counter()
    for _ in range(n):
        await publish("bench.event", PAYLOAD)
    await done.wait()
    elapsed = time.perf_counter() - start
    await bus.shutdown()
    bus.close()
    return n / elapsed


REPO = Path(__file__).resolve().parents[3]


class Node:
    """A `switchyard serve` node on an ephemeral port (memory transport, auth off)."""

    def __init__(self, binary: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        cfg = Path(self.dir.name) / "node.toml"
        cfg.write_text('listen = "127.0.0.1:0"\n[transport]\nkind = "memory"\n[logging]\nformat = "text"\nfilter = "warn"\n')
        self.proc = subprocess.Popen([binary, "serve", "--config", str(cfg)], cwd=self.dir.name,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if "listening on" not in first:
            self.proc.kill()
            raise RuntimeError(f"the node did not start: {first!r}")
        self.url = first.split("listening on", 1)[1].strip()
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.dir.cleanup()


def node_binary(given: str | None) -> str:
    if given:
        return given
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "switchyard-cli", "--bin", "switchyard"],
                   cwd=REPO, check=True, env={**os.environ, "CARGO_INCREMENTAL": "0"})
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return str(target / "release" / "switchyard")


async def through_node(url: str, n: int, workers: int = 1, window: int = 1) -> float:
    publisher = await switchyard.Bus.connect(url)
    subscriber = await switchyard.Bus.connect(url)
    done = asyncio.Event()
    seen = 0

    @subscriber.on("bench.node_event", workers=workers)
    async def handler(payload: bytes) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    await subscriber.ready()
    publish = publisher.publish
    start = time.perf_counter()
    if window == 1:
        for _ in range(n):
            await publish("bench.node_event", PAYLOAD)
    else:  # `window` publishes awaiting their answers at once (tasks on one connection)
        pending: set[asyncio.Future[object]] = set()
        for _ in range(n):
            pending.add(asyncio.ensure_future(publish("bench.node_event", PAYLOAD)))
            if len(pending) >= window:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
    await done.wait()
    elapsed = time.perf_counter() - start
    await publisher.shutdown()
    await subscriber.shutdown()
    return n / elapsed


async def node_round_trip(url: str, k: int) -> tuple[float, float]:
    server = await switchyard.Bus.connect(url)
    client = await switchyard.Bus.connect(url)

    @server.handle("bench.node_cmd")
    async def handler(payload: dict) -> int:
        return 1

    await server.ready()
    for _ in range(200):  # warm up
        await client.send("bench.node_cmd", {"n": 1})
    lat = []
    for _ in range(k):
        t0 = time.perf_counter_ns()
        await client.send("bench.node_cmd", {"n": 1})
        lat.append(time.perf_counter_ns() - t0)
    lat.sort()
    await client.shutdown()
    await server.shutdown()
    return lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000


def make_bubus():
    try:
        import bubus  # noqa: F401
    except ImportError:
        return None
    from bubus import BaseEvent, EventBus

    class BenchEvent(BaseEvent):
        payload: str

    async def run(n: int) -> float:
        # Unbounded history: with a bounded one, dispatch waits for old events to be
        # cleaned up. Timed until the handler has seen every event (as for the other sides),
        # not until wait_until_idle, which adds its own polling delay.
        bus = EventBus(max_history_size=None)
        done = asyncio.Event()
        seen = 0

        async def handler(event: BenchEvent) -> None:
            nonlocal seen
            seen += 1
            if seen == n:
                done.set()

        bus.on(BenchEvent, handler)
        text = PAYLOAD.decode()
        start = time.perf_counter()
        for _ in range(n):
            bus.dispatch(BenchEvent(payload=text))
        await done.wait()
        elapsed = time.perf_counter() - start
        await bus.stop(clear=True)
        return n / elapsed

    return run


async def round_trip(k: int) -> dict[str, tuple[float, float]]:
    bus = switchyard.Bus()

    @bus.handle("bench.cmd")
    async def handler(payload: bytes) -> int:
        return 1

    rust_handler = rust_testing.rust_echo_handler(bus._native, "bench.rust_cmd")  # kept: dropping it unsubscribes
    out = {}
    for name, topic in (("Python handler", "bench.cmd"), ("Rust handler", "bench.rust_cmd")):
        for _ in range(200):  # warm up
            await bus.send(topic, {"n": 1})
        lat = []
        for _ in range(k):
            t0 = time.perf_counter_ns()
            await bus.send(topic, {"n": 1})
            lat.append(time.perf_counter_ns() - t0)
        lat.sort()
        out[name] = (lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000)
    rust_handler.close()
    await bus.shutdown()
    bus.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--bubus-events", type=int, default=500)
    ap.add_argument("--round-trips", type=int, default=5_000)
    ap.add_argument("--node-bin", default=None, help="the switchyard CLI (default: target/release/switchyard, built if needed)")
    ap.add_argument("--no-node", action="store_true", help="leave the through-a-node sides out")
    args = ap.parse_args()
    node = None if args.no_node else Node(node_binary(args.node_bin))

    bubus_run = make_bubus()
    sides = {
        "asyncio.Queue": lambda: asyncio_queue(args.events),
        "switchyard": lambda: switchyard_bus(args.events),
        "switchyard workers=16": lambda: switchyard_bus(args.events, workers=16),
    }
    if "prefetch" in inspect.signature(switchyard.Bus.on).parameters:
        sides["switchyard prefetch=1"] = lambda: switchyard_bus(args.events, prefetch=1)
    if node is not None:
        url = node.url
        sides["through a node"] = lambda: through_node(url, args.events)
        sides["through a node, 16 in flight"] = lambda: through_node(url, args.events, workers=16)
        sides["through a node, 16 in flight, 64 publishes"] = lambda: through_node(url, args.events, workers=16, window=64)
    if bubus_run is not None:
        sides["bubus"] = lambda: bubus_run(args.bubus_events)
    else:
        print("bubus is not installed: skipping it (pip install bubus)")

    # Warm-up round, not counted.
    for run in sides.values():
        await run()

    rates: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else list(reversed(names))
        for name in order:
            gc.collect()
            rates[name].append(await sides[name]())

    print(f"W10: 1 -> 1 events, 64-byte payloads, {args.rounds} rounds (order alternating), "
          f"{args.events} events per round ({args.bubus_events} for bubus); Python {sys.version.split()[0]}")
    for name in names:
        rs = rates[name]
        print(f"  {name:44} median {statistics.median(rs):>12,.0f} ev/s   (min {min(rs):,.0f}, max {max(rs):,.0f})")

    def ratio(a: str, b: str) -> None:
        per_round = [x / y for x, y in zip(rates[a], rates[b])]
        print(f"  {a} / {b}: median {statistics.median(per_round):.3g}x  (rounds: {', '.join(f'{x:.3g}' for x in per_round)})")

    print("ratios (median of per-round ratios):")
    for a in [x for x in names if x.startswith(("switchyard", "through"))]:
        ratio(a, "asyncio.Queue")
        if "bubus" in rates:
            ratio(a, "bubus")

    trips = await round_trip(args.round_trips)
    print(f"command round trip, await bus.send(...) from Python, {args.round_trips} sequential:")
    for name, (p50, p99) in trips.items():
        print(f"  to a {name:15} p50 {p50:8.1f} us   p99 {p99:8.1f} us")
    if node is not None:
        p50, p99 = await node_round_trip(node.url, args.round_trips)
        print(f"command round trip through the node, await bus.send(...) over a connection to a Python handler on another, {args.round_trips} sequential:")
        print(f"  p50 {p50:8.1f} us   p99 {p99:8.1f} us")
        node.stop()


if __name__ == "__main__":
    asyncio.run(main())
