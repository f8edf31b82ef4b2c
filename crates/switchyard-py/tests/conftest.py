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
