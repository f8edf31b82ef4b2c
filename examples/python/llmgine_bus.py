"""An event-bus program in the style of the LLMgine message bus, on switchyard.

Commands (one handler, a result back), events (any number of handlers, in priority groups),
sessions with their own handlers and automatic cleanup, retry with dead letters, batch
processing, filters and metrics.

Run: ``python examples/python/llmgine_bus.py``
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import switchyard


@switchyard.command("users.create", returns=str)
@dataclass
class CreateUserCommand:
    username: str
    email: str


@switchyard.event("users.created")
@dataclass
class UserCreatedEvent:
    user_id: str
    username: str


@switchyard.command("jobs.process_item", returns=int)
@dataclass
class ProcessItemCommand:
    item: str


@switchyard.command("payments.process", returns=str)
@dataclass
class ProcessPaymentCommand:
    amount_cents: int


@switchyard.event("inventory.updated")
@dataclass
class InventoryUpdated:
    sku: str
    delta: int


async def main() -> None:
    # ResilientMessageBus' retry and dead-letter queue are the bus's own rules here.
    bus = switchyard.Bus(max_attempts=3, retry_delay=0.01)
    log: list[str] = []

    # -- commands: exactly one handler, a result back ------------------------------------
    users: dict[str, str] = {}

    @bus.handle(CreateUserCommand)
    async def create_user(cmd: CreateUserCommand) -> str:
        if "@" not in cmd.email:
            raise switchyard.Reject(f"invalid email {cmd.email!r}")
        user_id = f"u{len(users) + 1}"
        users[user_id] = cmd.username
        await bus.publish(UserCreatedEvent(user_id=user_id, username=cmd.username))
        return user_id

    # -- events: handlers in priority groups, higher first ------------------------------
    @bus.on(UserCreatedEvent, priority=10)
    async def audit(ev: UserCreatedEvent, env: switchyard.Envelope) -> None:
        log.append(f"audit {ev.user_id} (caused by command {env.causation_id is not None})")

    @bus.on(UserCreatedEvent, priority=0)
    async def send_welcome(ev: UserCreatedEvent) -> None:
        log.append(f"welcome {ev.username}")

    user_id = await bus.send(CreateUserCommand(username="alice", email="alice@example.com"))
    print(f"CreateUser -> {user_id}")
    try:
        await bus.send(CreateUserCommand(username="bob", email="not-an-email"))
    except switchyard.Rejected as e:
        print(f"CreateUser rejected: {e.reason}")
    await bus.idle()
    print("event handlers ran in priority order:", log)

    # -- sessions: scoped handlers, cleaned up on exit ----------------------------------
    @bus.handle(ProcessItemCommand)
    async def default_processing(cmd: ProcessItemCommand) -> int:
        return 0

    async with bus.session("job-123") as session:
        @session.handle(ProcessItemCommand)
        async def job_processing(cmd: ProcessItemCommand) -> int:
            return len(cmd.item)

        print("in session job-123:", await session.send(ProcessItemCommand(item="widget")))
    print("after the session:", await bus.send(ProcessItemCommand(item="widget")))

    # -- retry and the dead-letter queue ------------------------------------------------
    calls = {"n": 0}

    @bus.handle(ProcessPaymentCommand)
    async def process_payment(cmd: ProcessPaymentCommand) -> str:
        calls["n"] += 1
        if cmd.amount_cents < 0:
            raise ValueError("negative amount")
        if calls["n"] < 3:
            raise ConnectionError("gateway timeout")  # transient: retried
        return f"paid {cmd.amount_cents}"

    print("payment:", await bus.send(ProcessPaymentCommand(amount_cents=500)), f"after {calls['n']} attempts")
    try:
        await bus.send(ProcessPaymentCommand(amount_cents=-1))
    except switchyard.HandlerFailed as e:
        print(f"payment failed after {e.attempts} attempts: {e.error.splitlines()[0]}")
    for dl in bus.dead_letters():
        print(f"dead letter: {dl.envelope.topic} reason={dl.reason} attempts={dl.attempts} handler={dl.handler}")

    # -- batch processing and filters ---------------------------------------------------
    batches: list[int] = []

    @bus.on_batch(InventoryUpdated, max_size=100, max_wait=0.05)
    async def store_inventory(rows: list[InventoryUpdated]) -> None:
        batches.append(len(rows))

    big_moves: list[str] = []

    @bus.on(InventoryUpdated, filter=lambda env: b'"delta":-' in env.payload)
    async def alert_on_decrease(ev: InventoryUpdated) -> None:
        big_moves.append(ev.sku)

    for i in range(250):
        await bus.publish(InventoryUpdated(sku=f"sku-{i % 5}", delta=-1 if i % 50 == 0 else 1))
    await bus.idle()
    print(f"inventory: {sum(batches)} updates in batches of at most 100: {max(batches) <= 100}, {len(big_moves)} decreases alerted")

    # -- metrics -------------------------------------------------------------------------
    metrics = bus.metrics()
    stats = {s["name"]: s["stats"] for s in metrics["subscriptions"]}
    print(f"metrics: payments handled {stats['payments.process']['acked']}, failed attempts {stats['payments.process']['failed']}, dead letters {metrics['dead_letters']}")
    report = await bus.shutdown()
    print(f"shutdown: left {len(report.left)}")


if __name__ == "__main__":
    asyncio.run(main())
