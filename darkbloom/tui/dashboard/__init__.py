"""``darkbloom tui``: the operator dashboard, one module per screen."""
