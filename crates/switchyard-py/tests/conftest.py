"""Shared fixtures: message types, a bus per test, the Rust peer binary, NATS."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Optional

import pytest

import switchyard

REPO = Path(__file__).resolve().parents[3]


@switchyard.event("users.created")
@dataclass
class UserCreated:
    id: int
    name: str = ""


@switchyard.command("users.create", returns=int)
@dataclass
class CreateUser:
    name: str


@switchyard.event("orders.placed")
@dataclass
class OrderPlaced:
    id: int
    sku: str
    qty: int
    tags: list[str] = field(default_factory=list)


async def wait_for(event: asyncio.Event, timeout: float = 5.0) -> None:
    """Waits for an event the test expects, failing (not hanging) after `timeout`."""
    await asyncio.wait_for(event.wait(), timeout)


class Collector:
    """Collects what handlers saw; `wait(n)` returns once `n` items arrived."""

    def __init__(self) -> None:
        self.items: list = []
        self._changed = asyncio.Event()

    def add(self, item) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait(self, n: int, timeout: float = 5.0) -> list:
        async def until() -> None:
            while len(self.items) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return self.items


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
async def bus() -> AsyncIterator[switchyard.Bus]:
    b = switchyard.Bus(retry_delay=0.01)
    yield b
    if not b._native.is_shutting_down():
        await b.shutdown(timeout=2.0)
    b.close()


def rust_peer() -> str:
    """The `rust-peer` binary (examples/python), built on first use."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    subprocess.run(
        ["cargo", "build", "-q", "-p", "python-examples", "--bin", "rust-peer"],
        cwd=REPO,
        check=True,
    )
    path = target / "debug" / "rust-peer"
    assert path.exists(), f"rust-peer not found at {path}"
    return str(path)


def nats_available(host: str = "127.0.0.1", port: int = 4222) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_nats() -> None:
    """NATS tests skip loudly without a server, unless CI is set (then they must run)."""
    if nats_available():
        return
    if os.environ.get("CI"):
        pytest.fail("NATS is not reachable on 127.0.0.1:4222 and CI is set")
    print("SKIPPING NATS TEST: no server on 127.0.0.1:4222")
    pytest.skip("SKIPPING NATS TEST: no server on 127.0.0.1:4222")


async def drop_stream(name: str) -> None:
    """Deletes a test's JetStream stream, so runs do not pile up reservations on the shared
    server (each stream reserves its `max_bytes`: leftovers once filled its storage, and
    every later stream creation failed with error 10047)."""
    try:
        import nats
    except ImportError:
        return
    try:
        nc = await nats.connect("nats://127.0.0.1:4222")
    except Exception:
        return
    try:
        await nc.jetstream().delete_stream(name)
    except Exception:
        pass
    finally:
        await nc.close()


# -- a switchyard node (`switchyard serve`) for the connected-bus tests ----------------------

#: Tokens of the test node's principals: `py` holds every grant (and admin), `reader` may
#: only subscribe to `limited.#`.
NODE_TOKEN = "py-secret-token"
READER_TOKEN = "reader-secret-token"


class NodeProcess:
    """A running `switchyard serve`: its base URL, and HTTP calls to it."""

    def __init__(self, proc: subprocess.Popen, url: str, stderr_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.stderr_path = stderr_path

    def http(self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict] = None, token: Optional[str] = NODE_TOKEN) -> tuple[int, dict]:
        """One HTTP call (blocking: run it with asyncio.to_thread); (status, JSON body)."""
        import json as _json
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, data=body, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, _json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, _json.loads(e.read() or b"null")


def switchyard_binary() -> Optional[str]:
    """The `switchyard` CLI (crates/switchyard-cli), built on first use; None when it cannot
    be built (then the node tests skip loudly, or fail under CI)."""
    if os.environ.get("SWITCHYARD_BIN"):
        return os.environ["SWITCHYARD_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if shutil.which("cargo") is None:
        return None
    build = subprocess.run(
        ["cargo", "build", "-q", "-p", "switchyard-cli", "--bin", "switchyard"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    path = target / "debug" / "switchyard"
    if build.returncode != 0 or not path.exists():
        print(build.stderr[-2000:])
        return None
    return str(path)


def _node_config(tmp: Path, transport: str = 'kind = "memory"') -> Path:
    import hashlib

    def sha(t: str) -> str:
        return hashlib.sha256(t.encode()).hexdigest()

    cfg = tmp / "node.toml"
    cfg.write_text(
        f"""listen = "127.0.0.1:0"

[transport]
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
sha256 = "{sha(NODE_TOKEN)}"
[[auth.tokens]]
principal = "reader"
sha256 = "{sha(READER_TOKEN)}"

[logging]
format = "text"
filter = "warn"
"""
    )
    return cfg


def start_node(tmp: Path, binary: str, extra_args: tuple[str, ...] = (), transport: str = 'kind = "memory"') -> NodeProcess:
    """Starts `switchyard serve` (with `extra_args`, and `transport` as the body of its
    `[transport]` table) on an ephemeral port and waits for its first line, which names the
    bound address."""
    import threading

    stderr_path = tmp / "node.stderr"
    proc = subprocess.Popen(
        [binary, "serve", "--config", str(_node_config(tmp, transport)), "--listen", "127.0.0.1:0", *extra_args],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=open(stderr_path, "wb"),
        text=True,
    )
    first: list[str] = []
    got = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # keeps draining so the node never blocks on stdout
            if not first:
                first.append(line)
                got.set()
        got.set()

    threading.Thread(target=pump, daemon=True).start()
    if not got.wait(60) or not first or "listening on" not in first[0]:
        proc.kill()
        raise RuntimeError(f"the node did not start: {first!r}\n{stderr_path.read_text()[-2000:]}")
    url = first[0].split("listening on", 1)[1].strip()
    return NodeProcess(proc, url, stderr_path)


def node_binary() -> str:
    """The `switchyard` CLI; skips loudly when it cannot be built, unless CI is set."""
    binary = switchyard_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the switchyard CLI could not be built and CI is set")
        print("SKIPPING NODE TESTS: the switchyard CLI could not be built")
        pytest.skip("SKIPPING NODE TESTS: the switchyard CLI could not be built")
    return binary


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory):
    """A `switchyard serve` node (memory transport, auth on) for the whole session, killed at
    the end. Without a buildable binary the node tests skip loudly, unless CI is set."""
    binary = node_binary()
    n = start_node(tmp_path_factory.mktemp("node"), binary)
    yield n
    n.proc.kill()
    n.proc.wait(10)


@pytest.fixture
async def remote(node: NodeProcess) -> AsyncIterator[switchyard.ConnectedBus]:
    """A bus connected to the node, shut down after the test."""
    b = await switchyard.Bus.connect(node.url, token=NODE_TOKEN)
    yield b
    await b.shutdown(timeout=2.0)
