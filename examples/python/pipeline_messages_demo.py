"""The data-pipeline app's messages in Python, without copying a struct.

`pipeline_messages.py` next to this file is generated from the app's registry
(`switchyard schema export --lang python --from examples/data-pipeline/asyncapi.json`, or from
a node running the app: `switchyard serve --demo`, then `switchyard schema export --lang
python`). Here a Python frontend asks a Python stand-in of the CPM to run the pipeline; the
CPM starts the first domain with a `Job`, exactly the JSON the Rust components exchange.
"""

from __future__ import annotations

import asyncio
import json

import switchyard
from pipeline_messages import MESSAGES, Job, PipelineCancel, PipelineRequest


async def main() -> None:
    bus = switchyard.Bus()
    jobs: asyncio.Queue = asyncio.Queue()
    cancelled: asyncio.Queue = asyncio.Queue()
    requests: list[str] = []

    @bus.on(PipelineRequest, name="cpm")
    async def cpm(req: PipelineRequest, env: switchyard.Envelope) -> None:
        print(f"cpm <- {env.topic} {env.type_name} {json.loads(env.payload)}")
        requests.append(env.correlation_id)
        job = Job(run_id=req.run_id, dataset=req.dataset, attempt=1, fail=req.fail, hold=req.hold, slow=req.slow)
        await bus.publish("staging.load.request", job)

    @bus.on("staging.load.request", name="staging-manager")
    async def staging(job: Job, env: switchyard.Envelope) -> None:
        await jobs.put((job, env))

    @bus.on(PipelineCancel, name="cpm-cancel")
    async def cancel(c: PipelineCancel) -> None:
        await cancelled.put(c)

    await bus.publish(PipelineRequest(run_id="run-1", dataset="sales.csv", rows=120, fail="analytics"))
    job, env = await asyncio.wait_for(jobs.get(), 5)
    print(f"staging-manager <- {env.topic} {env.type_name}: {job}")
    # The job inherits the request's correlation id (the bus carries it, not the message).
    print(f"same correlation: {env.correlation_id == requests[0]}")
    await bus.publish(PipelineCancel(run_id="run-1"))
    print(f"cancel: {await asyncio.wait_for(cancelled.get(), 5)}")
    print(f"message types: {sorted(MESSAGES)}")
    await bus.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
