"""What model tokens cost: a price table by model family, overridable by the operator.

Prices are USD per million tokens. A model's family is the longest key that prefixes its name,
so a new model of a known family needs no release; a model of no known family is priced at the
most expensive family (a budget must never under-count).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from gateway.model.meter import Usage

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal

    @classmethod
    def of(cls, values: Mapping[str, float]) -> Price:
        """From ``{"input", "output", "cache_write"?, "cache_read"?}`` (the cache prices
        default to Anthropic's multipliers of the input price: 1.25x and 0.1x)."""
        base = Decimal(str(values["input"]))
        return cls(
            input=base,
            output=Decimal(str(values["output"])),
            cache_write=Decimal(str(values.get("cache_write", base * Decimal("1.25")))),
            cache_read=Decimal(str(values.get("cache_read", base * Decimal("0.1")))),
        )


# Anthropic's published list prices (USD per million tokens) for the families the CLI uses.
BUILT_IN: dict[str, dict[str, float]] = {
    "claude-opus-4-5": {"input": 5, "output": 25},
    "claude-opus-4": {"input": 15, "output": 75},
    "claude-sonnet-4": {"input": 3, "output": 15},
    "claude-haiku-4": {"input": 1, "output": 5},
    "claude-3-7-sonnet": {"input": 3, "output": 15},
    "claude-3-5-sonnet": {"input": 3, "output": 15},
    "claude-3-5-haiku": {"input": 0.8, "output": 4},
    "claude-3-opus": {"input": 15, "output": 75},
    "claude-3-haiku": {"input": 0.25, "output": 1.25},
}


class PriceTable:
    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        merged = {**BUILT_IN, **(overrides or {})}
        self._prices = {family: Price.of(values) for family, values in merged.items()}
        self._families = sorted(self._prices, key=len, reverse=True)
        self._dearest = max(self._prices.values(), key=lambda p: (p.output, p.input))

    def family(self, model: str) -> str | None:
        """The longest family that prefixes ``model``; ``None`` when no family does."""
        return next((family for family in self._families if model.startswith(family)), None)

    def price(self, model: str) -> Price:
        family = self.family(model)
        return self._prices[family] if family is not None else self._dearest

    def cost(self, model: str, usage: Usage) -> Decimal:
        price = self.price(model)
        total = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_creation_input_tokens * price.cache_write
            + usage.cache_read_input_tokens * price.cache_read
        )
        return total / _MILLION
