"""Model access through the gateway: the Anthropic Messages API proxy, metering and budgets."""
