"""What a connection's vendor account is, for the values its records leave out.

A Xero connection is one organisation (tenant), and the tenant is the legal entity: Xero's
invoices name no legal entity, and its contacts name a ``DefaultCurrency`` only when it differs
from the organisation's ``BaseCurrency``. So:

- a polled invoice without a legal entity takes the one this connection serves, by the routing
  rules (``RoutingRule``: the entities routed to it, and, if it is its role's default, every
  entity routed nowhere else). A tenant serving several entities (the legacy ERP: the US and
  the German company) gives an invoice the one whose base currency is the invoice's currency,
  else the one keeping its books in the tenant's base currency; if that still leaves a choice,
  none (the record fails, naming the field, as before);
- a polled contact without a currency takes the tenant's base currency (``GET /Organisation``,
  read once per poll of contacts or invoices and kept for an hour).

- a polled tax rate takes the organisation's country (``CountryCode``): Xero's tax rates name
  none (read with the base currency, kept for an hour);
- a PSA user (a ``resource``) one of whose roles is a legal entity's code (the firm tags its
  people by company: ``["Consultant", "UK01"]``) is costed in that entity's base currency.
  Harvest users carry no currency at all, so the mapping's default (the account currency)
  is only what is left when no role names an entity.

Only values the record leaves out are filled: what the vendor sends always wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache

from integrations.connectors.base import Connector
from integrations.connectors.errors import ConnectorError
from integrations.mapping.apply import CompiledMapping, MappedRecord
from integrations.models import Connection, LegalEntity, RoutingRule

# The models whose records a tenant completes, and the field it completes.
INVOICE, CUSTOMER = "invoice", "customer"
ENTITY_FIELD, CURRENCY_FIELD = "legal_entity__code", "currency"
TAX_RATE, COUNTRY_FIELD = "taxrate", "country"
RESOURCE, COST_CURRENCY_FIELD, ROLES = "resource", "cost_currency", "roles"
# A tenant's base currency hardly ever changes (Xero does not allow it once transactions
# exist): an hour keeps it to one call per hour per connection instead of one per poll.
BASE_CURRENCY_TTL_S = 3600


@dataclass(frozen=True)
class TenantFacts:
    # (code, base currency) of each legal entity the connection serves.
    entities: tuple[tuple[str, str], ...] = ()
    base_currency: str | None = None
    country: str | None = None

    def entity_for(self, currency: object) -> str | None:
        """The code of the legal entity a record in ``currency`` belongs to, or None."""
        if len(self.entities) == 1:
            return self.entities[0][0]
        for wanted in (currency, self.base_currency):
            matches = [code for code, base in self.entities if wanted and base == wanted]
            if len(matches) == 1:
                return matches[0]
        return None


NO_FACTS = TenantFacts()


def tenant_facts(
    *, connection: Connection, connector: Connector, mapping: CompiledMapping
) -> TenantFacts:
    """The facts the records of ``mapping`` may need (none for the models no tenant
    completes, so other polls cost no query)."""
    if mapping.canonical_model == TAX_RATE:
        return TenantFacts(country=_country(connection, connector))
    if mapping.canonical_model == RESOURCE:
        # Every legal entity: a person's role may name any of them.
        return TenantFacts(
            entities=tuple(
                LegalEntity.objects.order_by("code").values_list("code", "base_currency")
            )
        )
    if mapping.canonical_model not in (INVOICE, CUSTOMER):
        return NO_FACTS
    return TenantFacts(
        entities=served_entities(connection=connection),
        base_currency=_base_currency(connection, connector),
    )


def served_entities(*, connection: Connection) -> tuple[tuple[str, str], ...]:
    """The legal entities routed to this connection: by their own rule, or by the role's
    default rule for those with no rule of their own."""
    rules = RoutingRule.objects.filter(role=connection.role)
    own = rules.filter(connection=connection)
    entities = LegalEntity.objects.filter(pk__in=own.values("legal_entity_id"))
    if own.filter(legal_entity__isnull=True).exists():
        routed = rules.filter(legal_entity__isnull=False).values("legal_entity_id")
        entities = entities | LegalEntity.objects.exclude(pk__in=routed)
    return tuple(entities.order_by("code").values_list("code", "base_currency"))


def _base_currency(connection: Connection, connector: Connector) -> str | None:
    # Keyed by the connection's last change too: new credentials may name another tenant.
    changed = connection.updated_at.timestamp() if connection.updated_at else 0
    key = f"concord:tenant-base-currency:{connection.pk}:{changed:.6f}"
    known = cache.get(key)
    if known is not None:
        return str(known) or None
    try:
        currency = connector.base_currency()
    except ConnectorError:
        # Not worth failing the poll for: records that need it fail alone, naming the field.
        return None
    cache.set(key, currency or "", BASE_CURRENCY_TTL_S)
    return currency


def _country(connection: Connection, connector: Connector) -> str | None:
    """The organisation's country, where the vendor has one (Xero), cached like its base
    currency."""
    read = getattr(connector, "organisation_country", None)
    if read is None:
        return None
    changed = connection.updated_at.timestamp() if connection.updated_at else 0
    key = f"concord:tenant-country:{connection.pk}:{changed:.6f}"
    known = cache.get(key)
    if known is not None:
        return str(known) or None
    try:
        country = read()
    except ConnectorError:
        return None  # the records that need it fail alone, naming the field
    cache.set(key, country or "", BASE_CURRENCY_TTL_S)
    return str(country) if country else None


def tenant_fill(
    mapped: Sequence[MappedRecord],
    facts: TenantFacts,
    payloads: Sequence[Mapping[str, Any] | None] | None = None,
) -> None:
    """Fill what these records leave out from the tenant's facts (in place). ``payloads``: the
    vendor records, by position (a PSA user's roles are not mapped)."""
    if facts is NO_FACTS:
        return
    for position, record in enumerate(mapped):
        fields = record.fields
        if record.canonical_model == TAX_RATE:
            if not fields.get(COUNTRY_FIELD) and facts.country:
                fields[COUNTRY_FIELD] = facts.country
            continue
        if record.canonical_model == RESOURCE:
            payload = payloads[position] if payloads is not None else None
            currency = _role_currency(payload, facts)
            if currency and not (payload or {}).get(COST_CURRENCY_FIELD):
                fields[COST_CURRENCY_FIELD] = currency
            continue
        if record.canonical_model == INVOICE and not fields.get(ENTITY_FIELD):
            code = facts.entity_for(fields.get(CURRENCY_FIELD))
            if code:
                fields[ENTITY_FIELD] = code
        elif (
            record.canonical_model == CUSTOMER
            and not fields.get(CURRENCY_FIELD)
            and facts.base_currency
        ):
            fields[CURRENCY_FIELD] = facts.base_currency


def _role_currency(payload: Mapping[str, Any] | None, facts: TenantFacts) -> str | None:
    """The base currency of the one legal entity a user's roles name, or None."""
    roles = (payload or {}).get(ROLES)
    if not isinstance(roles, list):
        return None
    named = {str(role).strip() for role in roles}
    currencies = {base for code, base in facts.entities if code in named}
    return currencies.pop() if len(currencies) == 1 else None
