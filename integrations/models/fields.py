"""Field types shared by the canonical records."""

from __future__ import annotations

import json
from typing import Any

from django.core.validators import RegexValidator
from django.db import models

from integrations.crypto import decrypt_text, encrypt_text

CURRENCY_RE = r"^[A-Z]{3}$"


class CurrencyField(models.CharField):
    """An ISO 4217 code. Money is always a Decimal amount beside one of these."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 3)
        kwargs.setdefault(
            "validators", [RegexValidator(CURRENCY_RE, "Use a three-letter ISO 4217 code.")]
        )
        super().__init__(*args, **kwargs)


def money_field(**kwargs: Any) -> models.DecimalField:
    # 14 digits with 2 decimals holds amounts up to 999,999,999,999.99 in any currency we bill.
    kwargs.setdefault("max_digits", 14)
    kwargs.setdefault("decimal_places", 2)
    return models.DecimalField(**kwargs)


class EncryptedJSONField(models.Field[dict[str, Any] | None, dict[str, Any]]):
    """A JSON object stored encrypted (Fernet, keys from CONCORD_FERNET_KEYS).

    The plaintext never reaches the database, and the field is never serialised by the API.
    """

    def get_internal_type(self) -> str:
        return "TextField"

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        if value is None or value == "":
            return {}
        return json.loads(decrypt_text(value))

    def to_python(self, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        if value is None or value == "":
            return {}
        return json.loads(value)

    def get_prep_value(self, value: Any) -> Any:
        if value is None:
            value = {}
        return encrypt_text(json.dumps(value, sort_keys=True))
