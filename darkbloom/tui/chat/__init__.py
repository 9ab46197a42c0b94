"""``darkbloom chat``: the consumer chat client, one module per screen."""
