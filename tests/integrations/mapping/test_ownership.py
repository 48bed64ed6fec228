"""System-of-record ownership: which mapped fields a source may apply."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from integrations.mapping.apply import map_inbound
from integrations.mapping.ownership import (
    OwnershipRules,
    load_ownership_rules,
    split_by_owner,
)
from integrations.models import OwnershipRule
from tests.integrations.mapping.conftest import compiled_default

RULES = OwnershipRules.build(
    [
        ("customer", "", "crm"),
        ("customer", "tax_number", "erp"),
        ("customer", "legal_entity", "erp"),
        ("timeentry", "", "psa"),
    ]
)


def test_object_rule_applies_the_owners_fields() -> None:
    decision = split_by_owner(
        RULES,
        object_type="timeentry",
        source_role="psa",
        fields={"hours": 8, "notes": "x"},
        current={"hours": 7, "notes": ""},
    )
    assert decision.applied == {"hours": 8, "notes": "x"}
    assert decision.conflicts == {}


def test_field_rule_overrides_the_object_rule() -> None:
    current = {"name": "Acme", "tax_number": "DE1", "currency": "EUR"}
    from_erp = split_by_owner(
        RULES,
        object_type="customer",
        source_role="erp",
        fields={"name": "ACME GmbH", "tax_number": "DE2", "currency": "EUR"},
        current=current,
    )
    assert from_erp.applied == {"tax_number": "DE2"}
    assert from_erp.conflicts == {"name": "crm"}
    assert from_erp.unchanged == ("currency",)

    from_crm = split_by_owner(
        RULES,
        object_type="customer",
        source_role="crm",
        fields={"name": "Acme Inc", "tax_number": "DE3"},
        current=current,
    )
    assert from_crm.applied == {"name": "Acme Inc"}
    assert from_crm.conflicts == {"tax_number": "erp"}
    assert from_crm.has_conflicts


def test_conflict_even_when_the_current_value_is_empty() -> None:
    decision = split_by_owner(
        RULES,
        object_type="customer",
        source_role="crm",
        fields={"tax_number": "DE3"},
        current={"tax_number": ""},
    )
    assert decision.conflicts == {"tax_number": "erp"}
    assert decision.applied == {}


def test_an_empty_value_from_a_non_owner_is_not_a_conflict() -> None:
    decision = split_by_owner(
        RULES,
        object_type="customer",
        source_role="crm",
        fields={"tax_number": "", "legal_entity__code": None},
        current={"tax_number": "DE1", "legal_entity__code": "DE01"},
    )
    assert decision.conflicts == {}
    assert decision.unchanged == ("tax_number", "legal_entity__code")


def test_new_record_takes_non_owned_fields_and_says_so() -> None:
    decision = split_by_owner(
        RULES,
        object_type="customer",
        source_role="erp",
        fields={"name": "Acme", "tax_number": "DE1"},
        current=None,
    )
    assert decision.applied == {"name": "Acme", "tax_number": "DE1"}
    assert decision.filled == ("name",)
    assert decision.conflicts == {}


def test_relation_fields_follow_the_relation_rule() -> None:
    decision = split_by_owner(
        RULES,
        object_type="customer",
        source_role="crm",
        fields={"legal_entity__code": "US01"},
        current={"legal_entity__code": "DE01"},
    )
    assert decision.conflicts == {"legal_entity__code": "erp"}


def test_objects_without_rules_are_applied() -> None:
    decision = split_by_owner(
        RULES, object_type="opportunity", source_role="crm", fields={"stage": "Won"}, current={}
    )
    assert decision.applied == {"stage": "Won"}


@pytest.mark.django_db
def test_seeded_rules_follow_the_domain_table(
    payload: Callable[[str], dict[str, Any]], django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(1):
        rules = load_ownership_rules()
    assert rules.owner_of("customer", "name") == "crm"
    for field in ("tax_number", "legal_entity", "billing_address", "billing_email", "country"):
        assert rules.owner_of("customer", field) == "erp"
    assert rules.owner_of("contract", "total_value") == "crm"
    assert rules.owner_of("project", "status") == "psa"
    assert rules.owner_of("timeentry", "hours") == "psa"
    assert rules.owner_of("expense", "amount") == "psa"
    assert rules.owner_of("invoice", "status") == "erp"
    assert rules.owner_of("payment", "amount") == "erp"

    # A Xero contact update on a customer the CRM named differently.
    record = map_inbound(compiled_default("xero", "Contacts"), payload("xero_contact"))
    decision = split_by_owner(
        rules,
        object_type="customer",
        source_role="erp",
        fields=record.fields,
        current={"name": "Harbor Energy", "currency": "GBP", "active": True, "tax_number": ""},
    )
    assert decision.conflicts == {"name": "crm"}
    assert set(decision.applied) == {"tax_number", "billing_email", "country", "billing_address"}
    assert set(decision.unchanged) == {"currency", "active"}


@pytest.mark.django_db
def test_edited_rules_are_read_fresh() -> None:
    OwnershipRule.objects.update_or_create(
        object_type="customer", field="name", defaults={"owner_role": "erp"}
    )
    assert load_ownership_rules().owner_of("customer", "name") == "erp"
