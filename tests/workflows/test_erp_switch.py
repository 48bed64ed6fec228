"""Switching a legal entity from the legacy ERP to the new one (integrations/services/
route_switches.py): an audited action with an effective time; invoices already made for the
legacy ERP finish there (queued, unsent drafts, not yet rendered), new time goes to the new
one; reconciliation compares each side's postings; the page counts what is in flight."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    AuditEvent,
    BillingEvent,
    Connection,
    Contract,
    Invoice,
    OutboxMessage,
    Project,
    RouteSwitch,
    RoutingRule,
)
from integrations.roles import FINANCE, INTEGRATION_ADMIN
from integrations.services.route_switches import (
    route_switch_create,
    route_switch_in_flight,
    route_switches_apply_due,
)
from integrations.workflows.reconciliation import reconcile_connection
from integrations.workflows.time_to_erp import POST_STEP, PROCESS, billing_run
from tests.factories import UserFactory, make_connection
from tests.firms import approved_time, tm_project_firm

pytestmark = pytest.mark.django_db


@dataclass
class Firm:
    legacy: Connection
    new: Connection
    project: Project


def _firm(*, add_to_open_draft: bool = False) -> Firm:
    """The UK entity billing to the legacy ERP (the default route), the new ERP configured
    beside it, and two days of Ada Byron's approved time waiting."""
    legacy = make_connection(name="Concord Legacy ERP")
    project = tm_project_firm(
        legacy,
        customer={"name": "Initech Ltd", "tax_number": "GB123456789"},
        contract_number="C-INI-1",
        project={"code": "P-INI", "name": "Apollo"},
        days=(2, 3),
        hours="7.50",
    )
    new = make_connection(name="Concord ERP")
    mapping_defaults_install(connection=new)
    if add_to_open_draft:
        Contract.objects.filter(projects=project).update(add_to_open_draft=True)
    return Firm(legacy=legacy, new=new, project=project)


def _rows(invoice: Invoice) -> list[OutboxMessage]:
    return list(
        OutboxMessage.objects.filter(
            content_type=ContentType.objects.get_for_model(Invoice),
            object_id=invoice.pk,
            process=PROCESS,
            step=POST_STEP,
        ).order_by("pk")
    )


def _entries_of(invoice: Invoice) -> set[int]:
    return set(BillingEvent.objects.filter(invoice=invoice).values_list("time_entry_id", flat=True))


# --- The action ---------------------------------------------------------------------------------


def test_a_switch_now_moves_the_entitys_route_and_is_audited() -> None:
    firm = _firm()
    admin = UserFactory.create(username="ada", role=INTEGRATION_ADMIN)
    switch = route_switch_create(
        legal_entity=firm.project.legal_entity,
        to_connection=firm.new,
        note="Go-live of the new ERP",
        actor=admin,
    )
    assert switch.from_connection == firm.legacy
    assert switch.applied_at is not None
    # The entity has its own route now; the default stays with the legacy ERP for the others.
    own = RoutingRule.objects.get(role="erp", legal_entity=firm.project.legal_entity)
    assert own.connection == firm.new
    assert RoutingRule.objects.get(role="erp", legal_entity__isnull=True).connection == firm.legacy
    trail = AuditEvent.objects.filter(object_type__in=["routeswitch", "routingrule"])
    assert {(e.object_type, e.action) for e in trail} == {
        ("routeswitch", "create"),
        ("routeswitch", "update"),
        ("routingrule", "create"),
    }
    assert all(e.actor == admin for e in trail)


def test_a_switch_is_refused_when_it_moves_nothing_or_another_waits() -> None:
    firm = _firm()
    entity = firm.project.legal_entity
    with pytest.raises(ValidationError, match="serves UK01 already"):
        route_switch_create(legal_entity=entity, to_connection=firm.legacy, actor=None)
    crm = make_connection(name="CRM", role="crm", vendor="salesforce")
    with pytest.raises(ValidationError, match="no ERP connection"):
        route_switch_create(legal_entity=entity, to_connection=crm, actor=None)
    later = timezone.now() + timedelta(days=1)
    route_switch_create(legal_entity=entity, to_connection=firm.new, effective_at=later, actor=None)
    with pytest.raises(ValidationError, match="already waits"):
        route_switch_create(legal_entity=entity, to_connection=firm.new, actor=None)


def test_a_switch_for_later_leaves_the_route_until_its_time() -> None:
    firm = _firm()
    later = timezone.now() + timedelta(hours=2)
    switch = route_switch_create(
        legal_entity=firm.project.legal_entity,
        to_connection=firm.new,
        effective_at=later,
        actor=None,
    )
    assert switch.applied_at is None
    billing_run()  # applies the switches that are due: none yet
    invoice = Invoice.objects.get()
    assert [r.connection for r in _rows(invoice)] == [firm.legacy]
    assert not RoutingRule.objects.filter(legal_entity=firm.project.legal_entity).exists()
    assert route_switches_apply_due(now=later + timedelta(seconds=1)) == 1
    assert RoutingRule.objects.get(legal_entity=firm.project.legal_entity).connection == firm.new
    assert route_switches_apply_due(now=later + timedelta(seconds=2)) == 0


# --- In-flight work finishes where it started ---------------------------------------------------


def test_queued_invoices_stay_on_the_legacy_erp_and_new_time_goes_to_the_new_one() -> None:
    firm = _firm()
    billing_run()
    before = Invoice.objects.get()
    route_switch_create(legal_entity=firm.project.legal_entity, to_connection=firm.new, actor=None)
    fresh = approved_time(firm.project, days=(4, 5), hours="6.00")
    report = billing_run()
    assert report.billed == 2
    after = Invoice.objects.exclude(pk=before.pk).get()
    assert [r.connection for r in _rows(before)] == [firm.legacy]  # untouched
    assert [r.connection for r in _rows(after)] == [firm.new]
    assert _entries_of(after) == {e.pk for e in fresh}
    assert not _entries_of(before) & _entries_of(after)
    flights = route_switch_in_flight(list(RouteSwitch.objects.all()))
    (side,) = flights.values()
    assert (side["old"].invoices, side["new"].invoices) == (1, 1)
    # Delivered on the legacy side: it has drained.
    OutboxMessage.objects.filter(connection=firm.legacy).update(state="done")
    (side,) = route_switch_in_flight(list(RouteSwitch.objects.all())).values()
    assert (side["old"].total, side["new"].invoices) == (0, 1)


def test_an_unsent_draft_of_the_legacy_erp_is_not_extended_after_the_switch() -> None:
    """A contract that adds to its open draft: the draft queued for the legacy ERP keeps its
    lines and its row; the time billed after the switch starts a draft for the new ERP."""
    firm = _firm(add_to_open_draft=True)
    billing_run()
    draft = Invoice.objects.get()
    held = _entries_of(draft)
    (row,) = _rows(draft)
    route_switch_create(legal_entity=firm.project.legal_entity, to_connection=firm.new, actor=None)
    fresh = approved_time(firm.project, days=(6,), hours="4.00")
    report = billing_run()
    assert report.drafts_extended == 0
    assert _entries_of(draft) == held
    assert _rows(draft) == [row]
    assert row.connection == firm.legacy
    other = Invoice.objects.exclude(pk=draft.pk).get()
    assert _entries_of(other) == {fresh[0].pk}
    assert [r.connection for r in _rows(other)] == [firm.new]


def test_the_open_draft_is_still_extended_when_no_switch_moved_it() -> None:
    firm = _firm(add_to_open_draft=True)
    billing_run()
    approved_time(firm.project, days=(6,), hours="4.00")
    assert billing_run().drafts_extended == 1
    assert Invoice.objects.count() == 1


def test_a_draft_its_mapping_could_not_render_is_sent_to_the_erp_it_was_made_for() -> None:
    """A draft made before the switch with no outbox row yet (its mapping refused it) is
    rendered again by the next run for the legacy ERP, where it started."""
    firm = _firm()
    billing_run()
    draft = Invoice.objects.get()
    OutboxMessage.objects.all().delete()  # as if the legacy mapping had refused to render it
    switch = route_switch_create(
        legal_entity=firm.project.legal_entity, to_connection=firm.new, actor=None
    )
    assert draft.created_at < switch.effective_at
    billing_run()
    assert [r.connection for r in _rows(draft)] == [firm.legacy]


def test_an_invoice_made_after_the_switch_is_rendered_again_for_the_new_erp() -> None:
    firm = _firm()
    route_switch_create(legal_entity=firm.project.legal_entity, to_connection=firm.new, actor=None)
    billing_run()
    draft = Invoice.objects.get()
    OutboxMessage.objects.all().delete()
    billing_run()
    assert [r.connection for r in _rows(draft)] == [firm.new]


# --- Reconciliation: each side its own postings -------------------------------------------------


def test_each_erp_reconciles_the_invoices_made_while_it_served_the_entity() -> None:
    firm = _firm()
    billing_run()
    old = Invoice.objects.get()
    route_switch_create(legal_entity=firm.project.legal_entity, to_connection=firm.new, actor=None)
    approved_time(firm.project, days=(4,), hours="6.00")
    billing_run()
    new = Invoice.objects.exclude(pk=old.pk).get()
    # Both invoices disagree with their lines: each ERP's run finds its own, and only it.
    Invoice.objects.filter(pk__in=[old.pk, new.pk]).update(
        subtotal=Decimal("1.00"), tax_total=0, total=Decimal("1.00"), amount_due=Decimal("1.00")
    )
    legacy_run = reconcile_connection(connection_id=firm.legacy.pk)
    new_run = reconcile_connection(connection_id=firm.new.pk)
    assert legacy_run is not None
    assert new_run is not None
    mismatched = "invoice_mismatch"
    assert {g.invoice_id for g in legacy_run.gaps.filter(kind=mismatched)} == {old.pk}
    assert {g.invoice_id for g in new_run.gaps.filter(kind=mismatched)} == {new.pk}


# --- The page -------------------------------------------------------------------------------------


def test_an_admin_switches_an_entity_on_the_routing_page_and_sees_the_work_in_flight() -> None:
    firm = _firm()
    billing_run()
    client = Client()
    client.force_login(UserFactory.create(username="ada", role=INTEGRATION_ADMIN))
    answer = client.post(
        "/config/rules/erp-routing/switch/",
        {
            "legal_entity": str(firm.project.legal_entity_id),
            "to_connection": str(firm.new.pk),
            "note": "Go-live",
        },
        follow=True,
    )
    page = answer.content.decode()
    assert answer.status_code == 200
    assert "UK01 moves from Concord Legacy ERP to Concord ERP now" in page
    switch = RouteSwitch.objects.get()
    assert f'id="route-switch-{switch.pk}"' in page
    row = page.split(f'id="route-switch-{switch.pk}"')[1].split("</tr>")[0]
    assert "1 invoice, 0 runs" in row  # the legacy draft still queued
    refused = client.post(
        "/config/rules/erp-routing/switch/",
        {"legal_entity": str(firm.project.legal_entity_id), "to_connection": str(firm.new.pk)},
    )
    assert refused.status_code == 400
    assert "serves UK01 already" in refused.content.decode()


def test_only_an_integration_admin_may_switch() -> None:
    firm = _firm()
    client = Client()
    client.force_login(UserFactory.create(username="fin", role=FINANCE))
    answer = client.post(
        "/config/rules/erp-routing/switch/",
        {"legal_entity": str(firm.project.legal_entity_id), "to_connection": str(firm.new.pk)},
    )
    assert answer.status_code == 403
    assert not RouteSwitch.objects.exists()


def test_a_switch_for_later_shows_as_waiting_on_the_page() -> None:
    firm = _firm()
    later = timezone.now() + timedelta(days=3)
    switch = route_switch_create(
        legal_entity=firm.project.legal_entity,
        to_connection=firm.new,
        effective_at=later,
        note="Cut-over weekend",
        actor=None,
    )
    client = Client()
    client.force_login(UserFactory.create(username="ada", role=INTEGRATION_ADMIN))
    page = client.get("/config/rules/erp-routing/").content.decode()
    row = page.split(f'id="route-switch-{switch.pk}"')[1].split("</tr>")[0]
    assert "waiting" in row
    assert "Cut-over weekend" in row
    assert "drained" in row  # nothing billed yet on the legacy side
