"""The layered analytics component of the broker refactoring guide, on switchyard.

Manager -> Service -> Handler -> Processor -> Modules, every hop a message on a
``<domain>.<action>.<phase>`` topic; feedback and status updates flow back up the same way.
The processor calls its modules directly (they do the real work); nothing else calls
anything. Each component keeps its context (``ComponentContext``) and reports state changes.

Run: ``python examples/python/analytics_layers.py``
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Dict, Optional

import switchyard


class MessageType(Enum):
    # Requests flow down...
    FEATURE_REQUEST = "analytics.feature.request"  # CPM -> manager
    SERVICE_REQUEST = "analytics.service.request"  # manager -> service
    HANDLER_REQUEST = "analytics.handler.request"  # service -> handler
    PROCESS_REQUEST = "analytics.processor.request"  # handler -> processor
    # ...feedback flows up.
    PROCESS_COMPLETE = "analytics.processor.complete"
    HANDLER_COMPLETE = "analytics.handler.complete"
    SERVICE_COMPLETE = "analytics.service.complete"
    FEATURE_COMPLETE = "analytics.feature.complete"  # manager -> CPM
    PROCESS_ERROR = "analytics.processor.error"
    HANDLER_ERROR = "analytics.handler.error"
    SERVICE_ERROR = "analytics.service.error"
    FEATURE_ERROR = "analytics.feature.error"
    STATUS_UPDATE = "analytics.status.update"


class ComponentState(Enum):
    IDLE = "idle"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass
class ProcessingMessage:
    """The seed's message body. Correlation, source and causation live in the envelope."""

    pipeline_id: str
    content: Dict[str, Any] = field(default_factory=dict)
    source_component: str = ""
    target_component: str = ""


@dataclass
class ComponentContext:
    """State tracking for one pipeline in one component."""

    request_id: str
    correlation_id: str
    state: ComponentState = ComponentState.IDLE
    metadata: Dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=datetime.now)
    updated_at: datetime = field(default_factory=datetime.now)


class Component:
    """What every layer shares: publishing, context and status updates."""

    component_name = "component"

    def __init__(self, bus: switchyard.Bus) -> None:
        self.bus = bus
        self.active_processes: Dict[str, ComponentContext] = {}
        self._setup_message_handlers()

    def _setup_message_handlers(self) -> None:
        for message_type, handler in self.handlers().items():
            self.bus.on(message_type.value, handler, name=f"{self.component_name}:{message_type.value}")

    def handlers(self) -> Dict[MessageType, Any]:
        return {}

    async def _publish_message(self, message_type: MessageType, pipeline_id: str, content: Dict[str, Any], target: str) -> None:
        await self.bus.publish(
            message_type.value,
            ProcessingMessage(pipeline_id, content, self.component_name, target),
        )

    async def _update_state(self, pipeline_id: str, env: switchyard.Envelope, new_state: ComponentState) -> None:
        ctx = self.active_processes.setdefault(pipeline_id, ComponentContext(pipeline_id, env.correlation_id))
        ctx.state = new_state
        ctx.updated_at = datetime.now()
        await self._publish_message(MessageType.STATUS_UPDATE, pipeline_id, {"component": self.component_name, "new_state": new_state.value}, "state_tracker")


class AnalyticsManager(Component):
    """Workflow coordination: talks to the CPM and the service, nothing else."""

    component_name = "analytics_manager"

    def handlers(self) -> Dict[MessageType, Any]:
        return {
            MessageType.FEATURE_REQUEST: self._handle_feature_request,
            MessageType.SERVICE_COMPLETE: self._handle_service_complete,
            MessageType.SERVICE_ERROR: self._handle_service_error,
        }

    async def _handle_feature_request(self, msg: ProcessingMessage, env: switchyard.Envelope) -> None:
        await self._update_state(msg.pipeline_id, env, ComponentState.RUNNING)
        await self._publish_message(MessageType.SERVICE_REQUEST, msg.pipeline_id, msg.content, "analytics_service")

    async def _handle_service_complete(self, msg: ProcessingMessage, env: switchyard.Envelope) -> None:
        await self._update_state(msg.pipeline_id, env, ComponentState.COMPLETE)
        await self._publish_message(MessageType.FEATURE_COMPLETE, msg.pipeline_id, msg.content, "cpm")

    async def _handle_service_error(self, msg: ProcessingMessage, env: switchyard.Envelope) -> None:
        await self._update_state(msg.pipeline_id, env, ComponentState.FAILED)
        await self._publish_message(MessageType.FEATURE_ERROR, msg.pipeline_id, msg.content, "cpm")


class AnalyticsService(Component):
    """Business orchestration between manager and handler."""

    component_name = "analytics_service"

    def handlers(self) -> Dict[MessageType, Any]:
        return {
            MessageType.SERVICE_REQUEST: self._handle_service_request,
            MessageType.HANDLER_COMPLETE: self._forward_up(MessageType.SERVICE_COMPLETE),
            MessageType.HANDLER_ERROR: self._forward_up(MessageType.SERVICE_ERROR),
        }

    async def _handle_service_request(self, msg: ProcessingMessage, env: switchyard.Envelope) -> None:
        await self._update_state(msg.pipeline_id, env, ComponentState.RUNNING)
        content = {**msg.content, "steps": ["clean", "extract"]}
        await self._publish_message(MessageType.HANDLER_REQUEST, msg.pipeline_id, content, "analytics_handler")

    def _forward_up(self, message_type: MessageType) -> Any:
        async def forward(msg: ProcessingMessage, env: switchyard.Envelope) -> None:
            failed = message_type is MessageType.SERVICE_ERROR
            await self._update_state(msg.pipeline_id, env, ComponentState.FAILED if failed else ComponentState.COMPLETE)
            await self._publish_message(message_type, msg.pipeline_id, msg.content, "analytics_manager")

        return forward


class AnalyticsHandler(Component):
    """Pure routing between service and processor: a routing table, no business logic."""

    component_name = "analytics_handler"
    routes = {
        MessageType.HANDLER_REQUEST: (MessageType.PROCESS_REQUEST, "analytics_processor"),
        MessageType.PROCESS_COMPLETE: (MessageType.HANDLER_COMPLETE, "analytics_service"),
        MessageType.PROCESS_ERROR: (MessageType.HANDLER_ERROR, "analytics_service"),
    }

    def handlers(self) -> Dict[MessageType, Any]:
        return {incoming: self._route(outgoing, target) for incoming, (outgoing, target) in self.routes.items()}

    def _route(self, outgoing: MessageType, target: str) -> Any:
        async def route(msg: ProcessingMessage) -> None:
            await self._publish_message(outgoing, msg.pipeline_id, msg.content, target)

        return route


class FeatureExtractionModule:
    """A module: direct data access and the actual computation, no messaging."""

    async def extract_features(self, data: list[float]) -> Dict[str, float]:
        if not data:
            raise ValueError("no data to extract features from")
        return {"mean": sum(data) / len(data), "max": max(data), "min": min(data)}


class DataCleaningModule:
    async def clean(self, data: list[Optional[float]]) -> list[float]:
        return [x for x in data if x is not None]


class AnalyticsProcessor(Component):
    """Calls its modules directly; reports results and errors up through the handler."""

    component_name = "analytics_processor"

    def __init__(self, bus: switchyard.Bus) -> None:
        self.data_cleaner = DataCleaningModule()
        self.feature_extractor = FeatureExtractionModule()
        super().__init__(bus)

    def handlers(self) -> Dict[MessageType, Any]:
        return {MessageType.PROCESS_REQUEST: self._handle_feature_engineering}

    async def _handle_feature_engineering(self, msg: ProcessingMessage, env: switchyard.Envelope) -> None:
        await self._update_state(msg.pipeline_id, env, ComponentState.RUNNING)
        try:
            cleaned = await self.data_cleaner.clean(msg.content["data"])
            features = await self.feature_extractor.extract_features(cleaned)
        except Exception as e:
            await self._update_state(msg.pipeline_id, env, ComponentState.FAILED)
            await self._publish_message(MessageType.PROCESS_ERROR, msg.pipeline_id, {"error_type": type(e).__name__, "error_message": str(e)}, "analytics_handler")
            return
        await self._update_state(msg.pipeline_id, env, ComponentState.COMPLETE)
        await self._publish_message(MessageType.PROCESS_COMPLETE, msg.pipeline_id, {"features": features}, "analytics_handler")


async def main() -> None:
    bus = switchyard.Bus()
    components = [AnalyticsManager(bus), AnalyticsService(bus), AnalyticsHandler(bus), AnalyticsProcessor(bus)]
    results: asyncio.Queue[tuple[str, ProcessingMessage, switchyard.Envelope]] = asyncio.Queue()
    trail: Dict[str, list[str]] = {}

    # The CPM (the caller) only knows the manager's topics.
    @bus.on("analytics.feature.*", name="cpm")
    async def cpm(msg: ProcessingMessage, env: switchyard.Envelope) -> None:
        if env.topic != MessageType.FEATURE_REQUEST.value:
            await results.put((env.topic, msg, env))

    # Every hop, for the printout: topic and the component that sent it.
    @bus.on("analytics.#", name="trail")
    async def record(msg: ProcessingMessage) -> None:
        trail.setdefault(msg.pipeline_id, []).append(msg.source_component or "cpm")

    requests = {"p-1": [1.0, None, 3.0, 8.0], "p-2": []}
    for pipeline_id, data in requests.items():
        await bus.publish(MessageType.FEATURE_REQUEST.value, ProcessingMessage(pipeline_id, {"data": data}))

    # The two flows run concurrently (p-2 fails early, so it may well arrive first): the
    # results are printed in pipeline order.
    arrived = [await asyncio.wait_for(results.get(), 5) for _ in requests]
    for topic, msg, env in sorted(arrived, key=lambda r: r[1].pipeline_id):
        print(f"cpm <- {topic} pipeline={msg.pipeline_id} content={msg.content}")
    await bus.idle()
    for pipeline_id in requests:
        contexts = [c for c in components if pipeline_id in c.active_processes]  # the handler keeps none
        states = {c.component_name: c.active_processes[pipeline_id].state.value for c in contexts}
        correlations = {c.active_processes[pipeline_id].correlation_id for c in contexts}
        print(f"pipeline {pipeline_id}: states {states}, one correlation id: {len(correlations) == 1}")
        hops = trail[pipeline_id]
        print(f"pipeline {pipeline_id}: {len(hops)} messages, first from {hops[0]}, last from {hops[-1]}")
    report = await bus.shutdown()
    print(f"shutdown: drained {report.drained}, left {len(report.left)}, dead letters {len(bus.dead_letters())}")


if __name__ == "__main__":
    asyncio.run(main())
