"""Session events: the Redis Streams relay between session containers and clients."""
