"""The demo firm for `make run`: Concord's own configuration of it, never its business records.

The vendor sandbox (sandbox/seed.py) is the firm: its Salesforce, Harvest and Xero hold the
accounts, deals, contracts, projects, people, rate cards, time, expenses, milestones, invoices
and payments. Concord learns all of them the way it would learn a real firm's, by sync: the
first polls right at start-up, the sandbox's signed webhooks after. So every business record in
the demo has a cross-reference to the system it came from, and the demo shows the workflows'
real outcomes, flaws included (sandbox/README.md, "The demo firm").

What is set up here is what a firm configures once in Concord itself:

- one user per role (passwords printed by `make run`, new on every start);
- a connection per system, with the credentials the sandbox publishes (``/_control/credentials``)
  and a webhook secret of our own, and the default mappings published on each;
- the legal entities (no connected system owns them as records: Xero's tenant *is* the entity,
  DOMAIN.md's ownership table and migration 0002) and the routing rules that send each one's
  postings to its ERP tenant;
- the exchange rates (finance's table: Xero's Accounting API offers none, see
  integrations/vendors/xero/mappings.py);
- the rows the migrations seed and every firm needs (the ownership rules of DOMAIN.md, the
  default match rules, the work queues, SLAs and role groups), where missing: a database whose
  tables were emptied after it was migrated (``manage.py flush``, a transactional test) has
  none, and without them the three systems' copies of a customer stay three customers whose
  fields anyone may write, so nothing bills;
- the contract's tax profile (Salesforce ``Tax_Profile__c``) mapped to the ERP's tax type, so a
  reverse-charge customer without a tax number is finance's case; the ERPs' tax rates are read
  at set-up (by sync, as every record), so the CRM's first contracts can name theirs;
- the sandbox's webhook subscriptions (``/_control/webhooks``): the CRM's, the PSA's and one per
  ERP organisation, pointing at this portal's receiver. The sandbox keeps them in memory: made
  on every start.

Only `make run` (run_portal, seed_demo) calls this; production never has demo users.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
from django.contrib.auth.models import Group, User
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from exceptions.services import work_queues_ensure
from integrations import models as m
from integrations.mapping.canonical import VIRTUAL_MODELS
from integrations.mapping.services import (
    mapping_defaults_install,
    mapping_set_create_draft,
    mapping_set_publish,
    value_map_create,
)
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS, VIEWER, roles_sync
from integrations.services.connections import connection_create
from integrations.sync.identity import match_rules_install_defaults
from integrations.sync.polling import poll_object
from integrations.sync.ring import ring_poll
from integrations.sync.steps import arrival_awaited

logger = logging.getLogger(__name__)

DEMO_USERS = {
    "finance": (FINANCE, "Fiona Finance"),
    "pmo": (PMO, "Pat Projects"),
    "salesops": (SALES_OPS, "Sam Sales"),
    "integration_admin": (INTEGRATION_ADMIN, "Ines Integrations"),
    "viewer": (VIEWER, "Val Viewer"),
}

# The firm's companies, as the sandbox's firm has them (sandbox/seed.py ENTITIES): code, name,
# country, base currency. The US and German companies keep their books in the legacy Xero
# tenant, the UK company in the new one.
ENTITIES = (
    ("US01", "Concord Consulting Inc.", "US", "USD"),
    ("UK01", "Concord Consulting Ltd", "GB", "GBP"),
    ("DE01", "Concord Beratung GmbH", "DE", "EUR"),
)
# Finance's rates for the currencies the firm invoices in (base, quote, rate).
EXCHANGE_RATES = (
    ("EUR", "USD", Decimal("1.08")),
    ("GBP", "USD", Decimal("1.27")),
    ("EUR", "GBP", Decimal("0.85")),
    ("USD", "EUR", Decimal("0.93")),
    ("USD", "GBP", Decimal("0.79")),
    ("GBP", "EUR", Decimal("1.18")),
)

CRM, PSA = "CRM (Salesforce sandbox)", "PSA (Harvest sandbox)"
ERP_NEW, ERP_LEGACY = "ERP (Xero sandbox, new)", "ERP (Xero sandbox, legacy)"
# The sandbox's Xero tenants by name (its /_control/credentials lists them by id and name).
TENANT_NAMES = {ERP_NEW: "Concord ERP", ERP_LEGACY: "Concord Legacy ERP"}
# Which ERP tenant books which company: the new one the UK company, the legacy one the rest.
NEW_ERP_ENTITIES = ("UK01",)
# Seconds a call to the sandbox's control API may take (it answers from memory, in ms; seeding
# the demo firm takes well under a second).
CONTROL_TIMEOUT_S = 10.0
# The demo firm's size: one unit of the sandbox's scale (12 customers, about 1,000 time entries).
DEMO_SCALE = 1
# The first polls of every connection take about a minute on this 2-core machine; the changes
# the firm's people make later wait for them (a deal closed before Concord knows its account
# would only be held for that), but not longer than this.
FIRST_POLLS_WAIT_S = 240.0
# How often the portal looks whether the first polls are in (one small query).
FIRST_POLLS_CHECK_S = 2.0

# The ownership table as the migrations leave it (integrations 0002, with 0015's rate cards):
# (object, field, owner role, note); an empty field is the whole object. Made where missing, so
# an admin's own rules stand.
OWNERSHIP_RULES = (
    ("customer", "", "crm", "Accounts are commercial data from the CRM"),
    ("customer", "legal_entity", "erp", "Legal billing profile"),
    ("customer", "tax_number", "erp", "Legal billing profile"),
    ("customer", "billing_address", "erp", "Legal billing profile"),
    ("customer", "billing_email", "erp", "Legal billing profile"),
    ("customer", "country", "erp", "Legal billing profile"),
    ("contract", "", "crm", "Commercial terms"),
    ("ratecard", "", "psa", "The firm's default rate card: read from the PSA (x_rate_cards)"),
    ("ratecard", "contract", "crm", "A contract's negotiated rates are commercial terms"),
    ("project", "", "psa", "Project plan and status"),
    ("assignment", "", "psa", "Staffing"),
    ("resource", "", "psa", "Workers and cost rates"),
    ("timeentry", "", "psa", "Time"),
    ("expense", "", "psa", "Expenses"),
    ("milestone", "", "psa", "Milestone completion"),
    ("legalentity", "", "erp", "The firm's companies"),
    ("invoice", "", "erp", "Invoices"),
    ("payment", "", "erp", "Payments"),
    ("taxrate", "", "erp", "Tax"),
    ("exchangerate", "", "erp", "Reference data used for posting"),
)

# The firm's contract tax profiles (Salesforce ``Tax_Profile__c``) as the ERP's tax types. Only
# the UK company sells under reverse charge (zero-rated EC services, in the new ERP, which
# needs the customer's VAT number); "standard" is no tax profile: the ERP's default for the
# account. The legacy ERP's rates carry its organisation's country (US), which the German
# company could not charge, so the firm books no German contract under a tax profile.
TAX_PROFILES = "demo_tax_profile"
TAX_PROFILE_TYPES = {"reverse-charge": "ECZROUTPUTSERVICES", "standard": ""}
TAX_PROFILE_FIELD = "tax_rate__code"

# Finance's side of the demo once invoices are in the ERP: the first invoices Concord posted
# are approved in Xero and paid by their customers (the first in full, the next in part), so
# status back-sync has something to carry to the PSA and the CRM. Fractions of the total.
PAYMENTS = (Decimal("1"), Decimal("0.5"))
# Xero's bank account in the sandbox's chart of accounts (sandbox/xero/tenants.py ACCOUNTS).
BANK_ACCOUNT = "090"


@dataclass(frozen=True)
class DemoFirm:
    """What `make run` needs to know about the demo firm after it is set up."""

    connections: tuple[int, ...]
    first: tuple[int, ...]  # the connections read first (the CRM's: DemoDay)
    entities: int
    webhooks: int
    # False when the database held the demo connections already (an earlier `make run`): the
    # sandbox starts afresh every time, Concord's records and cursors are the earlier run's.
    fresh: bool = True


@dataclass(frozen=True)
class SeededFirm:
    """The sandbox's answer to seeding the demo firm (sandbox/seed.py): what it holds, its
    deliberate flaws, and the changes its people make once Concord is connected (``later``:
    each a ``system``, ``object``, ``id``, the ``changes`` as the vendor's UI would make them,
    ``after_s`` seconds after Concord's first polls, and ``what`` in words)."""

    counts: dict[str, int]
    flawed: list[dict[str, Any]]
    later: list[dict[str, Any]] = field(default_factory=list)


def demo_sandbox_seed(*, sandbox_url: str, scale: int = DEMO_SCALE) -> SeededFirm:
    """Seed the sandbox's demo firm through its control API (it replaces what was there)."""
    response = httpx.post(
        f"{sandbox_url}/_control/seed", json={"scale": scale}, timeout=CONTROL_TIMEOUT_S * 3
    )
    response.raise_for_status()
    body = response.json()
    return SeededFirm(
        counts=dict(body.get("counts", {})),
        flawed=list(body.get("flawed", [])),
        later=list(body.get("later", [])),
    )


def demo_users_reset() -> dict[str, str]:
    """Create or update one user per role with a fresh random password; return the passwords."""
    passwords: dict[str, str] = {}
    for username, (role, full_name) in DEMO_USERS.items():
        first, last = full_name.split(" ", 1)
        user, _ = User.objects.get_or_create(username=username)
        user.first_name, user.last_name = first, last
        user.email = f"{username}@demo.concord.invalid"
        # Staff may open the Django admin, where their model permissions still apply.
        user.is_staff = role != VIEWER
        password = secrets.token_urlsafe(12)
        user.set_password(password)
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        passwords[username] = password
    return passwords


def sandbox_credentials(sandbox_url: str) -> dict[str, Any]:
    """The credentials and URLs the sandbox publishes (sandbox/README.md, "Credentials")."""
    response = httpx.get(f"{sandbox_url}/_control/credentials", timeout=CONTROL_TIMEOUT_S)
    response.raise_for_status()
    return dict(response.json())


def _connection_specs(published: dict[str, Any]) -> list[tuple[str, str, str, str, dict[str, str]]]:
    salesforce, harvest, xero = published["salesforce"], published["harvest"], published["xero"]
    sf_base = str(salesforce["token_url"]).split("/services/", 1)[0]
    xero_login = {
        "client_id": xero["client_id"],
        "client_secret": xero["client_secret"],
        "token_url": xero["token_url"],
    }
    tenants = {name: tenant for tenant, name in dict(xero["tenants"]).items()}
    return [
        (
            CRM,
            "crm",
            "salesforce",
            sf_base,
            {
                "client_id": salesforce["client_id"],
                "client_secret": salesforce["client_secret"],
                "token_url": salesforce["token_url"],
            },
        ),
        (
            PSA,
            "psa",
            "harvest",
            harvest["base_url"],
            {"access_token": harvest["access_token"], "account_id": str(harvest["account_id"])},
        ),
        *[
            (name, "erp", "xero", xero["api_url"], {**xero_login, "tenant_id": tenants[tenant]})
            for name, tenant in TENANT_NAMES.items()
        ],
    ]


def _demo_connections(published: dict[str, Any]) -> list[m.Connection]:
    connections: list[m.Connection] = []
    for name, role, vendor, base_url, credentials in _connection_specs(published):
        connection = m.Connection.objects.filter(name=name).first()
        if connection is None:
            connection = connection_create(
                name=name,
                role=role,
                vendor=vendor,
                base_url=base_url,
                credentials={**credentials, "webhook_secret": secrets.token_urlsafe(24)},
            )
        # Published default mappings (idempotent), so the first polls bring the firm in.
        mapping_defaults_install(connection=connection)
        connections.append(connection)
    return connections


def _demo_entities() -> dict[str, m.LegalEntity]:
    entities = {}
    for code, name, country, currency in ENTITIES:
        entities[code], _ = m.LegalEntity.objects.get_or_create(
            code=code,
            defaults={
                "name": name,
                "country": country,
                "base_currency": currency,
                "source_system": "erp",
            },
        )
    return entities


def _demo_routes(entities: dict[str, m.LegalEntity]) -> None:
    """The legacy ERP is the default; the UK company posts to the new one."""
    new = m.Connection.objects.get(name=ERP_NEW)
    legacy = m.Connection.objects.get(name=ERP_LEGACY)
    m.RoutingRule.objects.get_or_create(
        role="erp", legal_entity=None, defaults={"connection": legacy}
    )
    for code in NEW_ERP_ENTITIES:
        m.RoutingRule.objects.get_or_create(
            role="erp", legal_entity=entities[code], defaults={"connection": new}
        )


def _demo_exchange_rates() -> None:
    today = date.today()
    for base, quote, rate in EXCHANGE_RATES:
        m.ExchangeRate.objects.get_or_create(
            base_currency=base, quote_currency=quote, date=today, defaults={"rate": rate}
        )


def _demo_rules() -> None:
    """The rows the migrations seed that a flushed database lacks (post_migrate, after a
    migrate or a flush, re-makes the queues and role groups, but not the ownership and match
    rules), where missing; also the queues and groups, for a portal set up without a migrate."""
    for object_type, field_name, owner, note in OWNERSHIP_RULES:
        m.OwnershipRule.objects.get_or_create(
            object_type=object_type,
            field=field_name,
            defaults={"owner_role": owner, "note": note},
        )
    match_rules_install_defaults()
    work_queues_ensure()
    roles_sync()


def _demo_tax_profiles(crm: m.Connection) -> None:
    """Publish a version of the CRM's contract mapping that reads the tax profile, unless the
    published one reads it already (or an admin's draft is open: left alone)."""
    if not m.ValueMap.objects.filter(name=TAX_PROFILES).exists():
        value_map_create(
            name=TAX_PROFILES,
            entries=TAX_PROFILE_TYPES,
            description="Salesforce Tax_Profile__c -> the ERP's tax type (demo firm)",
            actor=None,
        )
    versions = m.MappingSet.objects.filter(connection=crm, object_type="Contract")
    published = versions.filter(status=m.MappingSet.Status.PUBLISHED).first()
    unpublished = (m.MappingSet.Status.DRAFT, m.MappingSet.Status.PENDING)
    if published is None or versions.filter(status__in=unpublished).exists():
        return
    if published.fields.filter(canonical_field=TAX_PROFILE_FIELD).exists():
        return
    draft = mapping_set_create_draft(
        connection=crm, object_type="Contract", canonical_model="contract", actor=None
    )
    position = draft.fields.aggregate(top=Max("position"))["top"] or 0
    m.FieldMapping.objects.create(
        mapping_set=draft,
        canonical_field=TAX_PROFILE_FIELD,
        vendor_path="Tax_Profile__c",
        direction=m.FieldMapping.Direction.INBOUND,
        transform=m.FieldMapping.Transform.VALUE_MAP,
        options={"value_map": TAX_PROFILES},
        position=position + 1,
    )
    mapping_set_publish(mapping_set=draft, actor=None)


def demo_tax_rates_read(*, connections: list[m.Connection]) -> int:
    """Read the ERPs' tax rates now (one small poll each), before the CRM's first poll: its
    contracts name their tax profile by the ERP's tax type, which must be known to store them.
    Returns how many were read; a failed read is left to the ERP's own polls."""
    read = 0
    for connection in connections:
        if connection.role != m.SystemRole.ERP:
            continue
        try:
            read += poll_object(connection_id=connection.pk, object_type="TaxRates").read
        except Exception as exc:  # the sandbox down or throttling: the schedules read them later
            logger.warning("tax rates of %s not read at set-up: %s", connection, exc)
    return read


def demo_webhooks_subscribe(
    *, sandbox_url: str, portal_url: str, connections: list[m.Connection]
) -> int:
    """Subscribe this portal's webhook receiver to the sandbox's systems, one subscription per
    connection. The sandbox forgets them when it stops, so on every start; returns how many
    were made.

    Each ERP connection's subscription hears its own organisation only (the sandbox's
    ``tenant``, as a Xero app connected to that organisation alone would): the receiver reads
    each event's record in its connection's tenant, where the other tenant's would be unknown."""
    made = 0
    for connection in connections:
        secret = connection.credentials.get("webhook_secret")
        if not secret:
            continue
        subscription = {
            "system": connection.vendor,
            "url": f"{portal_url}/webhooks/{connection.pk}/",
            "secret": secret,
        }
        if connection.role == m.SystemRole.ERP:
            tenant = connection.credentials.get("tenant_id")
            if not tenant:
                continue  # polled only (every two minutes by its schedule)
            subscription["tenant"] = tenant
        response = httpx.post(
            f"{sandbox_url}/_control/webhooks", json=subscription, timeout=CONTROL_TIMEOUT_S
        )
        response.raise_for_status()
        made += 1
    return made


@transaction.atomic
def _demo_configure(published: dict[str, Any]) -> tuple[list[m.Connection], int]:
    _demo_rules()
    connections = _demo_connections(published)
    entities = _demo_entities()
    _demo_routes(entities)
    _demo_exchange_rates()
    _demo_tax_profiles(next(c for c in connections if c.role == m.SystemRole.CRM))
    return connections, len(entities)


def demo_firm_setup(*, sandbox_url: str, portal_url: str | None) -> DemoFirm:
    """Configure Concord for the sandbox's firm (safe on every start): connections with the
    sandbox's credentials and published mappings, legal entities, routing rules, exchange
    rates, and the webhook subscriptions to `portal_url` (none without one: a firm that learns
    by polling alone). No business record is made here: they all arrive by sync."""
    fresh = not m.Connection.objects.filter(name__in=(CRM, PSA, ERP_NEW, ERP_LEGACY)).exists()
    connections, entities = _demo_configure(sandbox_credentials(sandbox_url))
    webhooks = (
        demo_webhooks_subscribe(
            sandbox_url=sandbox_url, portal_url=portal_url, connections=connections
        )
        if portal_url
        else 0
    )
    # Last: the firm's first vendor read, after the set-up's own calls to the sandbox.
    demo_tax_rates_read(connections=connections)
    return DemoFirm(
        connections=tuple(c.pk for c in connections),
        first=tuple(c.pk for c in connections if c.role == m.SystemRole.CRM),
        entities=entities,
        webhooks=webhooks,
        fresh=fresh,
    )


def _polled_object_types(connection_id: int) -> set[str]:
    """The objects a poll of the connection reads (as integrations/sync/polling.py chooses)."""
    return {
        object_type
        for object_type, model in m.MappingSet.objects.filter(
            connection_id=connection_id, status=m.MappingSet.Status.PUBLISHED
        ).values_list("object_type", "canonical_model")
        if model not in VIRTUAL_MODELS or arrival_awaited(model)
    }


def demo_first_polls_done(*, connection_ids: tuple[int, ...]) -> bool:
    """Whether every object of these connections has been read once (successfully)."""
    for connection_id in connection_ids:
        wanted = _polled_object_types(connection_id)
        done = set(
            m.PollCursor.objects.filter(
                connection_id=connection_id, last_success_at__isnull=False
            ).values_list("object_type", flat=True)
        )
        if not wanted <= done:
            return False
    return True


class DemoDay:
    """`make run`'s start-up of the demo firm after the processes are up, one short step per
    call of ``step()`` from `make run`'s loop (it never blocks for long):

    1. the first polls, sent at once rather than at beat's first interval (two minutes): the
       CRM's first, because accounts are the CRM's: the PSA's clients and the ERP's contacts
       then join the accounts that name them (identity resolution), instead of arriving first
       as customers of their own whose legal entity the CRM's account would then contest;
    2. the PSA's and the ERP's once the CRM's are in;
    3. the seed's ``later`` changes once every first poll is in, each ``after_s`` seconds
       after: the firm's people at work (a deal closing), as out-of-band changes in the
       sandbox (like a person in the vendor's UI: versioned and announced by its webhooks).
       The changes are the sandbox's own words; Concord only forwards them.

    4. then finance at work in the ERP: the first invoices Concord posted there are approved in
       Xero and their customers pay (``PAYMENTS``), entered in the sandbox's Xero as a person
       would (``POST /_control/records/xero/Payments``); Xero's webhooks and polls bring them
       back, and status back-sync carries them to the PSA and the CRM.

    A phase that waits longer than ``FIRST_POLLS_WAIT_S`` (a poll failing) moves on anyway."""

    def __init__(self, *, sandbox_url: str, firm: DemoFirm, changes: list[dict[str, Any]]) -> None:
        self.sandbox_url, self.firm = sandbox_url, firm
        self.pending = sorted(changes, key=lambda c: float(c.get("after_s", 0)))
        self.phase = 0
        self.since = time.monotonic()
        self._checked = 0.0
        self._paid: list[str] = []  # the ERP ids of the invoices paid so far
        # Only invoices posted since this start are in this sandbox (it starts afresh; the
        # database may hold an earlier run's).
        self._started_at = timezone.now()

    def step(self) -> str:
        """Do what is due; returns a line saying what happened ("" when nothing did)."""
        now = time.monotonic()
        if self.phase == 0:
            ring_poll(self.firm.first, expires=FIRST_POLLS_WAIT_S)
            self._next(now)
            return "Demo firm: reading the CRM ..."
        if self.phase in (1, 2):
            if now - self._checked < FIRST_POLLS_CHECK_S:
                return ""
            self._checked = now
            wanted = self.firm.first if self.phase == 1 else self.firm.connections
            waited_out = now - self.since > FIRST_POLLS_WAIT_S
            if not (waited_out or demo_first_polls_done(connection_ids=wanted)):
                return ""
            self._next(now)
            if self.phase == 2:
                rest = tuple(c for c in self.firm.connections if c not in self.firm.first)
                ring_poll(rest, expires=FIRST_POLLS_WAIT_S)
                return "Demo firm: reading the PSA and the ERP ..."
            return "Demo firm: every system read once" + (" (not all yet)" if waited_out else "")
        lines = []
        while self.pending and now - self.since >= float(self.pending[0].get("after_s", 0)):
            lines.append(self._play(self.pending.pop(0)))
        if len(self._paid) < len(PAYMENTS) and now - self._checked >= FIRST_POLLS_CHECK_S:
            self._checked = now
            lines += self._pay_posted()
        return "\n".join(lines)

    def _pay_posted(self) -> list[str]:
        """Approve and pay the first invoices Concord posted to an ERP (its own: those billing
        events are on), oldest first, once each."""
        ours = m.BillingEvent.objects.filter(invoice__isnull=False).values("invoice_id")
        posted = (
            m.CrossReference.objects.filter(
                content_type=ContentType.objects.get_for_model(m.Invoice),
                connection_id__in=self.firm.connections,
                connection__role=m.SystemRole.ERP,
                object_id__in=ours,
                created_at__gte=self._started_at,
            )
            .exclude(external_id__in=self._paid)
            .order_by("object_id")
            .values_list("external_id", flat=True)[: len(PAYMENTS) - len(self._paid)]
        )
        lines = []
        for external_id in posted:
            share = PAYMENTS[len(self._paid)]
            self._paid.append(external_id)  # once, whatever the sandbox answers
            lines.append(self._approve_and_pay(external_id, share))
        return lines

    def _approve_and_pay(self, invoice_id: str, share: Decimal) -> str:
        control = f"{self.sandbox_url}/_control/records/xero"
        try:
            approved = httpx.patch(
                f"{control}/Invoices/{invoice_id}",
                json={"Status": "AUTHORISED"},
                timeout=CONTROL_TIMEOUT_S,
            )
            approved.raise_for_status()
            invoice = approved.json()
            data = invoice["data"]
            total = Decimal(str(data["Total"])).quantize(Decimal("0.01"))
            amount = (total * share).quantize(Decimal("0.01"))
            paid = httpx.post(
                f"{control}/Payments",
                params={"tenant": invoice.get("tenant", "")},
                json={
                    "Invoice": {"InvoiceID": invoice_id},
                    "Account": {"Code": BANK_ACCOUNT},
                    "Date": date.today().isoformat(),
                    "Amount": float(amount),
                    "Reference": f"Remittance {data.get('InvoiceNumber') or invoice_id}",
                },
                timeout=CONTROL_TIMEOUT_S,
            )
            paid.raise_for_status()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            return f"Demo firm: could not approve and pay invoice {invoice_id} in Xero: {exc}"
        number = data.get("InvoiceNumber") or invoice_id
        return (
            f"Demo firm: finance approves invoice {number} in Xero; the customer pays "
            f"{data.get('CurrencyCode', '')} {amount} of {total}"
        )

    def _next(self, now: float) -> None:
        self.phase += 1
        self.since = now

    def _play(self, change: dict[str, Any]) -> str:
        url = (
            f"{self.sandbox_url}/_control/records/"
            f"{change['system']}/{change['object']}/{change['id']}"
        )
        try:
            response = httpx.patch(url, json=change["changes"], timeout=CONTROL_TIMEOUT_S)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            return f"Demo firm: could not {change.get('what', 'make a change')}: {exc}"
        return f"Demo firm: {change.get('what', 'a change in ' + str(change['system']))}"
