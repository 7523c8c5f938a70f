"""Exchange rates into the reporting currency, and rounding money to cents."""
import json
from decimal import Decimal

import pytest

from transforms.currency import ExchangeRates, to_cents
from transforms.event_rules import CURRENCIES


def test_converts_into_the_reporting_currency_exactly():
    rates = ExchangeRates()
    assert rates.convert(Decimal("100.00"), "EUR") == Decimal("100.00")
    assert rates.convert(Decimal("19.90"), "USD") == Decimal("19.90") * Decimal("0.92")  # not rounded yet


def test_rates_from_a_file_must_cover_every_accepted_currency(tmp_path):
    path = tmp_path / "rates.json"
    rates = {currency: "1" for currency in CURRENCIES} | {"EUR": "0.9", "USD": "1"}
    path.write_text(json.dumps({"reporting_currency": "USD", "rates": rates}))
    loaded = ExchangeRates.from_file(path)
    assert loaded.reporting_currency == "USD"
    assert loaded.convert(Decimal("10"), "EUR") == Decimal("9.0")
    path.write_text(json.dumps({"reporting_currency": "USD", "rates": {"USD": "1", "EUR": "1.1"}}))
    with pytest.raises(ValueError, match="no exchange rate for"):
        ExchangeRates.from_file(path)
    path.write_text(json.dumps({"reporting_currency": "EUR", "rates": rates}))
    with pytest.raises(ValueError, match="must have rate 1"):
        ExchangeRates.from_file(path)


def test_cents_round_halves_away_from_zero_and_never_show_minus_zero():
    assert to_cents(Decimal("18.305")) == Decimal("18.31")
    assert to_cents(Decimal("-18.305")) == Decimal("-18.31")
    assert to_cents(Decimal("18.3049")) == Decimal("18.30")
    assert str(to_cents(Decimal("-0.001"))) == "0.00"
