"""The case catalogue: every type's queue can apply its fix, and every type reads well."""

from __future__ import annotations

import string
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group

from exceptions.catalogue import CATALOGUE, COMPUTED, QUEUE_ROLES, Totals, plural
from exceptions.forms import FIX_FORMS, LINK_FORMS
from exceptions.models import Queue
from integrations.roles import ROLE_PERMISSIONS

# Every case type raised anywhere in the code today (grep case_type= in integrations/).
RAISED = {
    "vendor_validation",
    "project_link_missing",
    "retries_exhausted",
    "permanent_error",
    "outbound_mapping_error",
    "mapping_error",
    "ownership_conflict",
    "time_on_inactive_project",
    "project_without_legal_entity",
    "project_without_contract",
    "missing_rate",
    "missing_exchange_rate",
    "no_erp_route",
    "vendor_answer_mismatch",
    "erp_record_invalid",
    "crm_record_invalid",
    "psa_record_invalid",
    "inbound_unknown_reference",
    "inbound_record_unreadable",
    "possible_duplicate",
    "poll_stale",
    "provisioning_account_unknown",
    "provisioning_legal_entity_missing",
    "provisioning_contract_missing",
    "provisioning_billing_terms_missing",
    "provisioning_tax_number_missing",
    "provisioning_tax_profile_inactive",
    "provisioning_no_route",
    "reconciliation_posting_mismatch",
    "reconciliation_invoice_mismatch",
    "reconciliation_invoice_missing",
    "reconciliation_closed_project_unbilled",
    "reconciliation_time_unbilled",
    "reconciliation_expenses_unbilled",
    # integrations/workflows/checks.py: expected work that did not happen.
    "expected_time_not_posted",
    "workflow_run_stuck",
    "poll_schedule_not_run",
    "milestone_project_without_contract",
    "milestone_project_without_legal_entity",
    "milestone_contract_terms",
    "milestone_amount_mismatch",
    "milestone_dependency_open",
    "milestone_tax_number_missing",
    # integrations/workflows/back_sync.py: status back-sync.
    "back_sync_contract_not_in_crm",
    "back_sync_client_not_in_psa",
    # integrations/workflows/time_to_erp.py: approved expenses that cannot be billed.
    "expense_on_inactive_project",
    "expense_project_without_legal_entity",
    "expense_project_without_contract",
    "expense_missing_exchange_rate",
    "expense_no_erp_route",
    "expense_tax_treatment",
    # integrations/workflows/change_orders.py: a contract amendment that cannot be propagated.
    "change_order_budget_below_invoiced",
}


def test_the_catalogue_holds_every_case_type_raised() -> None:
    assert set(CATALOGUE) == RAISED


def test_every_queue_is_worked_by_a_role() -> None:
    assert set(QUEUE_ROLES) == set(Queue.values)
    for roles in QUEUE_ROLES.values():
        assert roles
        assert set(roles) <= set(ROLE_PERMISSIONS)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_the_roles_of_a_types_queue_hold_the_permission_its_fix_needs(name: str) -> None:
    kind = CATALOGUE[name]
    app_label, codename = kind.fix_permission.split(".")
    for role in QUEUE_ROLES[kind.queue]:
        # The groups as migrate left them (roles_sync), so the permission must also exist.
        group = Group.objects.get(name=role)
        assert group.permissions.filter(
            content_type__app_label=app_label, codename=codename
        ).exists(), f"{role} cannot {kind.fix_permission}, needed to fix {name}"


def test_a_project_without_legal_entity_goes_to_pmo() -> None:
    # Only PMO may edit projects: Sales ops, where it used to go, could not fix it.
    assert CATALOGUE["project_without_legal_entity"].queue == Queue.PMO


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_template_renders_from_its_subject_keys(name: str) -> None:
    kind = CATALOGUE[name]
    subject = {key: f"<{key}>" for key in kind.subject_keys}
    text = kind.render(totals=Totals(count=2, hours=Decimal("3")), subject=subject)
    named = {field for _, field, _, _ in string.Formatter().parse(kind.template) if field}
    for key in named - COMPUTED:
        assert f"<{key}>" in text
    assert "{" not in text


def test_the_message_carries_count_amount_per_currency_and_hours() -> None:
    kind = CATALOGUE["time_on_inactive_project"]
    subject = {"project_id": 7, "project": "P-7 Apollo", "status": "closed"}
    totals = Totals(
        count=3,
        hours=Decimal("22.5"),
        amounts={"GBP": Decimal("3150"), "EUR": Decimal("80")},
    )
    assert kind.render(totals=totals, subject=subject) == (
        "3 approved time entries (EUR 80.00 + GBP 3,150.00, 22.50 hours) on project P-7 Apollo "
        "cannot be invoiced: the project is closed, so its time cannot be billed."
    )
    one = Totals(count=1, hours=Decimal("7.5"), amounts={"GBP": Decimal("1050")})
    assert kind.render(totals=one, subject=subject).startswith(
        "1 approved time entry (GBP 1,050.00, 7.50 hours) on project"
    )


def test_a_subject_noun_overrides_the_catalogues() -> None:
    kind = CATALOGUE["vendor_validation"]
    subject = {
        "noun": "invoice",
        "about": "customer Umbrella GmbH",
        "vendor": "Xero",
        "complaint": "A tax number is required",
    }
    text = kind.render(totals=Totals(count=2, amounts={"GBP": Decimal("10")}), subject=subject)
    assert text == (
        "2 invoices (GBP 10.00) for customer Umbrella GmbH cannot be sent: "
        "Xero says: A tax number is required"
    )


def test_plural() -> None:
    assert [plural(n) for n in ("time entry", "invoice", "key", "tax")] == [
        "time entries",
        "invoices",
        "keys",
        "taxes",
    ]


def test_every_case_type_has_its_fix_built() -> None:
    """The fix each catalogue entry names is a form of exceptions/forms.py or a link fix."""
    missing = {
        t.fix_form for t in CATALOGUE.values() if t.fix_form not in FIX_FORMS.keys() | LINK_FORMS
    }
    assert not missing
