"""The in-process API: events, commands, requests, priorities, batches, filters, sessions,
shutdown, the envelope view and correlation."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Optional

import pydantic
import pytest

import switchyard
from conftest import Collector, CreateUser, OrderPlaced, UserCreated, wait_for


async def test_pattern_handler_gets_the_envelope(bus, collector):
    @bus.on("analytics.#")
    async def observe(env):
        collector.add(env)

    await bus.publish("analytics.feature.request", {"x": 1}, headers={"tenant": "acme"}, priority=200)
    await bus.publish("analytics", [1, 2])  # `#` matches zero segments too
    await bus.publish("billing.invoice", {})  # not matched
    first, second = await collector.wait(2)
    assert first.topic == "analytics.feature.request"
    assert json.loads(first.payload) == {"x": 1}
    assert first.headers == {"tenant": "acme"}
    assert first.header("tenant") == "acme"
    assert first.priority == 200
    assert first.kind == "event"
    assert first.correlation_id == first.id and first.causation_id is None
    assert second.topic == "analytics" and json.loads(second.payload) == [1, 2]
    await bus.idle()
    assert len(collector.items) == 2


async def test_dataclass_messages_typed_handlers_and_second_argument(bus, collector):
    @bus.on(UserCreated)
    async def welcome(ev: UserCreated, env: switchyard.Envelope):
        collector.add((ev, env.type_name, env.topic))

    await bus.publish(UserCreated(id=7, name="ada"))
    [(ev, type_name, topic)] = await collector.wait(1)
    assert ev == UserCreated(id=7, name="ada")
    assert type_name == "UserCreated" and topic == "users.created"


@switchyard.event("users.renamed", version=3)
@dataclass
class UserRenamed:
    id: int


@switchyard.command("users.rename", version=2)
@dataclass
class RenameUser:
    id: int


async def test_a_message_class_version_is_the_envelopes_type_version(bus, collector):
    """`version=` of @event / @command travels as the envelope's `type_version` (the Rust
    side's contracts and upcasters read it); before, every Python message said version 1."""

    @bus.on(UserRenamed)
    async def renamed(ev: UserRenamed, env: switchyard.Envelope):
        collector.add(("event", env.type_name, env.type_version))

    @bus.handle(RenameUser)
    async def rename(cmd: RenameUser, env: switchyard.Envelope) -> int:
        collector.add(("command", env.type_name, env.type_version))
        return cmd.id

    await bus.publish(UserRenamed(id=1))
    assert await bus.send(RenameUser(id=2)) == 2
    await bus.publish("users.renamed", {"id": 3})  # a plain topic and dict: no type
    got = await collector.wait(3)
    assert sorted(got, key=str) == sorted(
        [("event", "UserRenamed", 3), ("command", "RenameUser", 2), ("event", None, 1)], key=str
    )


async def test_sync_handlers_and_dict_annotation(bus, collector):
    @bus.on("plain.sync")
    def plain(data: dict):
        collector.add(data)

    await bus.publish("plain.sync", {"k": "v"})
    assert await collector.wait(1) == [{"k": "v"}]


async def test_the_wire_format_is_serde_json_and_pydantic_interoperates(bus, collector):
    @switchyard.event("orders.placed")
    class OrderModel(pydantic.BaseModel):
        id: int
        sku: str
        qty: int
        tags: list[str] = []

    assert switchyard.encode(OrderPlaced(id=1, sku="a", qty=2)) == b'{"id":1,"sku":"a","qty":2,"tags":[]}'
    assert switchyard.encode(OrderModel(id=1, sku="a", qty=2)) == b'{"id":1,"sku":"a","qty":2,"tags":[]}'

    @bus.on(OrderPlaced, name="as-dataclass")
    async def as_dataclass(o: OrderPlaced):
        collector.add(o)

    @bus.on(OrderModel, name="as-model")
    async def as_model(o: OrderModel):
        collector.add(o)

    await bus.publish(OrderModel(id=3, sku="x", qty=1, tags=["a"]))
    await bus.publish(OrderPlaced(id=4, sku="y", qty=2))
    items = await collector.wait(4)
    assert OrderPlaced(id=3, sku="x", qty=1, tags=["a"]) in items
    assert OrderModel(id=4, sku="y", qty=2) in items
    assert sum(isinstance(i, OrderModel) for i in items) == 2


@dataclass
class Line:
    sku: str
    qty: int


@switchyard.event("carts.updated")
@dataclass
class Cart:
    lines: list[Line]
    owner: Optional[str] = None


async def test_nested_dataclasses_decode(bus, collector):
    @bus.on(Cart)
    async def cart(c: Cart):
        collector.add(c)

    await bus.publish(Cart(lines=[Line("a", 1), Line("b", 2)]))
    [c] = await collector.wait(1)
    assert c == Cart(lines=[Line("a", 1), Line("b", 2)], owner=None)


async def test_command_returns_its_result_to_send_and_request(bus):
    @bus.handle(CreateUser)
    async def create(cmd: CreateUser) -> int:
        return len(cmd.name)

    assert await bus.send(CreateUser(name="ada")) == 3
    assert await bus.request(CreateUser(name="grace"), timeout=1.0) == 5
    # By topic, with the reply as plain JSON.
    assert await bus.send("users.create", {"name": "x"}) == 1


@dataclass
class Quote:
    sku: str
    cents: int


@switchyard.command("pricing.quote", returns=Quote)
@dataclass
class GetQuote:
    sku: str


async def test_command_results_can_be_dataclasses(bus):
    @bus.handle(GetQuote)
    async def quote(q: GetQuote) -> Quote:
        return Quote(q.sku, 100 * len(q.sku))

    assert await bus.send(GetQuote("abc")) == Quote("abc", 300)


async def test_messages_published_by_a_handler_are_caused_by_it(bus, collector):
    @bus.on(UserCreated)
    async def seen(ev: UserCreated, env):
        collector.add(env)

    cmd_envs = []

    @bus.handle(CreateUser)
    async def create(cmd: CreateUser, env) -> int:
        cmd_envs.append(env)
        await asyncio.sleep(0)  # still the handler's context after a suspension
        await bus.publish(UserCreated(id=1))
        return 1

    await bus.send(CreateUser(name="a"))
    [ev] = await collector.wait(1)
    [cmd] = cmd_envs
    assert cmd.kind == "command"
    assert ev.causation_id == cmd.id
    assert ev.correlation_id == cmd.correlation_id == cmd.id
    assert switchyard.current_envelope() is None


async def test_handler_priority_groups_finish_in_order(bus):
    order: list[str] = []
    gate = asyncio.Event()
    validating = asyncio.Event()
    done = Collector()

    @bus.on("jobs.submitted", name="validate", priority=10)
    async def validate(env):
        order.append("validate")
        validating.set()
        await gate.wait()
        done.add("validate")

    @bus.on("jobs.submitted", name="enrich", priority=5)
    async def enrich(env):
        order.append("enrich")
        done.add("enrich")

    @bus.on("jobs.submitted", name="store")
    async def store(env):
        order.append("store")
        done.add("store")

    await bus.publish("jobs.submitted", {})
    await wait_for(validating)
    # While the highest group runs, the lower groups have not even been queued.
    by_name = {s["name"]: s for s in bus.registry()}
    for name in ("enrich", "store"):
        s = by_name[name]
        assert s["depth"] == 0 and s["in_flight"] == 0 and s["stats"]["delivered"] == 0, s
    gate.set()
    await done.wait(3)
    assert order == ["validate", "enrich", "store"]


async def test_batch_subscription_gets_lists(bus):
    batches = Collector()

    @bus.on_batch(OrderPlaced, max_size=5, max_wait=0.05)
    async def store(rows: list[OrderPlaced]):
        batches.add(rows)

    for i in range(12):
        await bus.publish(OrderPlaced(id=i, sku="s", qty=1))
    await bus.idle()
    sizes = [len(b) for b in batches.items]
    assert sum(sizes) == 12 and max(sizes) <= 5
    assert [o.id for b in batches.items for o in b] == list(range(12))
    assert all(isinstance(o, OrderPlaced) for b in batches.items for o in b)


async def test_header_and_callable_filters(bus, collector):
    @bus.on("orders.#", name="acme", headers={"tenant": "acme"})
    async def acme(env):
        collector.add(("acme", env.header("n")))

    @bus.on("orders.#", name="small", filter=lambda env: len(env.payload) < 10)
    async def small(env):
        collector.add(("small", env.header("n")))

    await bus.publish("orders.placed", {"big": "x" * 20}, headers={"tenant": "acme", "n": "1"})
    await bus.publish("orders.placed", {}, headers={"tenant": "other", "n": "2"})
    await bus.idle()
    assert sorted(collector.items) == [("acme", "1"), ("small", "2")]
    stats = {s["name"]: s["stats"] for s in bus.registry()}
    assert stats["acme"]["filtered"] == 1 and stats["small"]["filtered"] == 1


async def test_sessions_scope_handlers_and_commands(bus, collector):
    @switchyard.command("jobs.plan", returns=str)
    @dataclass
    class Plan:
        job: str

    @bus.handle(Plan)
    async def default_plan(p: Plan) -> str:
        return "default"

    lifecycle = Collector()

    @bus.on("switchyard.session.#")
    async def sessions(env):
        lifecycle.add((env.topic, env.session_id))

    @bus.on("jobs.progress", name="global-progress")
    async def global_progress(env):
        collector.add(("global", env.session_id))

    async with bus.session("job-42") as s:
        @s.on("jobs.progress", name="session-progress")
        async def session_progress(env):
            collector.add(("session", env.session_id))

        @s.handle(Plan)
        async def special_plan(p: Plan) -> str:
            return "special:" + p.job

        await s.publish("jobs.progress", {"pct": 50})
        await bus.publish("jobs.progress", {"pct": 60})  # not in the session
        assert await s.send(Plan("a")) == "special:a"
        assert await bus.send(Plan("b")) == "default"
        await bus.idle()
        assert sorted(collector.items, key=repr) == sorted([("global", None), ("global", "job-42"), ("session", "job-42")], key=repr)
    # Ended: the session's handlers are gone.
    assert await bus.send(Plan("c"), _session="job-42") == "default"
    await lifecycle.wait(2)
    assert lifecycle.items == [("switchyard.session.started", "job-42"), ("switchyard.session.ended", "job-42")]
    assert not any(s["name"] == "session-progress" and s["active"] for s in bus.registry())


async def test_messages_published_in_a_session_handler_stay_in_the_session(bus, collector):
    async with bus.session("s1") as s:
        @s.on("a.first")
        async def first(env):
            await bus.publish("a.second", {})

        @bus.on("a.second")
        async def second(env):
            collector.add(env.session_id)

        await s.publish("a.first", {})
        assert await collector.wait(1) == ["s1"]


async def test_shutdown_drains_and_reports(collector):
    bus = switchyard.Bus()

    @bus.on("work.item")
    async def work(env):
        await asyncio.sleep(0)
        collector.add(env.id)

    for _ in range(5):
        await bus.publish("work.item", {})
    report = await bus.shutdown(timeout=5.0)
    assert report == switchyard.ShutdownReport(drained=5, left=[], nacked=[])
    assert len(collector.items) == 5


async def test_unsubscribe_and_registry(bus, collector):
    sub = await_free = bus.on("temp.x", lambda env: collector.add(env.topic), name="temp")
    assert isinstance(sub, switchyard.Subscription) and sub.name == "temp"
    await bus.publish("temp.x", {})
    await bus.idle()
    assert sub.stats()["acked"] == 1
    assert sub.unsubscribe()
    await bus.publish("temp.x", {})
    await bus.idle()
    assert collector.items == ["temp.x"]
    del await_free


async def test_publish_and_wait_reports_handler_failures(bus):
    @bus.on("audit.x", name="ok")
    async def ok(env):
        pass

    @bus.on("audit.x", name="bad", max_attempts=1)
    async def bad(env):
        raise ValueError("nope")

    report = await bus.publish("audit.x", {}, wait=True)
    assert report.handled == 1
    [(name, error)] = report.failures
    assert name == "bad" and isinstance(error, switchyard.HandlerFailed)
    assert "ValueError: nope" in error.error


async def test_delayed_publish(bus, collector):
    @bus.on("later.x")
    async def later(env):
        collector.add(env.id)

    mid = await bus.publish("later.x", {}, delay=0.05)
    assert isinstance(mid, str) and collector.items == []
    assert await collector.wait(1) == [mid]


async def test_bus_as_async_context_manager(collector):
    async with switchyard.Bus() as bus:
        @bus.on("ctx.x")
        async def h(env):
            collector.add(1)

        await bus.publish("ctx.x", {})
    assert collector.items == [1]
    with pytest.raises(switchyard.ShuttingDown):
        await bus.publish("ctx.x", {})
