"""Identity resolution: one canonical customer per real customer, whichever of the CRM, the PSA
and the ERP it arrives from first; a near match opens a possible-duplicate case; merging moves
everything that pointed at the merged record, audited, and unmerging puts it back."""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as global_apps
from django.contrib.contenttypes.models import ContentType
from rest_framework.test import APIClient

from exceptions.models import BlockedRecord, ExceptionCase, Queue
from exceptions.services import Blocked, case_open_or_join
from integrations.mapping.apply import MappedRecord, map_inbound
from integrations.mapping.ownership import load_ownership_rules
from integrations.mapping.selectors import mapping_cache_clear, mapping_load_published
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    AuditEvent,
    Connection,
    CrossReference,
    Customer,
    InboundMessage,
    Invoice,
    LegalEntity,
    MatchKey,
    Project,
    RecordMerge,
)
from integrations.roles import PMO, SALES_OPS
from integrations.sync.errors import MergeRefused
from integrations.sync.identity import (
    CONCORD,
    DEFAULT_MATCH_RULES,
    Key,
    Rule,
    _scored,
    core_name,
    match_keys,
    match_rules_install_defaults,
    name_key,
    record_merge,
    record_unmerge,
    similarity,
    tax_key,
)
from integrations.sync.polling import poll_object
from integrations.sync.upsert import UpsertResult, UpsertState, canonical_upsert
from tests.concurrency import first_holds_then_commits
from tests.factories import LegalEntityFactory, make_connection

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parents[1] / "mapping" / "fixtures"
VAT = "GB 123 4567 89"


def _fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def granite(vendor: str, **changes: Any) -> dict[str, Any]:
    """Granite Retail Ltd as each system holds it (payloads of the vendors' real shape): the
    CRM's account with its external id, the PSA's client (no reference, no tax number) and the
    ERP's contact carrying the account's external id as its number and the VAT number."""
    if vendor == "salesforce":
        payload = _fixture("salesforce_account")
        payload.update(
            Id="0015g0000000007AAA",
            Name="Granite Retail Ltd",
            External_Id__c="CUST-00007",
            Legal_Entity__c="UK01",
            CurrencyIsoCode="GBP",
            BillingCountry="United Kingdom",
            Tax_Number__c=None,
        )
    elif vendor == "harvest":
        payload = _fixture("harvest_client")
        payload.update(id=1000007, name="Granite Retail Ltd", currency="GBP")
    else:
        payload = _fixture("xero_contact")
        payload.update(
            ContactID="6f1c1d2e-0000-4000-8000-000000000007",
            ContactNumber="CUST-00007",
            # The ERP writes the name its own way; the CRM owns it.
            Name="Granite Retail LTD",
            TaxNumber=VAT,
            DefaultCurrency="GBP",
        )
    payload.update(changes)
    return copy.deepcopy(payload)


@pytest.fixture
def systems() -> Iterator[dict[str, Connection]]:
    mapping_cache_clear()
    match_rules_install_defaults()
    LegalEntity.objects.create(
        code="UK01", name="Concord Consulting Ltd", country="GB", base_currency="GBP"
    )
    found = {}
    for vendor, role in (("salesforce", "crm"), ("harvest", "psa"), ("xero", "erp")):
        connection = make_connection(name=f"{vendor} identity", role=role, vendor=vendor)
        mapping_defaults_install(connection=connection)
        found[vendor] = connection
    yield found
    mapping_cache_clear()


OBJECTS = {"salesforce": "Account", "harvest": "clients", "xero": "Contacts"}


def arrive(connection: Connection, payload: dict[str, Any]) -> UpsertResult:
    """One record as a webhook brings it: mapped by the published mapping, upserted."""
    mapping = mapping_load_published(
        connection_id=connection.pk, object_type=OBJECTS[connection.vendor]
    )
    assert mapping is not None
    mapped = map_inbound(mapping, payload)
    assert mapped.ok, mapped.errors
    return canonical_upsert(
        connection=connection, mapped=mapped, rules=load_ownership_rules(), payload=payload
    )


@pytest.mark.parametrize(
    "order", [("salesforce", "harvest", "xero"), ("xero", "harvest", "salesforce")]
)
def test_one_customer_from_three_systems_in_any_order(
    systems: dict[str, Connection], order: tuple[str, str, str]
) -> None:
    results = [arrive(systems[vendor], granite(vendor)) for vendor in order]

    assert [r.state for r in results] == [UpsertState.APPLIED] * 3
    assert [r.created for r in results] == [True, False, False]
    customer = Customer.objects.get()
    assert {r.record_id for r in results} == {customer.pk}
    xrefs = CrossReference.objects.filter(
        content_type=ContentType.objects.get_for_model(Customer), object_id=customer.pk
    )
    assert sorted(xrefs.values_list("connection__vendor", "external_id")) == [
        ("harvest", "1000007"),
        ("salesforce", "0015g0000000007AAA"),
        ("xero", "6f1c1d2e-0000-4000-8000-000000000007"),
    ]
    # Each field from the system that owns it: the CRM's name, the ERP's tax number.
    assert customer.name == "Granite Retail Ltd"
    assert customer.tax_number == VAT
    assert customer.country == "GB"
    source = customer.source_of("tax_number")
    assert source is not None
    assert source.system == "erp"
    assert not ExceptionCase.objects.filter(case_type="possible_duplicate").exists()


def test_the_erp_contact_links_by_the_crm_id_it_carries_whatever_its_name(
    systems: dict[str, Connection],
) -> None:
    crm = arrive(systems["salesforce"], granite("salesforce"))
    erp = arrive(systems["xero"], granite("xero", Name="Granite Retail (UK) Trading"))
    assert erp.record_id == crm.record_id
    assert Customer.objects.count() == 1
    assert Customer.objects.get().name == "Granite Retail Ltd"


@pytest.mark.django_db(transaction=True)
def test_a_contact_linked_while_concord_records_its_own_create_of_it_is_applied(
    systems: dict[str, Connection],
) -> None:
    """Concord created the customer's contact in the ERP and is recording the answer's id while
    the ERP's webhook for that contact arrives. The webhook's copy, linked by the match rules to
    the same customer, waits on the cross-reference's unique key; once the create's commits, it
    is applied to the customer that cross-reference names: no failure, no second link."""
    crm = arrive(systems["salesforce"], granite("salesforce"))
    customer_id = crm.record_id
    assert customer_id is not None
    contact = granite("xero", Name="Granite Retail Ltd")  # as the CRM names it: no conflict

    def record_the_create() -> CrossReference:
        return CrossReference.objects.create(
            connection=systems["xero"],
            content_type=ContentType.objects.get_for_model(Customer),
            object_id=customer_id,
            external_id=contact["ContactID"],
            external_version="1",
        )

    _, result = first_holds_then_commits(
        record_the_create, lambda: arrive(systems["xero"], contact)
    )
    assert (result.state, result.error) == (UpsertState.APPLIED, ""), result
    assert (result.record_id, result.created) == (customer_id, False)
    assert Customer.objects.count() == 1
    assert Customer.objects.get().tax_number == VAT  # the ERP's field, applied
    xref = CrossReference.objects.get(connection=systems["xero"])
    assert xref.object_id == customer_id
    assert not ExceptionCase.objects.exists(), list(
        ExceptionCase.objects.values_list("case_type", "message")
    )


def test_the_same_name_with_another_tax_number_is_not_linked(
    systems: dict[str, Connection],
) -> None:
    arrive(systems["xero"], granite("xero", ContactNumber=None))
    other = arrive(
        systems["salesforce"],
        granite("salesforce", External_Id__c=None, Tax_Number__c="GB987654321"),
    )
    assert other.created is True
    assert Customer.objects.count() == 2
    case = ExceptionCase.objects.get(case_type="possible_duplicate")
    assert "tax numbers differ" in case.message


def test_a_near_match_opens_a_possible_duplicate_case_with_both_side_by_side(
    systems: dict[str, Connection],
) -> None:
    crm = arrive(systems["salesforce"], granite("salesforce"))
    psa = arrive(systems["harvest"], granite("harvest", name="Granit Retail Limited"))

    assert psa.created is True  # its own row meanwhile
    assert Customer.objects.count() == 2
    case = ExceptionCase.objects.get(case_type="possible_duplicate")
    assert case.queue == Queue.SALES_OPS
    assert case.status == ExceptionCase.Status.OPEN
    assert case.record_count == 2
    assert (case.subject["record_id"], case.subject["match_id"]) == (psa.record_id, crm.record_id)
    new, old = case.subject["records"]
    assert (new["id"], new["name"], new["systems"]) == (
        psa.record_id,
        "Granit Retail Limited",
        [f"{systems['harvest'].name}: 1000007"],
    )
    assert (old["id"], old["name"], old["systems"]) == (
        crm.record_id,
        "Granite Retail Ltd",
        [f"{systems['salesforce'].name}: 0015g0000000007AAA"],
    )
    assert "Granit Retail Limited" in case.message
    assert "similarity 9" in case.message


def _duplicate(systems: dict[str, Connection]) -> tuple[Customer, Customer, ExceptionCase]:
    crm = arrive(systems["salesforce"], granite("salesforce"))
    psa = arrive(systems["harvest"], granite("harvest", name="Granit Retail Limited"))
    case = ExceptionCase.objects.get(case_type="possible_duplicate")
    assert crm.record_id is not None
    assert psa.record_id is not None
    return Customer.objects.get(pk=crm.record_id), Customer.objects.get(pk=psa.record_id), case


def test_merging_moves_everything_and_is_audited_and_unmerging_restores(
    systems: dict[str, Connection], api_client_as: Callable[..., APIClient]
) -> None:
    winner, loser, duplicate_case = _duplicate(systems)
    entity = LegalEntity.objects.get(code="UK01")
    project = Project.objects.create(
        code="PUK-0007", name="Granite Platform", customer=loser, currency="GBP"
    )
    invoice = Invoice.objects.create(
        legal_entity=entity, customer=loser, currency="GBP", number="INV-7"
    )
    held = case_open_or_join(
        case_type="vendor_validation",
        subject={"about": "Granit Retail Limited", "complaint": "no VAT number", "vendor": "Xero"},
        records=[Blocked("customer", loser.pk, "Granit Retail Limited", Decimal("120"), "GBP")],
        process="outbound",
        step="invoice",
    )
    loser_xref = CrossReference.objects.get(connection=systems["harvest"])
    client = api_client_as(SALES_OPS)

    response = client.post(
        f"/api/v1/customers/{winner.pk}/merge/",
        {"merged": loser.pk, "exception_case": duplicate_case.pk},
        format="json",
    )

    assert response.status_code == 201, response.content
    merge = RecordMerge.objects.get(pk=response.json()["id"])
    assert not Customer.objects.filter(pk=loser.pk).exists()
    loser_xref.refresh_from_db()
    assert loser_xref.object_id == winner.pk
    assert CrossReference.objects.filter(object_id=winner.pk).count() == 2
    assert MatchKey.objects.filter(object_type="customer", object_id=loser.pk).count() == 0
    assert Project.objects.get(pk=project.pk).customer_id == winner.pk
    assert Invoice.objects.get(pk=invoice.pk).customer_id == winner.pk
    blocked = BlockedRecord.objects.get(case=held, record_type="customer")
    assert blocked.record_id == winner.pk
    duplicate_case.refresh_from_db()
    assert duplicate_case.status == ExceptionCase.Status.RESOLVED
    assert f"merge {merge.pk}" in duplicate_case.resolution_note
    audit = AuditEvent.objects.filter(object_type="customer")
    assert audit.get(action="update", object_id=str(winner.pk)).changes["merged"] == [
        None,
        loser.pk,
    ]
    gone = audit.get(action="delete", object_id=str(loser.pk))
    assert gone.changes["merged_into"] == [loser.pk, winner.pk]
    assert gone.actor_id is not None

    undone = client.post(f"/api/v1/merges/{merge.pk}/unmerge/", format="json")

    assert undone.status_code == 200, undone.content
    restored = Customer.objects.get(pk=loser.pk)
    assert restored.name == "Granit Retail Limited"
    assert restored.created_at == loser.created_at
    loser_xref.refresh_from_db()
    assert loser_xref.object_id == loser.pk
    assert Project.objects.get(pk=project.pk).customer_id == loser.pk
    assert Invoice.objects.get(pk=invoice.pk).customer_id == loser.pk
    assert BlockedRecord.objects.get(case=held, record_type="customer").record_id == loser.pk
    assert MatchKey.objects.filter(object_type="customer", object_id=loser.pk).exists()
    assert audit.filter(action="create", object_id=str(loser.pk)).count() == 1
    merge.refresh_from_db()
    assert merge.unmerged_at is not None
    again = client.post(f"/api/v1/merges/{merge.pk}/unmerge/", format="json")
    assert again.status_code == 400
    assert "already taken back" in again.json()["detail"]


def test_a_merge_takes_the_owners_values_and_unmerge_gives_them_back(
    systems: dict[str, Connection],
) -> None:
    """The ERP's copy merged into the CRM's: the ERP owns the tax number, so the merged
    customer has it; the CRM owns the name, so its name stays."""
    arrive(systems["salesforce"], granite("salesforce", External_Id__c="CUST-1"))
    arrive(systems["xero"], granite("xero", ContactNumber="OTHER", Name="Granite Retail plc"))
    crm, erp = Customer.objects.order_by("pk")
    assert crm.tax_number == ""

    merge = record_merge(object_type="customer", winner_id=crm.pk, loser_id=erp.pk, actor=None)

    crm.refresh_from_db()
    assert (crm.name, crm.tax_number, crm.country) == ("Granite Retail Ltd", VAT, "GB")
    taken = crm.source_of("tax_number")
    assert taken is not None
    assert taken.system == "erp"
    record_unmerge(merge_id=merge.pk, actor=None)
    crm.refresh_from_db()
    assert (crm.tax_number, crm.country) == ("", "")
    assert Customer.objects.get(pk=erp.pk).tax_number == VAT


def test_two_records_one_system_knows_apart_are_not_merged(
    systems: dict[str, Connection],
) -> None:
    arrive(systems["harvest"], granite("harvest"))
    arrive(systems["harvest"], granite("harvest", id=1000008, name="Granit Retail Limited"))
    first, second = Customer.objects.order_by("pk")
    with pytest.raises(MergeRefused, match="under different ids"):
        record_merge(object_type="customer", winner_id=first.pk, loser_id=second.pk, actor=None)
    assert Customer.objects.count() == 2


@pytest.mark.parametrize(("role", "status"), [(PMO, 403), ("", 403)])
def test_only_who_edits_customers_may_merge_them(
    systems: dict[str, Connection],
    api_client_as: Callable[..., APIClient],
    role: str,
    status: int,
) -> None:
    winner, loser, _case = _duplicate(systems)
    response = api_client_as(role).post(
        f"/api/v1/customers/{winner.pk}/merge/", {"merged": loser.pk}, format="json"
    )
    assert response.status_code == status
    assert Customer.objects.count() == 2


def test_the_migration_merges_the_duplicates_a_database_holds(
    systems: dict[str, Connection],
) -> None:
    """Before identity resolution each system's copy was its own customer; the migration gives
    them keys from their kept payloads and merges what certain rules join."""
    for vendor, connection in systems.items():
        payload = granite(vendor)
        customer = Customer.objects.create(
            name=payload.get("Name") or payload["name"],
            currency="GBP",
            tax_number=VAT if vendor == "xero" else "",
            country="GB" if vendor == "xero" else "",
            field_sources={f"{connection.role}:{connection.pk}:1": ["name"]},
        )
        external_id = str(payload.get("Id") or payload.get("ContactID") or payload.get("id"))
        CrossReference.objects.create(
            content_type=ContentType.objects.get_for_model(Customer),
            object_id=customer.pk,
            connection=connection,
            external_id=external_id,
        )
        InboundMessage.objects.create(
            connection=connection,
            source="poll",
            object_type=OBJECTS[vendor],
            external_id=external_id,
            dedupe_key=f"poll:{external_id}",
            payload=payload,
            state="applied",
        )
    Customer.objects.create(name="Someone Else Ltd", currency="GBP")
    migration = importlib.import_module("integrations.migrations.0013_identity_merge")

    migration.merge_duplicates(global_apps, None)

    assert Customer.objects.count() == 2
    kept = Customer.objects.get(name="Granite Retail Ltd")
    assert CrossReference.objects.filter(object_id=kept.pk).count() == 3
    # The CRM's copy is kept (the CRM owns customers), with the ERP's tax number.
    assert CrossReference.objects.get(object_id=kept.pk, connection=systems["salesforce"])
    assert kept.tax_number == VAT
    assert RecordMerge.objects.filter(winner_id=kept.pk).count() == 2


def test_tax_numbers_and_names_are_normalised_to_exact_keys() -> None:
    assert tax_key("GB 123 4567 89") == ("123456789", "GB")
    assert tax_key("UK123456789") == ("123456789", "GB")
    assert tax_key("123456789", "GB") == ("123456789", "GB")
    assert tax_key("de 123.456.789") == ("123456789", "DE")
    assert tax_key("53-5661907", "US") == ("535661907", "US")
    assert name_key("  Müller & Söhne GmbH. ") == "muller and sohne gmbh"
    assert core_name("Granite Retail Ltd.") == "granite retail"
    assert core_name("Limited") == "limited"
    assert similarity(core_name("Granit Retail Limited"), core_name("Granite Retail Ltd")) >= 90
    assert similarity(core_name("Harbor Energy Ltd"), core_name("Crown Health Ltd")) < 90


def test_a_block_is_scored_in_one_call_as_pair_by_pair() -> None:
    """`_scored` (one rapidfuzz call over a block) keeps exactly the names `similarity` keeps
    at the rule's threshold, with the same rounded scores: near names around the threshold,
    names equal, far and empty."""
    rule = Rule(id=1, name="name", kind="name", certain=False, threshold=90, sources={})
    stems = ["granite retail", "granit retail", "granite retails", "grante retail", "harbor"]
    names = [*stems, "granite retail group", "retail granite", "", "g", "granite  retail"]
    held = [(n, "harvest", core_name(name), "") for n, name in enumerate(names)]
    values = [value for _, _, value, _ in held]
    for probe in ["granite retail", "granit retal", "retail granite", "x", "granite retai"]:
        key = Key(rule_id=1, value=probe, block="gr")
        scored = dict(_scored(key, held, {"gr": values}, rule))
        expected = {
            at: similarity(probe, value)
            for at, value in enumerate(values)
            if similarity(probe, value) >= rule.threshold
        }
        assert scored == expected, probe


# -- the seeded firm, polled from all three systems -------------------------------------------


LEGACY_TENANT = "6b1f4c2e-3a5d-4e8f-9a7b-1c2d3e4f5a01"


def test_polling_the_seeded_firm_from_every_system_leaves_each_customer_once(
    make_connection: Callable[..., Connection], sandbox: Any
) -> None:
    sandbox.limits("*", enabled=False)
    seeded = sandbox.post("/seed", {"scale": 1, "seed": 7})
    match_rules_install_defaults()
    for code, name, country, currency in (
        ("US01", "Concord Consulting Inc.", "US", "USD"),
        ("UK01", "Concord Consulting Ltd", "GB", "GBP"),
        ("DE01", "Concord Beratung GmbH", "DE", "EUR"),
    ):
        LegalEntity.objects.create(code=code, name=name, country=country, base_currency=currency)
    connections = [
        make_connection("salesforce", rate_limit_per_minute=100_000),
        make_connection("harvest", rate_limit_per_minute=100_000),
        make_connection("xero", rate_limit_per_minute=100_000),
        _legacy_xero(make_connection),
    ]
    for connection in connections:
        mapping_defaults_install(connection=connection)
        report = poll_object(connection_id=connection.pk, object_type=OBJECTS[connection.vendor])
        assert report.read > 0

    # The firm's customers are in all three systems; its prospects (an account and a deal
    # in negotiation) only in the CRM.
    customers = seeded["counts"]["customers"]
    accounts = customers + seeded["counts"].get("prospects", 0)
    names = list(Customer.objects.values_list("name", flat=True))
    assert len(names) == accounts
    assert len(set(names)) == accounts
    xrefs = CrossReference.objects.filter(content_type__model="customer")
    assert xrefs.filter(connection=connections[0]).count() == accounts
    assert xrefs.filter(connection=connections[1]).count() == customers
    # Every contact the ERP tenants sent that could be stored linked to its customer.
    stored = InboundMessage.objects.filter(
        object_type="Contacts", state__in=["applied", "conflict"]
    )
    assert stored.count() > 0
    assert xrefs.filter(connection__in=connections[2:]).count() == stored.count()
    assert not ExceptionCase.objects.filter(case_type="possible_duplicate").exists()


def _legacy_xero(make_connection: Callable[..., Connection]) -> Connection:
    connection = make_connection("xero", rate_limit_per_minute=100_000)
    connection.credentials = {**connection.credentials, "tenant_id": LEGACY_TENANT}
    connection.save()
    return connection


def test_a_customer_made_in_concord_is_found_by_the_copy_a_system_sends_later(
    api_client_as: Callable[..., APIClient],
) -> None:
    """A person's customer carries match keys from its own fields, so the ERP's copy of the
    same customer (same tax number, written another way) links to it instead of a second row."""
    entity = LegalEntityFactory.create()
    made = api_client_as(SALES_OPS).post(
        "/api/v1/customers/",
        {
            "name": "Brightwater Analytics GmbH",
            "legal_entity": entity.pk,
            "country": "DE",
            "tax_number": "DE 136 695 976",
            "currency": "EUR",
        },
        format="json",
    )
    assert made.status_code == 201, made.json()
    xero = make_connection()
    mapped = MappedRecord(
        "customer",
        "c-brightwater",
        1,
        {"name": "Brightwater Analytics", "tax_number": "DE136695976", "currency": "EUR"},
        [],
    )
    result = canonical_upsert(
        connection=xero, mapped=mapped, rules=load_ownership_rules(), payload={}
    )
    assert result.record_id == made.json()["id"]
    assert Customer.objects.count() == 1


def test_a_rate_card_is_one_by_role_currency_and_contract() -> None:
    """The PSA's default rate for a role (no contract) carries the key of a hand-kept default
    rate card of that role and currency, and never that of a contract's rate card."""
    [row] = [r for r in DEFAULT_MATCH_RULES if r["object_type"] == "ratecard"]
    rule = Rule(
        id=1,
        name=row["name"],
        kind=row["kind"],
        certain=True,
        threshold=row["threshold"],
        sources={v: {k: tuple(p) for k, p in s.items()} for v, s in row["sources"].items()},
    )

    def key(vendor: str, **fields: Any) -> list[str]:
        found = match_keys([rule], vendor=vendor, external_id="9", fields=fields, payload={})
        return [k.value for k in found]

    polled = key("harvest", role="Consultant", currency="GBP")
    assert polled == key(CONCORD, role="Consultant", currency="GBP", contract=None)
    assert polled != key(CONCORD, role="Consultant", currency="GBP", contract=17)
    assert polled != key("harvest", role="Consultant", currency="EUR")
