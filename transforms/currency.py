"""Money in one reporting currency, for the tables that add orders of different customers together
(customers, retention_cohorts, social_impact, data_driven_attribution). Per-order tables (order_attribution,
channel_attribution_daily) keep each order's own currency.

Rates are fixed per run, read from a JSON file: {"reporting_currency": "EUR", "rates": {"USD": "0.92", ...}},
each rate being how much of the reporting currency one unit is worth. The defaults are rough figures for a demo,
not market data: set your own.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import MappingProxyType

from transforms.event_rules import CURRENCIES

CENT = Decimal("0.01")
_ROUGH_EUR_RATES = {"EUR": "1", "USD": "0.92", "GBP": "1.17", "CHF": "1.05", "SEK": "0.087", "NOK": "0.085",
                    "DKK": "0.134", "PLN": "0.23", "CAD": "0.67", "AUD": "0.60", "JPY": "0.0061"}


@dataclass(frozen=True)
class ExchangeRates:
    reporting_currency: str = "EUR"
    rates: MappingProxyType = field(
        default_factory=lambda: MappingProxyType({c: Decimal(r) for c, r in _ROUGH_EUR_RATES.items()}))

    def __post_init__(self):
        missing = CURRENCIES - set(self.rates)
        if missing:
            raise ValueError(f"no exchange rate for {', '.join(sorted(missing))}")
        if self.rates[self.reporting_currency] != 1:
            raise ValueError(f"the reporting currency {self.reporting_currency} must have rate 1")

    @classmethod
    def from_file(cls, path: str | Path) -> "ExchangeRates":
        config = json.loads(Path(path).read_text())
        rates = {currency: Decimal(str(rate)) for currency, rate in config["rates"].items()}
        return cls(config["reporting_currency"], MappingProxyType(rates))

    def convert(self, amount, currency: str) -> Decimal:
        """`amount` in `currency` → the reporting currency, exact (not rounded: sums are rounded once, at the end)."""
        return Decimal(amount) * self.rates[currency]


def to_cents(amount: Decimal) -> Decimal:
    """Rounded to the cent, halves away from zero (as SQL engines round decimals), never -0.00."""
    return Decimal(amount).quantize(CENT, rounding=ROUND_HALF_UP) + 0
