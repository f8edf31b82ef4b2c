"""The data-pipeline app's messages generated as Python (`examples/python/pipeline_messages.py`,
written by `switchyard schema export --lang python`): they import, carry the app's topics, and
round-trip through the bus as the JSON the Rust components read and write."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import types
import typing

import pytest

import switchyard
from conftest import NODE_TOKEN, REPO, Collector, NodeProcess, node_binary, start_node

sys.path.insert(0, str(REPO / "examples" / "python"))
import pipeline_messages as pm  # noqa: E402


def test_the_generated_classes_are_typed_dataclasses_with_the_apps_topics():
    assert sorted(pm.MESSAGES) == ["Job", "PipelineCancel", "PipelineRequest", "RunQuery", "RunsQuery"]
    for name, cls in pm.MESSAGES.items():
        assert dataclasses.is_dataclass(cls) and cls.__name__ == name
        assert isinstance(cls.TOPIC, str) and cls.VERSION == 1 and cls.KIND in ("event", "command")
        typing.get_type_hints(cls)  # every annotation resolves
    assert pm.PipelineRequest.TOPIC == "cpm.pipeline.request"
    assert pm.PipelineCancel.TOPIC == "cpm.pipeline.cancel"
    hints = typing.get_type_hints(pm.PipelineRequest)
    assert hints["run_id"] is str and hints["rows"] == typing.Optional[int]
    # Required fields are required; optional ones default to None.
    with pytest.raises(TypeError):
        pm.PipelineRequest(run_id="r")  # type: ignore[call-arg]
    assert pm.PipelineRequest(run_id="r", dataset="d").csv is None
    # The class constants are not fields (they do not go on the wire).
    assert [f.name for f in dataclasses.fields(pm.PipelineCancel)] == ["run_id"]


async def test_a_generated_message_round_trips_through_the_bus(bus, collector: Collector):
    @bus.on(pm.PipelineRequest)
    async def cpm(req: pm.PipelineRequest, env: switchyard.Envelope) -> None:
        collector.add((req, env))

    sent = pm.PipelineRequest(run_id="run-7", dataset="sales.csv", rows=120, fail="analytics")
    await bus.publish(sent)
    [(got, env)] = await collector.wait(1)
    assert got == sent and isinstance(got, pm.PipelineRequest)
    assert env.topic == "cpm.pipeline.request" and env.type_name == "PipelineRequest"
    wire = json.loads(env.payload)
    assert wire["run_id"] == "run-7" and wire["rows"] == 120 and wire["fail"] == "analytics"
    assert wire["csv"] is None  # serde reads null as None for these Option fields


async def test_json_as_the_rust_app_writes_it_decodes_into_the_dataclass(bus, collector: Collector):
    @bus.on("staging.load.request")
    async def manager(job: pm.Job) -> None:
        collector.add(job)

    # serde_json's form of the Rust `Job`: the `None` options are left out.
    await bus.publish("staging.load.request", b'{"run_id":"run-8","dataset":"sales.csv","attempt":2}')
    [job] = await collector.wait(1)
    assert job == pm.Job(run_id="run-8", dataset="sales.csv", attempt=2)
    assert job.fail is None and job.slow is None
    # A payload without a required field is not a Job: dead-lettered, never handled.
    await bus.publish("staging.load.request", b'{"run_id":"run-9"}')
    await bus.idle()
    assert len(collector.items) == 1
    [dl] = bus.dead_letters()
    assert dl.reason == "decode_failed" and b"run-9" in dl.envelope.payload


# -- against the Rust app itself: `switchyard serve --demo` ----------------------------------


@pytest.fixture(scope="module")
def demo_node(tmp_path_factory: pytest.TempPathFactory):
    """A node running the data-pipeline app (one trickle run an hour: the test's own run is
    the one that matters)."""
    binary = node_binary()
    n = start_node(tmp_path_factory.mktemp("demo-node"), binary, ("--demo", "--demo-interval-ms", "3600000"))
    yield n, binary
    n.proc.kill()
    n.proc.wait(10)


async def until(probe, timeout: float = 30.0, every: float = 0.05):
    """Polls the node until `probe()` is truthy (it has no push for its app being up)."""

    async def loop():
        while True:
            value = await probe()
            if value:
                return value
            await asyncio.sleep(every)

    return await asyncio.wait_for(loop(), timeout)


def load(name: str, code: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses resolves `ClassVar` annotations through it
    exec(compile(code, name, "exec"), module.__dict__)
    return module


async def test_the_rust_app_exports_these_classes_and_runs_a_request_built_from_them(demo_node):
    node, binary = demo_node

    async def app_up():
        status, doc = await asyncio.to_thread(node.http, "GET", "/v1/asyncapi.json")
        return status == 200 and "PipelineRequest" in doc["components"]["messages"]

    await until(app_up)
    # The node running the Rust app exports the same message classes as the committed module.
    out = await asyncio.to_thread(
        subprocess.run,
        [binary, "schema", "export", "--lang", "python", "--url", node.url],
        capture_output=True, text=True, timeout=60, env={**os.environ, "SWITCHYARD_TOKEN": NODE_TOKEN},
    )
    assert out.returncode == 0, out.stderr
    live = load("pipeline_messages_live", out.stdout)
    assert sorted(live.MESSAGES) == sorted(pm.MESSAGES)
    for name, cls in pm.MESSAGES.items():
        other = live.MESSAGES[name]
        assert (other.TOPIC, other.VERSION, other.KIND) == (cls.TOPIC, cls.VERSION, cls.KIND)
        assert other.__annotations__ == cls.__annotations__

    # A request built from the generated class runs through the Rust pipeline.
    remote = await switchyard.Bus.connect(node.url, token=NODE_TOKEN)
    try:
        done: asyncio.Queue = asyncio.Queue()

        @remote.on("cpm.pipeline.complete")
        async def completed(result: dict) -> None:
            if result.get("metadata", {}).get("run_id") == "py-run-1":
                await done.put(result)

        await remote.ready()
        await remote.publish(pm.PipelineRequest(run_id="py-run-1", dataset="ignored.csv", rows=40))
        result = await asyncio.wait_for(done.get(), 60)
        assert result.get("error") is None, result
        reply = await remote.send(pm.RunQuery(run_id="py-run-1"))
        run = reply["run"]
        assert run["status"] == "completed" and run["input"] == "generated", run
        assert [d for d, _ in run["domains"]][:1] == ["staging"]
    finally:
        await remote.shutdown(timeout=2.0)
