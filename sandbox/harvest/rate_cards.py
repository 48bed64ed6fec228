"""``/harvest/v2/x_rate_cards``: a sandbox extension (Harvest has none): the bill rate per role
and currency over a period."""

from __future__ import annotations

from .schema import Kind

X_RATE_CARDS = Kind(
    "x_rate_cards",
    {
        "role": "str",
        "currency": "str",
        "hourly_rate": "float",
        "starts_on": "date",
        "ends_on": "date",
    },
    ("role", "currency", "hourly_rate"),
    {"starts_on": None, "ends_on": None},
    ("role", "currency"),
)
