"""Public key material for clients: attested node keys and signed receipts.

``GET /v1/providers/keys?model=ID`` lists the attested, currently routable
nodes serving a model with their X25519 keys and the signed bundles, so a
client can verify each key itself before sealing to it.
``GET /v1/receipts/{request_id}`` returns the node-signed receipt of a
finished request together with the node's attestation (all ``darkbloom
verify`` needs offline).
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.errors import error_response


async def provider_keys(request: Request) -> Response:
    try:
        await require_consumer(request)
        model = request.query_params.get("model", "").strip()
        if not model:
            raise RequestError(400, "pass the model whose providers' keys you want: ?model=ID", param="model")
    except RequestError as err:
        return error_response(err)
    state = request.app.state
    state.attestation.refresh()
    data = []
    for node in state.fleet.registry.candidates(model):
        trust = node.attestation
        if trust is None or node.trust != "trusted":
            continue
        data.append(
            {
                "node_id": node.node_id,
                "encryption_key": trust.bundle.encryption_key,
                "signing_key": trust.bundle.signing_key,
                "trust_level": trust.trust_level,
                "weight_hash": trust.bundle.weight_hash(model),
                "attestation": msgspec.to_builtins(trust.signed),
            }
        )
    return JSONResponse({"object": "list", "model": model, "data": data})


async def get_receipt(request: Request) -> Response:
    try:
        await require_consumer(request)
        rid = request.path_params["request_id"]
        receipt = request.app.state.receipts.get(rid)
        if receipt is None:
            raise RequestError(
                404,
                f"no receipt for request {rid!r} (unknown, unfinished, or older than the coordinator keeps)",
                code="receipt_not_found",
            )
    except RequestError as err:
        return error_response(err)
    return JSONResponse(msgspec.to_builtins(receipt))
