"""Textual apps: the operator dashboard (``darkbloom tui``) and the chat client (``darkbloom chat``)."""
