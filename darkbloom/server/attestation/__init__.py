"""Attestation and privacy on the coordinator: node trust, challenges, fencing, sealed relay, receipts."""

from darkbloom.server.attestation.privacy import (
    FlightPrivacy,
    PrivacyMode,
    PrivacyRelay,
    ReceiptBook,
    privacy_mode,
    provider_headers,
    relay_headers,
)
from darkbloom.server.attestation.service import AttestationService, HardwareVerifier
from darkbloom.server.attestation.trust import NodeTrust, TrustPolicy

__all__ = [
    "AttestationService",
    "FlightPrivacy",
    "HardwareVerifier",
    "NodeTrust",
    "PrivacyMode",
    "PrivacyRelay",
    "ReceiptBook",
    "TrustPolicy",
    "privacy_mode",
    "provider_headers",
    "relay_headers",
]
