"""OpenAI-shaped error responses for the consumer routes."""

from __future__ import annotations

from starlette.responses import JSONResponse

from darkbloom.protocol.openai import RequestError


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


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
