"""The one wire module: node<->coordinator frames and consumer API shapes.

Sans-IO: pure types plus ``encode``/``decode``. Both the coordinator and the
node import this package; neither imports the other.
"""

from darkbloom.protocol.frames import (
    FRAME_TYPES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Cancel,
    Capacity,
    ChatMessage,
    Chunk,
    Complete,
    Error,
    Frame,
    Hardware,
    Heartbeat,
    InferenceRequest,
    ModelInfo,
    NodeId,
    ProtocolError,
    Register,
    Registered,
    RequestId,
    SamplingParams,
    SlotCapacity,
    Usage,
    decode,
    encode,
)

__all__ = [
    "FRAME_TYPES",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Cancel",
    "Capacity",
    "ChatMessage",
    "Chunk",
    "Complete",
    "Error",
    "Frame",
    "Hardware",
    "Heartbeat",
    "InferenceRequest",
    "ModelInfo",
    "NodeId",
    "ProtocolError",
    "Register",
    "Registered",
    "RequestId",
    "SamplingParams",
    "SlotCapacity",
    "Usage",
    "decode",
    "encode",
]
