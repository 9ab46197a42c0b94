"""Consumer routes other than the inference adapters: models, health, the /v1 catch-all."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from darkbloom.protocol.anthropic import model_page, wants_anthropic
from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.errors import anthropic_error, error_response
from darkbloom.server.api.models import model_object
from darkbloom.server.fleet import Fleet


async def list_models(request: Request) -> Response:
    anthropic = wants_anthropic(request.headers)
    try:
        await require_consumer(request)
    except RequestError as err:
        return anthropic_error(err) if anthropic else error_response(err)
    fleet: Fleet = request.app.state.fleet
    models = fleet.registry.models()
    if anthropic:
        return JSONResponse(model_page(models))
    return JSONResponse({"object": "list", "data": [model_object(m, fleet.registry) for m in models]})


async def health(request: Request) -> Response:
    fleet: Fleet = request.app.state.fleet
    return JSONResponse({"status": "ok", "nodes": len(fleet.registry.nodes), "models": fleet.registry.models()})


async def not_implemented(request: Request) -> Response:
    err = RequestError(404, f"endpoint {request.method} {request.url.path} is not implemented", code="not_found")
    anthropic = request.url.path.startswith("/v1/messages")  # an Anthropic client (batches, say) reads its own shape
    return anthropic_error(err) if anthropic else error_response(err)
