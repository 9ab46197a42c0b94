"""Node identity kept under the darkbloom home: its keys and the node id they name.

Each node holds an Ed25519 signing key (attestation bundles, challenge
answers, receipts) and an X25519 encryption key (sealed requests are sealed
to it), each in a 0600 file under ``<home>/node/``. The node id is derived
from the signing key, so no one can claim a node's id without its key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nacl import encoding, public, signing

from darkbloom.protocol.sealed import b64e, node_id_for


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _load_or_create_seed(path: Path) -> bytes:
    if path.exists():
        raw = path.read_text().strip()
        try:
            seed = bytes.fromhex(raw)
        except ValueError:
            seed = b""
        if len(seed) == 32:
            return seed
        raise ValueError(f"{path} does not hold a 32-byte hex key; move it away to make a new identity")
    seed = os.urandom(32)
    write_private(path, seed.hex() + "\n")
    return seed


@dataclass(frozen=True)
class NodeKeys:
    """A node's long-lived keys."""

    signing_key: signing.SigningKey
    encryption_key: public.PrivateKey

    @property
    def node_id(self) -> str:
        return node_id_for(bytes(self.signing_key.verify_key))

    @property
    def signing_public(self) -> str:
        """The Ed25519 public key, base64."""
        return b64e(bytes(self.signing_key.verify_key))

    @property
    def encryption_public(self) -> str:
        """The X25519 public key, base64."""
        return b64e(bytes(self.encryption_key.public_key))

    @classmethod
    def generate(cls) -> NodeKeys:
        """Fresh in-memory keys (tests and throwaway nodes)."""
        return cls(signing.SigningKey.generate(), public.PrivateKey.generate())

    @classmethod
    def load_or_create(cls, home: Path) -> NodeKeys:
        """The keys in ``<home>/node/``, created (0600) on first start."""
        sk = _load_or_create_seed(home / "node" / "signing_key")
        ek = _load_or_create_seed(home / "node" / "encryption_key")
        return cls(signing.SigningKey(sk, encoder=encoding.RawEncoder), public.PrivateKey(ek))


def load_or_create_node_id(home: Path) -> str:
    """This node's stable id: the one its signing key names (keys created on first start)."""
    return NodeKeys.load_or_create(home).node_id
