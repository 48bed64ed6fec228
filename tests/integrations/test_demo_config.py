"""The demo firm's configuration (integrations/management/demo.py, run by `make run` and
`manage.py seed_demo`) against the real sandbox process: on a database whose seeded rows are
gone (as ``flush`` or a transactional test leaves it) it brings back the ownership and match
rules, maps the contract's tax profile to the ERP's tax type (read at set-up, by sync), and
subscribes each ERP connection to its own organisation's webhooks; a second start changes none
of it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from integrations.management.demo import (
    CRM,
    OWNERSHIP_RULES,
    TAX_PROFILE_FIELD,
    demo_firm_setup,
)
from integrations.models import (
    Connection,
    Contract,
    MappingSet,
    MatchRule,
    OwnershipRule,
    SystemRole,
    TaxRate,
)
from integrations.sync.identity import DEFAULT_MATCH_RULES
from integrations.sync.polling import poll_object

pytestmark = pytest.mark.django_db

PORTAL = "http://127.0.0.1:9"  # no portal listens: nothing is delivered in this test


def _contract_mapping(crm: Connection) -> MappingSet:
    return MappingSet.objects.get(
        connection=crm, object_type="Contract", status=MappingSet.Status.PUBLISHED
    )


def test_the_demo_configuration_restores_the_seeded_rules_and_maps_tax_profiles(
    sandbox: Any, sandbox_url: str
) -> None:
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": 1})
    # What a flushed database holds of the migrations' rows (post_migrate re-makes the rest).
    OwnershipRule.objects.all().delete()
    MatchRule.objects.all().delete()

    firm = demo_firm_setup(sandbox_url=sandbox_url, portal_url=PORTAL)

    assert firm.fresh
    assert set(OwnershipRule.objects.values_list("object_type", "field", "owner_role")) == {
        (obj, field, owner) for obj, field, owner, _ in OWNERSHIP_RULES
    }
    assert set(MatchRule.objects.values_list("object_type", "name")) == {
        (rule["object_type"], rule["name"]) for rule in DEFAULT_MATCH_RULES
    }
    # The ERPs' tax rates were read at set-up, from both organisations.
    reverse_charge = TaxRate.objects.get(code="ECZROUTPUTSERVICES")
    assert reverse_charge.requires_customer_tax_number
    assert TaxRate.objects.filter(code="TAX002").exists()
    # One subscription per connection; each ERP's hears its own organisation only.
    hooks = httpx.get(f"{sandbox_url}/_control/webhooks", timeout=10).json()["subscriptions"]
    assert firm.webhooks == len(hooks) == 4
    erps = Connection.objects.filter(role=SystemRole.ERP)
    assert sorted(h["tenant"] for h in hooks if h["system"] == "xero") == sorted(
        c.credentials["tenant_id"] for c in erps
    )
    assert {h["url"] for h in hooks} == {f"{PORTAL}/webhooks/{pk}/" for pk in firm.connections}

    # The CRM's contracts name their tax profile: reverse charge is the ERP's zero-rated EC
    # services (it needs the customer's VAT number), "standard" no tax profile at all.
    crm = Connection.objects.get(name=CRM)
    for object_type in ("Account", "Contract"):
        assert poll_object(connection_id=crm.pk, object_type=object_type).read > 0
    profiles = {
        r["data"]["ContractNumber"]: r["data"]["Tax_Profile__c"]
        for r in sandbox.records("salesforce", "Contract")
    }
    stored = dict(Contract.objects.values_list("number", "tax_rate__code"))
    assert "reverse-charge" in profiles.values()
    assert {number: stored[number] for number in profiles} == {
        number: "ECZROUTPUTSERVICES" if profile == "reverse-charge" else None
        for number, profile in profiles.items()
    }

    # A second start (the database kept, the sandbox afresh) changes none of it.
    mapping = _contract_mapping(crm)
    sandbox.post("/seed", {"scale": 1})
    again = demo_firm_setup(sandbox_url=sandbox_url, portal_url=PORTAL)
    assert not again.fresh
    assert again.connections == firm.connections
    assert _contract_mapping(crm).pk == mapping.pk
    assert mapping.fields.filter(canonical_field=TAX_PROFILE_FIELD).count() == 1
    assert OwnershipRule.objects.count() == len(OWNERSHIP_RULES)
    assert MatchRule.objects.count() == len(DEFAULT_MATCH_RULES)
