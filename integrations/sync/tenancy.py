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

Only values the record leaves out are filled: what the vendor sends always wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.core.cache import cache

from integrations.connectors.base import Connector
from integrations.connectors.errors import ConnectorError
from integrations.mapping.apply import CompiledMapping, MappedRecord
from integrations.models import Connection, LegalEntity, RoutingRule

# The models whose records a tenant completes, and the field it completes.
INVOICE, CUSTOMER = "invoice", "customer"
ENTITY_FIELD, CURRENCY_FIELD = "legal_entity__code", "currency"
# A tenant's base currency hardly ever changes (Xero does not allow it once transactions
# exist): an hour keeps it to one call per hour per connection instead of one per poll.
BASE_CURRENCY_TTL_S = 3600


@dataclass(frozen=True)
class TenantFacts:
    # (code, base currency) of each legal entity the connection serves.
    entities: tuple[tuple[str, str], ...] = ()
    base_currency: str | None = None

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


def tenant_fill(mapped: Sequence[MappedRecord], facts: TenantFacts) -> None:
    """Fill what these records leave out from the tenant's facts (in place)."""
    if facts is NO_FACTS:
        return
    for record in mapped:
        fields = record.fields
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
