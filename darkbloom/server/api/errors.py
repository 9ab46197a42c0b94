"""Error responses for the consumer routes: OpenAI's shape, and Anthropic's for an Anthropic client."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from darkbloom.protocol.anthropic import error_body as anthropic_error_body
from darkbloom.protocol.openai import RequestError


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def anthropic_error(err: RequestError) -> JSONResponse:
    return JSONResponse(anthropic_error_body(err), status_code=err.status, headers=err.headers)


def model_not_found(model: str) -> RequestError:
    return RequestError(
        404,
        f"The model '{model}' does not exist or no provider has ever served it",
        code="model_not_found",
        param="model",
    )


def model_unavailable(model: str, retry_after: int = 5) -> RequestError:
    return RequestError(
        503,
        f"No provider node is serving '{model}' right now; retry shortly",
        type="server_error",
        code="model_unavailable",
        param="model",
        headers={"Retry-After": str(retry_after)},
    )


async def read_body(request: Request) -> bytes:
    """The request body, refusing more than the configured limit with 413."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    chunks = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise RequestError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        chunks.append(part)
    return b"".join(chunks)
