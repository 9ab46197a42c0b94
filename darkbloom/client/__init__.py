"""Consumer- and provider-side client libraries (no server or node imports): device login, sealing, receipts."""
