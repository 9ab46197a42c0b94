"""Consumer- and provider-side client libraries (no server or node imports)."""
