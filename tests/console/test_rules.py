"""Rules in the console: ownership rules checked against the canonical models, case routing
rules against the catalogue (and the SLA per priority), ERP routes against the connections'
roles; added, changed and deleted in place through audited services; filters, CSV and empty
states; integration admins only."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from rest_framework.test import APIClient

from exceptions.models import CaseRoute, ExceptionCase, SlaPolicy
from exceptions.routes import (
    PROCESSES,
    case_route_create,
    case_route_update,
    sla_policy_update,
)
from exceptions.services import Blocked, case_open_or_join
from integrations.mapping.ownership_rules import (
    ownership_rule_create,
    ownership_rule_problems,
)
from integrations.models import AuditEvent, OwnershipRule, RoutingRule
from integrations.roles import FINANCE, INTEGRATION_ADMIN, SALES_OPS
from integrations.services.config_rows import config_row_create
from integrations.sync.project_links import PROCESS as REFERENCE_DATA
from integrations.workflows.fixes import PROCESS as FIX_IN_PLACE
from integrations.workflows.time_to_erp import PROCESS as TIME_TO_ERP
from tests.factories import LegalEntityFactory, UserFactory, make_connection

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}


@pytest.fixture
def admin() -> Client:
    client = Client()
    client.force_login(UserFactory.create(username="ada", role=INTEGRATION_ADMIN))
    return client


def _csv(response: object) -> list[dict[str, str]]:
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    return list(csv.DictReader(io.StringIO(body)))


# --- Who may -------------------------------------------------------------------------------------


def _urls() -> list[tuple[str, str]]:
    rule = OwnershipRule.objects.create(object_type="project", field="region", owner_role="crm")
    route = CaseRoute.objects.create(case_type="vendor_validation", queue_id="sales_ops")
    erp = RoutingRule.objects.create(role="erp", connection=make_connection())
    sla = SlaPolicy.objects.get(priority=1)
    urls = [("post", f"/config/rules/sla/{sla.pk}/")]
    for prefix, pk in (
        ("/config/rules/ownership/", rule.pk),
        ("/config/rules/case-routing/", route.pk),
        ("/config/rules/erp-routing/", erp.pk),
    ):
        urls += [
            ("get", prefix),
            ("get", f"{prefix}?format=csv"),
            ("post", f"{prefix}add/"),
            ("get", f"{prefix}{pk}/"),
            ("get", f"{prefix}{pk}/edit/"),
            ("post", f"{prefix}{pk}/edit/"),
            ("post", f"{prefix}{pk}/delete/"),
        ]
    return urls


@pytest.mark.parametrize("role", [FINANCE, SALES_OPS])
def test_a_user_without_the_admin_role_is_refused_every_rules_page_and_action(role: str) -> None:
    client = Client()
    client.force_login(UserFactory.create(role=role))
    for method, url in _urls():
        assert getattr(client, method)(url).status_code == 403, (role, method, url)
    assert OwnershipRule.objects.filter(object_type="project").exists()
    assert CaseRoute.objects.exists()
    assert RoutingRule.objects.exists()


def test_anonymous_is_sent_to_sign_in_from_every_rules_page_and_action() -> None:
    for method, url in _urls():
        response = getattr(Client(), method)(url)
        assert response.status_code == 302, (method, url)
        assert response["Location"].startswith("/login/")


# --- Ownership ---------------------------------------------------------------------------------


def test_an_ownership_rule_must_name_a_canonical_model_and_one_of_its_fields() -> None:
    assert (
        "not a canonical model"
        in ownership_rule_problems(object_type="cutsomer", field="")["object_type"]
    )
    problem = ownership_rule_problems(object_type="customer", field="vat")["field"]
    assert "'vat' is not a field of customer" in problem
    assert "tax_number" in problem
    assert ownership_rule_problems(object_type="customer", field="legal_entity") == {}
    assert ownership_rule_problems(object_type="project", field="") == {}
    with pytest.raises(ValidationError):
        ownership_rule_create(
            data={"object_type": "customer", "field": "id", "owner_role": "crm"}, actor=None
        )


def test_the_api_checks_ownership_rules_the_same_way(
    api_client_as: Callable[..., APIClient],
) -> None:
    client = api_client_as(INTEGRATION_ADMIN)
    refused = client.post(
        "/api/v1/ownership-rules/",
        {"object_type": "customer", "field": "vat", "owner_role": "erp"},
        format="json",
    )
    assert refused.status_code == 400
    assert "'vat' is not a field of customer" in refused.json()["field"][0]


def test_an_admin_adds_changes_and_deletes_an_ownership_rule_in_place(admin: Client) -> None:
    page = admin.get("/config/rules/ownership/")
    assert page.status_code == 200
    assert "customer" in page.content.decode()  # the seeded rules (migration 0002)

    refused = admin.post(
        "/config/rules/ownership/add/",
        {"object_type": "customer", "field": "vat", "owner_role": "erp"},
        headers=HX,
    )
    assert refused.status_code == 400
    assert refused["HX-Retarget"] == "#rule-add"
    assert "&#x27;vat&#x27; is not a field of customer" in refused.content.decode()

    added = admin.post(
        "/config/rules/ownership/add/",
        {"object_type": "project", "field": "budget", "owner_role": "crm", "note": "Sold budget"},
        headers=HX,
    )
    assert added.status_code == 200
    rule = OwnershipRule.objects.get(object_type="project", field="budget")
    text = added.content.decode()
    assert f'id="ownership_rule-{rule.pk}" class="added"' in text
    assert f"Added ownership rule #{rule.pk} (project.budget owned by CRM)." in text
    assert text.count('id="console-status"') == 1  # one result line, not one per row

    form = admin.get(f"/config/rules/ownership/{rule.pk}/edit/", headers=HX).content.decode()
    assert f'form="edit-ownership_rule-{rule.pk}"' in form
    # Without JavaScript, Edit is a page of its own with the same form.
    whole = admin.get(f"/config/rules/ownership/{rule.pk}/edit/").content.decode()
    assert f'<form id="edit-ownership_rule-{rule.pk}" method="post"' in whole
    assert "<h1>Edit ownership rule" in whole
    bad = admin.post(
        f"/config/rules/ownership/{rule.pk}/edit/",
        {
            f"r{rule.pk}-object_type": "project",
            f"r{rule.pk}-field": "nope",
            f"r{rule.pk}-owner_role": "crm",
        },
        headers=HX,
    )
    assert bad.status_code == 400
    assert "is not a field of project" in bad.content.decode()
    saved = admin.post(
        f"/config/rules/ownership/{rule.pk}/edit/",
        {
            f"r{rule.pk}-object_type": "project",
            f"r{rule.pk}-field": "budget",
            f"r{rule.pk}-owner_role": "psa",
        },
        headers=HX,
    )
    assert saved.status_code == 200
    assert "owned by PSA" in saved.content.decode()
    # The page's trail follows the action, out of band.
    assert '<div id="console-trail" hx-swap-oob="true">' in saved.content.decode()
    assert "owner_role crm \u2192 psa" in saved.content.decode()
    twin = admin.post(
        "/config/rules/ownership/add/",
        {"object_type": "project", "field": "budget", "owner_role": "erp"},
        headers=HX,
    )
    assert twin.status_code == 400
    assert f"Rule #{rule.pk} already covers project.budget owned by PSA" in twin.content.decode()
    rule.refresh_from_db()
    assert rule.owner_role == "psa"

    deleted = admin.post(f"/config/rules/ownership/{rule.pk}/delete/", headers=HX)
    assert deleted.status_code == 200
    assert f"Deleted ownership rule #{rule.pk}" in deleted.content.decode()
    assert not OwnershipRule.objects.filter(pk=rule.pk).exists()
    actions = list(
        AuditEvent.objects.filter(object_type="ownershiprule", object_id=str(rule.pk))
        .order_by("id")
        .values_list("action", "actor_label")
    )
    assert actions == [("create", "ada"), ("update", "ada"), ("delete", "ada")]
    trail = admin.get("/config/rules/ownership/").content.decode()
    assert "owner_role crm \u2192 psa" in trail


def test_ownership_rules_filter_sort_page_and_export(admin: Client) -> None:
    seeded = OwnershipRule.objects.count()
    only_erp = admin.get(
        "/config/rules/ownership/?owner_role=erp&scope=field", headers=HX
    ).content.decode()
    assert "tax_number" in only_erp
    assert "(whole object)" not in only_erp
    rows = _csv(admin.get("/config/rules/ownership/?format=csv"))
    assert len(rows) == seeded
    assert {"object": "customer", "field": "tax_number"}.items() <= rows[1].items() or any(
        r["field"] == "tax_number" for r in rows
    )
    # Keyset pages of 50: every rule once, in order.
    for n in range(60):
        OwnershipRule.objects.create(object_type="timeentry", field=f"f{n:02d}", owner_role="psa")
    expected = list(
        OwnershipRule.objects.filter(object_type="timeentry")
        .order_by("object_type", "field", "pk")
        .values_list("pk", flat=True)
    )
    seen: list[int] = []
    url: str | None = "/config/rules/ownership/?object_type=timeentry&sort=object"
    while url:
        text = admin.get(url).content.decode()
        seen += [int(pk) for pk in re.findall(r'<tr id="ownership_rule-(\d+)"', text)]
        following = re.search(r'<a href="([^"]+)"[^>]*>Next page', text)
        url = following.group(1).replace("&amp;", "&") if following else None
    assert seen == expected
    empty = admin.get("/config/rules/ownership/?q=nothing-like-this").content.decode()
    assert "No ownership rule matches these filters" in empty


# --- Case routing ------------------------------------------------------------------------------


def test_every_process_that_opens_cases_is_known() -> None:
    assert {TIME_TO_ERP, FIX_IN_PLACE, REFERENCE_DATA, "inbound", "polling"} == set(PROCESSES)


def test_a_routing_rule_must_name_real_things_and_not_repeat_another() -> None:
    with pytest.raises(ValidationError, match="not a case type in the catalogue"):
        case_route_create(
            data={"case_type": "vendor_validaton", "queue": None, "priority": 1}, actor=None
        )
    with pytest.raises(ValidationError, match="No case is opened for a process 'invoicing'"):
        case_route_create(data={"process": "invoicing", "priority": 1}, actor=None)
    with pytest.raises(ValidationError, match="'mars' is not a region"):
        case_route_create(data={"region": "mars", "priority": 1}, actor=None)
    with pytest.raises(ValidationError, match="Choose a queue, a priority or both"):
        case_route_create(data={"case_type": "vendor_validation"}, actor=None)
    route = case_route_create(data={"case_type": "vendor_validation", "priority": 1}, actor=None)
    with pytest.raises(ValidationError, match=f"Rule #{route.pk} already routes cases"):
        case_route_create(data={"case_type": "vendor_validation", "priority": 2}, actor=None)
    case_route_update(route=route, data={"priority": 2}, actor=None)
    route.refresh_from_db()
    assert route.priority == 2


def test_a_route_added_on_the_page_sends_the_next_case_to_its_queue(admin: Client) -> None:
    entity = LegalEntityFactory.create(code="UK01")
    response = admin.post(
        "/config/rules/case-routing/add/",
        {
            "case_type": "vendor_validation",
            "process": "time_to_erp",
            "legal_entity": str(entity.pk),
            "queue": "sales_ops",
            "priority": "1",
            "note": "UK invoices to sales ops",
        },
        headers=HX,
    )
    assert response.status_code == 200, response.content.decode()
    route = CaseRoute.objects.get()
    assert f"Added routing rule #{route.pk}" in response.content.decode()
    case = case_open_or_join(
        case_type="vendor_validation",
        subject={"about": "invoice INV-1", "complaint": "missing VAT number", "vendor": "Xero"},
        records=[Blocked(record_type="invoice", record_id=1, label="INV-1")],
        process="time_to_erp",
        step="post",
        legal_entity_id=entity.pk,
    )
    assert (case.queue, case.priority) == ("sales_ops", 1)
    assert AuditEvent.objects.get(object_type="caseroute").changes["queue"] == [None, "sales_ops"]

    rows = _csv(admin.get("/config/rules/case-routing/?format=csv"))
    assert rows == [
        {
            "id": str(route.pk),
            "case_type": "vendor_validation",
            "process": "time_to_erp",
            "legal_entity": "UK01",
            "region": "",
            "queue": "sales_ops",
            "priority": "P1",
            "note": "UK invoices to sales ops",
        }
    ]
    filtered = admin.get("/config/rules/case-routing/?queue=finance", headers=HX).content.decode()
    assert "No routing rule matches these filters" in filtered


def test_the_case_routing_page_says_when_there_are_no_rules(admin: Client) -> None:
    text = admin.get("/config/rules/case-routing/").content.decode()
    assert "No routing rules: every case goes to the queue and priority" in text
    assert "Time to resolve, per priority" in text


def test_the_sla_per_priority_is_changed_in_place_and_checked(admin: Client) -> None:
    policy = SlaPolicy.objects.get(priority=ExceptionCase.Priority.P2)
    url = f"/config/rules/sla/{policy.pk}/"
    refused = admin.post(
        url,
        {f"sla{policy.pk}-resolve_within_hours": "4", f"sla{policy.pk}-due_soon_hours": "6"},
        headers=HX,
    )
    assert refused.status_code == 400
    assert "Due soon must be shorter than the time to resolve" in refused.content.decode()
    saved = admin.post(
        url,
        {f"sla{policy.pk}-resolve_within_hours": "12", f"sla{policy.pk}-due_soon_hours": "2.5"},
        headers=HX,
    )
    assert saved.status_code == 200
    assert (
        "P2 cases are now to be resolved within 12 h (due soon in the last 2.5 h)."
        in saved.content.decode()
    )
    policy.refresh_from_db()
    assert (policy.resolve_within, policy.due_soon_within) == (
        timedelta(hours=12),
        timedelta(hours=2.5),
    )
    event = AuditEvent.objects.get(object_type="slapolicy")
    assert event.changes["resolve_within"] == ["1 day, 0:00:00", "12:00:00"]
    with pytest.raises(ValidationError, match="more than nothing"):
        sla_policy_update(
            policy=policy, resolve_within=timedelta(0), due_soon_within=timedelta(0), actor=None
        )


# --- ERP routing -------------------------------------------------------------------------------


def test_an_erp_route_needs_an_erp_connection() -> None:
    crm = make_connection(
        name="CRM",
        role="crm",
        vendor="salesforce",
        base_url="https://sf.example",
        credentials={},
    )
    with pytest.raises(ValidationError, match="CRM is a CRM connection; a ERP route needs"):
        config_row_create(model=RoutingRule, data={"role": "erp", "connection": crm}, actor=None)


def test_an_admin_routes_a_legal_entity_to_an_erp_connection(admin: Client) -> None:
    empty = admin.get("/config/rules/erp-routing/").content.decode()
    assert "No ERP routes: no invoice can be sent" in empty
    assert "There is no default route" in empty
    legacy = make_connection(name="Xero (legacy)")
    new = make_connection(name="Xero (new)", base_url="http://127.0.0.1:8101/xero/api.xro/2.0")
    entity = LegalEntityFactory.create(code="DE01", name="Concord GmbH")
    default = admin.post("/config/rules/erp-routing/add/", {"connection": str(new.pk)}, headers=HX)
    assert default.status_code == 200
    assert "Default" in default.content.decode()
    routed = admin.post(
        "/config/rules/erp-routing/add/",
        {"legal_entity": str(entity.pk), "connection": str(legacy.pk)},
        headers=HX,
    )
    assert routed.status_code == 200
    twice = admin.post(
        "/config/rules/erp-routing/add/",
        {"legal_entity": str(entity.pk), "connection": str(new.pk)},
        headers=HX,
    )
    assert twice.status_code == 400
    assert "already exists" in twice.content.decode()
    page = admin.get("/config/rules/erp-routing/").content.decode()
    assert (
        "Every legal entity without a route of its own (0) goes to <strong>Xero (new)</strong>"
        in page
    )
    rule = RoutingRule.objects.get(legal_entity=entity)
    saved = admin.post(
        f"/config/rules/erp-routing/{rule.pk}/edit/",
        {f"r{rule.pk}-legal_entity": str(entity.pk), f"r{rule.pk}-connection": str(new.pk)},
    )
    assert saved.status_code == 302  # without JavaScript: back to the list with a message
    assert "Saved ERP route" in admin.get(saved["Location"]).content.decode()
    rule.refresh_from_db()
    assert rule.connection == new
    rows = _csv(admin.get("/config/rules/erp-routing/?format=csv"))
    assert [(r["legal_entity"], r["connection"]) for r in rows] == [
        ("(default)", "Xero (new)"),
        ("DE01", "Xero (new)"),
    ]
    plain = admin.post(f"/config/rules/erp-routing/{rule.pk}/delete/")
    assert plain.status_code == 302
    assert not RoutingRule.objects.filter(pk=rule.pk).exists()
    assert AuditEvent.objects.filter(object_type="routingrule", action="delete").count() == 1
