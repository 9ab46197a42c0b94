"""``GET /v1/models/{id}`` and ``GET /v1/models/capacity``, and the service-time hook behind the wait estimate."""

from __future__ import annotations

import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from darkbloom.protocol import Usage
from darkbloom.protocol.anthropic import model_info, wants_anthropic
from darkbloom.server.api.adapter import handle
from darkbloom.server.api.errors import anthropic_error, error_response, model_not_found
from darkbloom.server.gateway import InferenceJob, Outcome
from darkbloom.server.routing.registry import Registry
from darkbloom.server.store import ApiKeyRecord

EWMA_ALPHA = 0.2


class ServiceTimes:
    """A request hook that learns how long a request for each model takes, admit to settle (EWMA)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}

    async def admit(self, job: InferenceJob) -> None:
        self._started[job.request_id] = self.clock()

    async def settle(self, job: InferenceJob, outcome: Outcome, usage: Usage | None, node_id: str | None) -> None:
        started = self._started.pop(job.request_id, None)
        if started is None or outcome != "completed":
            return  # failures and cancels say nothing about how long a served request takes
        took = self.clock() - started
        prev = self.seconds.get(job.model)
        self.seconds[job.model] = took if prev is None else (1 - EWMA_ALPHA) * prev + EWMA_ALPHA * took


def model_capacity(registry: Registry, model: str, service_s: float | None) -> dict[str, Any]:
    """One model's capacity across the fleet.

    ``busy`` counts requests running within each node's concurrency cap;
    ``queued`` those dispatched beyond it (waiting in the node's engine).
    ``estimated_wait_ms`` is 0 while a slot is free; otherwise the rounds of
    work ahead times the learned service time (``None`` before any request
    for the model has completed).
    """
    nodes = registry.candidates(model)
    slots = busy = queued = 0
    for node in nodes:
        cap = node.max_in_flight(model)
        slots += cap
        busy += min(node.in_flight, cap)
        queued += max(0, node.in_flight - cap)
    free = slots - busy
    if free > 0:
        wait: int | None = 0
    elif service_s is None or slots == 0:
        wait = None
    else:
        wait = round(math.ceil((queued + 1) / slots) * service_s * 1000)
    return {
        "id": model,
        "object": "model.capacity",
        "nodes": sorted(n.node_id for n in nodes),
        "slots": slots,
        "free_slots": free,
        "busy_slots": busy,
        "queued": queued,
        "estimated_wait_ms": wait,
    }


BASE_PARAMETERS = ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
FEATURE_PARAMETERS = (
    ("supports_tools", ("tools", "tool_choice", "parallel_tool_calls")),
    ("supports_json", ("response_format", "structured_outputs")),
    ("supports_logprobs", ("logprobs", "top_logprobs")),
)
"""What a ``ModelInfo`` flag lets a request use, named as OpenRouter's ``supported_parameters`` name them."""


def model_object(model: str, registry: Registry) -> dict[str, Any]:
    """A model as ``GET /v1/models`` lists it: its largest context, and the parameters some node serving it honours.

    ``supported_parameters`` (OpenRouter's field) is what a client can check
    before sending ``tools``, ``response_format`` or ``logprobs``; a request
    using one no node has is a 400.
    """
    nodes = registry.candidates(model)
    context = max((n.models[model].context_length for n in nodes), default=0)
    params = list(BASE_PARAMETERS)
    for flag, names in FEATURE_PARAMETERS:
        if any(getattr(n.models[model], flag) for n in nodes):
            params += names
    return {
        "id": model, "object": "model", "created": 0, "owned_by": "darkbloom",
        "context_length": context, "supported_parameters": params,
    }  # fmt: skip


async def retrieve_model(request: Request) -> Response:
    async def run(request: Request, _c: ApiKeyRecord, _b: bytes, _t: Any) -> Response:
        model = request.path_params["model"]
        registry: Registry = request.app.state.fleet.registry
        if model not in registry.models():
            raise model_not_found(model)
        return JSONResponse(model_info(model) if anthropic else model_object(model, registry))

    anthropic = wants_anthropic(request.headers)
    return await handle(request, run, anthropic_error if anthropic else error_response)


async def capacity(request: Request) -> Response:
    async def run(request: Request, _c: ApiKeyRecord, _b: bytes, _t: Any) -> Response:
        registry: Registry = request.app.state.fleet.registry
        times: ServiceTimes = request.app.state.service_times
        data = [model_capacity(registry, m, times.seconds.get(m)) for m in registry.models()]
        return JSONResponse({"object": "list", "data": data})

    return await handle(request, run, error_response)
