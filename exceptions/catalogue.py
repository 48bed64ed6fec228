"""The catalogue of exception case types: for each type, who owns it, how urgent it is, what
makes two failures one root cause, how it reads, and how it is fixed.

Callers (the sync engine, the workflows) decide WHICH type applies and what the case is about
(its subject: ids for the fingerprint, labels for the message); everything else is here, so one
type reads the same and lands in the same queue wherever it is raised.

The message is rendered from the case's CURRENT totals (how many records, hours, amount per
currency) and its subject, again on every join, clear and resolve, so it never shows old figures.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from exceptions.models import ExceptionCase, Queue
from integrations import roles

Priority = ExceptionCase.Priority

# Time to resolve, by priority, from the first sighting (P1 within 4 hours ... P4 two weeks).
SLA_BY_PRIORITY: dict[int, timedelta] = {
    Priority.P1: timedelta(hours=4),
    Priority.P2: timedelta(days=1),
    Priority.P3: timedelta(days=3),
    Priority.P4: timedelta(days=14),
}

# Who works each queue: the portal roles (integrations/roles.py) whose members see its cases and
# apply their fixes. tests/exceptions/test_catalogue.py proves each holds the permission needed.
QUEUE_ROLES: dict[str, tuple[str, ...]] = {
    Queue.FINANCE: (roles.FINANCE,),
    Queue.PMO: (roles.PMO,),
    Queue.SALES_OPS: (roles.SALES_OPS,),
    Queue.INTEGRATION_ADMIN: (roles.INTEGRATION_ADMIN,),
}

# Values every message may use besides the subject's own keys.
COMPUTED = frozenset({"held", "count", "noun", "hours", "amount"})


@dataclass(frozen=True)
class Totals:
    """What a case holds up right now."""

    count: int = 0
    hours: Decimal = Decimal("0")
    amounts: Mapping[str, Decimal] = field(default_factory=dict)

    def amount_text(self) -> str:
        """ "GBP 3,150.00", or "EUR 80.00 + GBP 3,150.00" across currencies; "" for none."""
        return " + ".join(f"{cur} {self.amounts[cur]:,.2f}" for cur in sorted(self.amounts))


def plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "o", "u", ""):
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


@dataclass(frozen=True)
class CaseType:
    name: str
    queue: Queue
    priority: Priority
    # The subject keys that make one root cause; the case type, process and step always count.
    fingerprint: tuple[str, ...]
    # str.format template over the subject's keys and COMPUTED ({held} = "3 approved time
    # entries (GBP 3,150.00, 22.50 hours)").
    template: str
    # What one blocked record is called; a subject's "noun" key overrides it (an outbox row can
    # be an invoice, a customer, a project).
    noun: str
    # The form the queue's owner fixes the cause in (built by the exception-queue pages) and the
    # Django permission that form needs.
    fix_form: str
    fix_permission: str
    # Whether a later success of a held record takes it off the case (and the case closes when
    # none is left). An ownership conflict waits for a person's decision instead.
    auto_close: bool = True
    # The subject keys its root-cause GROUP shares (retry the whole group): by default the
    # fingerprint's keys but the last, the most specific one (a mapping error's reason, an
    # inactive project's id), so the group of a mapping error is every mapping error of its
    # connection and object type, and that of an inactive project every such case.
    group_by: tuple[str, ...] | None = None

    @property
    def sla(self) -> timedelta:
        """The default SLA; the SlaPolicy table (exceptions/models.py) is read first."""
        return SLA_BY_PRIORITY[self.priority]

    @property
    def group_keys(self) -> tuple[str, ...]:
        return self.fingerprint[:-1] if self.group_by is None else self.group_by

    @cached_property
    def subject_keys(self) -> frozenset[str]:
        """The subject keys a case of this type must be given."""
        named = {name for _, name, _, _ in string.Formatter().parse(self.template) if name}
        return frozenset(self.fingerprint) | (frozenset(named) - COMPUTED)

    def render(self, *, totals: Totals, subject: Mapping[str, Any]) -> str:
        singular = str(subject.get("noun") or self.noun)
        noun = singular if totals.count == 1 else plural(singular)
        impact = [totals.amount_text()] if totals.amounts else []
        if totals.hours:
            impact.append(f"{totals.hours:,.2f} hours")
        held = f"{totals.count} {noun}" + (f" ({', '.join(impact)})" if impact else "")
        return self.template.format_map(
            {
                **subject,
                "held": held,
                "count": totals.count,
                "noun": noun,
                "hours": f"{totals.hours:,.2f}",
                "amount": totals.amount_text(),
            }
        )


_SENT = "{held} for {about} cannot be sent: "
_INVOICED = " cannot be invoiced: "
_PROVISIONED = "{held} ({opportunity}) cannot be provisioned: "
_RECONCILED = "Reconciliation of project {project} for {month}: "
_CHECKED_AGAIN = "; the next reconciliation checks again and closes this case once it matches."
_GOES_ON = (
    " Provisioning goes on from this check once it is fixed (retry, or the CRM's next change)."
)
# The billing run's checks, worded alike for approved time and approved expenses (the noun
# tells them apart: "3 approved expenses (GBP 412.50)").
_ON_PROJECT = "{held} on project {project}" + _INVOICED
_NO_LEGAL_ENTITY = _ON_PROJECT + "the project has no legal entity to invoice from."
_NO_CONTRACT = _ON_PROJECT + "the project has no contract, so there are no billing terms."
_NO_EXCHANGE_RATE = (
    "{held} in {currency}" + _INVOICED + "no exchange rate from {currency} to {base} in the "
    "last {days} days."
)
_NO_ERP_ROUTE = (
    "{held} for legal entity {legal_entity}" + _INVOICED + "no ERP connection is routed for "
    "this legal entity."
)
_MILESTONE = (
    "{held} of project {project} for customer {customer} cannot be invoiced (latest: milestone "
    "{milestone}): "
)
_MILESTONE_GOES_ON = (
    " The invoice is created from this check once it is fixed (retry, or the next change of "
    "the milestone, project or contract)."
)


def _milestone(why: str) -> str:
    """A milestone case's message: which milestone cannot be invoiced, why, and how it goes
    on once fixed."""
    return _MILESTONE + why + _MILESTONE_GOES_ON


# The case types the workflows raise by name, spelled once (the workflows' checks and their
# retry handlers use these). Milestone to invoice (integrations/workflows/milestones.py):
MILESTONE_PROJECT_WITHOUT_CONTRACT = "milestone_project_without_contract"
MILESTONE_PROJECT_WITHOUT_LEGAL_ENTITY = "milestone_project_without_legal_entity"
MILESTONE_CONTRACT_TERMS = "milestone_contract_terms"
MILESTONE_AMOUNT_MISMATCH = "milestone_amount_mismatch"
MILESTONE_DEPENDENCY_OPEN = "milestone_dependency_open"
MILESTONE_TAX_NUMBER_MISSING = "milestone_tax_number_missing"
MILESTONE_CASE_TYPES = (
    MILESTONE_PROJECT_WITHOUT_CONTRACT,
    MILESTONE_PROJECT_WITHOUT_LEGAL_ENTITY,
    MILESTONE_CONTRACT_TERMS,
    MILESTONE_AMOUNT_MISMATCH,
    MILESTONE_DEPENDENCY_OPEN,
    MILESTONE_TAX_NUMBER_MISSING,
)
# Approved expenses that cannot be billed (the expense pass of
# integrations/workflows/time_to_erp.py):
EXPENSE_ON_INACTIVE_PROJECT = "expense_on_inactive_project"
EXPENSE_PROJECT_WITHOUT_LEGAL_ENTITY = "expense_project_without_legal_entity"
EXPENSE_PROJECT_WITHOUT_CONTRACT = "expense_project_without_contract"
EXPENSE_MISSING_EXCHANGE_RATE = "expense_missing_exchange_rate"
EXPENSE_NO_ERP_ROUTE = "expense_no_erp_route"
EXPENSE_TAX_TREATMENT = "expense_tax_treatment"
EXPENSE_CASE_TYPES = (
    EXPENSE_ON_INACTIVE_PROJECT,
    EXPENSE_PROJECT_WITHOUT_LEGAL_ENTITY,
    EXPENSE_PROJECT_WITHOUT_CONTRACT,
    EXPENSE_MISSING_EXCHANGE_RATE,
    EXPENSE_NO_ERP_ROUTE,
    EXPENSE_TAX_TREATMENT,
)

CATALOGUE: dict[str, CaseType] = {
    t.name: t
    for t in (
        # --- Outbox rows a vendor refused or never took (integrations/sync/failures.py) --------
        CaseType(
            name="vendor_validation",
            queue=Queue.FINANCE,
            priority=Priority.P2,
            # The same complaint about the same subject (e.g. one customer's missing VAT number).
            fingerprint=("about", "complaint"),
            template=_SENT + "{vendor} says: {complaint}",
            noun="record",
            # What the ERP refuses in an invoice is the customer's billing profile (tax number,
            # address); finance fixes it there and replays.
            fix_form="customer_billing_profile",
            fix_permission="integrations.change_customer",
        ),
        CaseType(
            name="retries_exhausted",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P1,
            fingerprint=("connection_id", "error_kind"),
            template=_SENT + "{vendor} kept failing after {attempts} attempts (last: {error})",
            noun="record",
            fix_form="outbox_replay",
            fix_permission="integrations.change_outboxmessage",  # change = replay
        ),
        CaseType(
            name="permanent_error",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P2,
            fingerprint=("connection_id", "error_kind"),
            template=_SENT + "{vendor} refused the call: {error}",
            noun="record",
            fix_form="connection_settings",
            fix_permission="integrations.change_connection",
        ),
        CaseType(
            # A record the connection's published outbound mapping cannot render (a required
            # vendor field unmapped, a value-map gap): no outbox row is written for it; the
            # workflow renders it again on its next run (integrations/sync/outbound.py).
            name="outbound_mapping_error",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P2,
            fingerprint=("connection_id", "object_type", "reason"),
            template=(
                "{held} for {connection} cannot be rendered by its published {object_type} "
                "mapping: {reason}. Fix the mapping (or the value map); the next run sends them."
            ),
            noun="record",
            fix_form="mapping_edit",
            fix_permission="integrations.change_mappingset",
        ),
        # --- Inbound records (integrations/sync/inbound.py, upsert.py) ----------------------------
        CaseType(
            name="mapping_error",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P3,
            fingerprint=("connection_id", "object_type", "reason"),
            template=(
                "{held} of {object_type} from {connection} cannot be mapped: {reason}. "
                "Fix the mapping (or the value map) and replay the messages."
            ),
            noun="record",
            fix_form="mapping_edit",
            fix_permission="integrations.change_mappingset",
        ),
        CaseType(
            name="ownership_conflict",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P3,
            fingerprint=("model", "record_id", "connection_id", "fields"),
            template=(
                "{connection} tried to change {record}: {changes}. The change was not applied; "
                "the owning system's value stands until someone decides."
            ),
            noun="record",
            fix_form="ownership_decision",
            fix_permission="integrations.change_ownershiprule",
            auto_close=False,
        ),
        # --- Approved time that cannot be billed (integrations/workflows/time_to_erp.py) --------
        CaseType(
            name="time_on_inactive_project",
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("project_id",),
            template=_ON_PROJECT + "the project is {status}, so its time cannot be billed.",
            noun="approved time entry",
            fix_form="project_status",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            # Only PMO may edit projects, so PMO owns the fix (it used to go to Sales ops, who
            # could not make it).
            name="project_without_legal_entity",
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("project_id",),
            template=_NO_LEGAL_ENTITY,
            noun="approved time entry",
            fix_form="project_legal_entity",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            # The fix links the project to its contract (Project.contract): a project edit, so
            # PMO's; Sales ops keeps the contracts themselves.
            name="project_without_contract",
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("project_id",),
            template=_NO_CONTRACT,
            noun="approved time entry",
            fix_form="project_contract",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            # Rate cards are commercial data: Sales ops edits them (Finance only reads them).
            name="missing_rate",
            queue=Queue.SALES_OPS,
            priority=Priority.P3,
            fingerprint=("contract_id", "role", "currency"),
            template=(
                "{held} for the role {role} on contract {contract}" + _INVOICED + "no bill rate "
                "for the role {role} in {currency}."
            ),
            noun="approved time entry",
            fix_form="rate_card",
            fix_permission="integrations.add_ratecard",
        ),
        CaseType(
            name="missing_exchange_rate",
            queue=Queue.FINANCE,
            priority=Priority.P3,
            fingerprint=("currency", "base"),
            template=_NO_EXCHANGE_RATE,
            noun="approved time entry",
            fix_form="exchange_rate",
            fix_permission="integrations.add_exchangerate",
        ),
        CaseType(
            name="no_erp_route",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P3,
            fingerprint=("legal_entity_id",),
            template=_NO_ERP_ROUTE,
            noun="approved time entry",
            fix_form="routing_rule",
            fix_permission="integrations.add_routingrule",
        ),
        # --- A vendor's answer that names another record (integrations/vendors/echo.py) -------
        CaseType(
            name="vendor_answer_mismatch",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P1,
            # One per connection: a misrouted tenant, a proxy or a stand-in answers for all.
            fingerprint=("connection_id",),
            template=(
                "{held} for {about} were not marked done: {answer} An answer counts only when "
                "it names what was sent. Check the connection's address and tenant, then replay."
            ),
            noun="record",
            fix_form="connection_settings",
            fix_permission="integrations.change_connection",
        ),
        # --- Inbound records a system sent that cannot be stored (integrations/sync/inbound.py,
        # polling.py): routed to the people who keep that system's data, one case per object
        # type, fields and problem; the case holds the raw messages (replay by case). ---------
        *(
            CaseType(
                name=name,
                queue=queue,
                priority=Priority.P3,
                fingerprint=("connection_id", "object_type", "fields", "problem"),
                template=(
                    "{held} of {object_type} from {connection} cannot be stored: {problem} "
                    "(latest: {record}). Fix {fields} in {system}: its next change is applied "
                    "when it is read, or replay the messages."
                ),
                noun="record",
                fix_form=fix_form,
                fix_permission=permission,
            )
            for name, queue, fix_form, permission in (
                # The ERP's contacts, invoices, payments: finance keeps billing data.
                (
                    "erp_record_invalid",
                    Queue.FINANCE,
                    "customer_billing_profile",
                    "integrations.change_customer",
                ),
                # The CRM's accounts, opportunities, contracts: sales ops keeps them.
                ("crm_record_invalid", Queue.SALES_OPS, "contract", "integrations.change_contract"),
                # The PSA's projects, time, expenses: PMO keeps delivery data.
                ("psa_record_invalid", Queue.PMO, "project", "integrations.change_project"),
            )
        ),
        CaseType(
            # A record that refers to one Concord has not read yet (a time entry's project):
            # the integration admins see that it is read, then replay.
            name="inbound_unknown_reference",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P3,
            fingerprint=("connection_id", "object_type", "fields"),
            template=(
                "{held} of {object_type} from {connection} cannot be stored: their {fields} is "
                "not known to Concord (latest: {record}: {problem}). Once it has been read from "
                "{system}, replay the messages."
            ),
            noun="record",
            fix_form="inbound_replay",
            fix_permission="integrations.change_inboundmessage",  # change = replay
        ),
        CaseType(
            # A webhook named a record that could not be read (refused, gone at the vendor).
            name="inbound_record_unreadable",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P3,
            fingerprint=("connection_id", "object_type", "problem"),
            template=(
                "{held} of {object_type} from {connection} could not be read from {system}: "
                "{problem} (latest: {record}). Check the connection, then replay the messages."
            ),
            noun="record",
            fix_form="inbound_replay",
            fix_permission="integrations.change_inboundmessage",  # change = replay
        ),
        # --- Polling (integrations/sync/polling.py, poll_stale_check from beat) ----------------
        CaseType(
            # A connection's poll cursors that have not read everything within the SLA (three
            # polling intervals): wrong credentials, an outage, a page that keeps failing.
            # Closes by itself once each of them polls successfully again.
            name="poll_stale",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P2,
            fingerprint=("connection_id",),
            template=(
                "{held} of {connection} not read successfully for more than {sla}: changes "
                "made there are not reaching Concord. The integration admin page shows each "
                "one's last error; fix the connection (credentials, URL) or wait out the outage."
            ),
            noun="polled object",
            fix_form="connection_settings",
            fix_permission="integrations.change_connection",
        ),
        # --- Identity resolution (integrations/sync/identity.py) -----------------------------
        CaseType(
            # A record arriving from one system that a probable match rule (a similar name)
            # says may be one Concord holds from another. The subject shows both side by side
            # (ids, names, tax numbers, systems). Customers are commercial data the CRM owns:
            # Sales ops edits them (Finance may too, for the billing profile), and merging is
            # editing them. Merging resolves the case; waive it when they are two.
            name="possible_duplicate",
            queue=Queue.SALES_OPS,
            priority=Priority.P3,
            fingerprint=("model", "record_id", "match_id"),
            template=(
                "{record} (#{record_id}, new from {connection}) may be the same {model} as "
                "{match} (#{match_id}): {why}. Merge them if they are one; waive this case if "
                "they are two."
            ),
            noun="record",
            fix_form="record_merge",
            fix_permission="integrations.change_customer",
            auto_close=False,
        ),
        # --- Project provisioning (integrations/workflows/provisioning.py): what a closed-won
        # opportunity lacks before its project can be set up. The case holds the run; its retry
        # resumes the run at the check that failed. --------------------------------------------
        CaseType(
            name="provisioning_account_unknown",
            queue=Queue.SALES_OPS,
            priority=Priority.P2,
            fingerprint=("account",),
            template=_PROVISIONED + "its account {account} has not reached Concord from the "
            "CRM, so there is no customer to provision for. Check the account in the CRM."
            + _GOES_ON,
            noun="closed-won opportunity",
            fix_form="contract",
            fix_permission="integrations.change_contract",
        ),
        CaseType(
            name="provisioning_legal_entity_missing",
            queue=Queue.SALES_OPS,
            priority=Priority.P2,
            fingerprint=("customer_id",),
            template=_PROVISIONED + "{why}, so there is no company of the firm to deliver and "
            "invoice it. Set the legal entity on the account or the opportunity in the CRM."
            + _GOES_ON,
            noun="closed-won opportunity",
            fix_form="contract",
            fix_permission="integrations.change_contract",
        ),
        CaseType(
            name="provisioning_contract_missing",
            queue=Queue.SALES_OPS,
            priority=Priority.P2,
            fingerprint=("customer_id", "currency"),
            template=_PROVISIONED + "{why}. Create or activate the contract in the CRM." + _GOES_ON,
            noun="closed-won opportunity",
            fix_form="contract",
            fix_permission="integrations.change_contract",
        ),
        CaseType(
            name="provisioning_billing_terms_missing",
            queue=Queue.SALES_OPS,
            priority=Priority.P2,
            fingerprint=("contract_id", "missing"),
            template=_PROVISIONED + "contract {contract} lacks billing terms: {missing}. Complete "
            "them in the CRM." + _GOES_ON,
            noun="closed-won opportunity",
            fix_form="contract",
            fix_permission="integrations.change_contract",
        ),
        CaseType(
            # The contract's tax profile needs the customer's tax number (EU reverse charge):
            # finance keeps the billing profile; the fix writes it to the ERP, then the run
            # goes on.
            name="provisioning_tax_number_missing",
            queue=Queue.FINANCE,
            priority=Priority.P2,
            fingerprint=("customer_id", "tax_rate"),
            template=_PROVISIONED + "customer {customer} has no tax number, which the tax profile "
            "{tax_rate} of contract {contract} requires on every invoice. Enter the customer's "
            "tax number." + _GOES_ON,
            noun="closed-won opportunity",
            fix_form="customer_billing_profile",
            fix_permission="integrations.change_customer",
        ),
        CaseType(
            # The contract must name another tax profile: a contract edit, so sales ops'.
            name="provisioning_tax_profile_inactive",
            queue=Queue.SALES_OPS,
            priority=Priority.P2,
            fingerprint=("contract_id", "tax_rate"),
            template=_PROVISIONED + "contract {contract} names the tax profile {tax_rate}, which "
            "is no longer active in the ERP. Give the contract an active tax profile." + _GOES_ON,
            noun="closed-won opportunity",
            fix_form="contract",
            fix_permission="integrations.change_contract",
        ),
        CaseType(
            name="provisioning_no_route",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P2,
            fingerprint=("legal_entity_id", "system"),
            template=_PROVISIONED + "no {system} connection serves legal entity {legal_entity}. "
            "Route the legal entity to a connection." + _GOES_ON,
            noun="closed-won opportunity",
            fix_form="routing_rule",
            fix_permission="integrations.add_routingrule",
        ),
        # --- Reference data (integrations/sync/project_links.py) ------------------------------
        CaseType(
            # A PSA project that predates Concord and carries no link to its contract that
            # Concord can follow (its customer has no live contract in its currency, or
            # several). Billing's project_without_contract asks the same once time is billed:
            # a project it names leaves this case. The fix links the contract; the retry then
            # takes the legal entity from it.
            name="project_link_missing",
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("project_id",),
            template=(
                "Project {project} is linked to no contract: {why}. Its time cannot be "
                "invoiced until it is; link it to its contract (its legal entity comes with it)."
            ),
            noun="project",
            fix_form="project_contract",
            fix_permission="integrations.change_project",
        ),
        # --- Reconciliation (integrations/workflows/reconciliation.py): the PSA, Concord's
        # billing and the ERP compared per project and month on a schedule. Each case holds the
        # records of one gap; a later run that no longer finds a record takes it off, so a gap
        # that is fixed (where it lives: the PSA, the ERP, the billing run) closes its case.
        # Retry re-runs the reconciliation of the case's ERP connection now. -----------------
        CaseType(
            name="reconciliation_posting_mismatch",
            queue=Queue.FINANCE,
            priority=Priority.P2,
            fingerprint=("project_id", "period"),
            template=_RECONCILED + "the ERP does not hold what the PSA approved and Concord "
            "billed: {expected} approved, {found} posted to the ERP. {held} differ ({why}). "
            "Correct the side that is wrong (the invoice in the ERP, or the time in the PSA)"
            + _CHECKED_AGAIN,
            noun="billing event",
            fix_form="reconciliation",
            fix_permission="integrations.change_billingevent",
        ),
        CaseType(
            name="reconciliation_invoice_mismatch",
            queue=Queue.FINANCE,
            priority=Priority.P2,
            fingerprint=("invoice_id",),
            template="Reconciliation of invoice {invoice} for {customer} ({month}): its billing "
            "events add up to {expected}, but the invoice's subtotal is {found} (difference "
            "{difference}). A line was added, changed or removed on one side only; correct the "
            "invoice in the ERP or its billing events" + _CHECKED_AGAIN,
            noun="invoice",
            fix_form="reconciliation",
            fix_permission="integrations.change_invoice",
        ),
        CaseType(
            name="reconciliation_invoice_missing",
            queue=Queue.FINANCE,
            priority=Priority.P2,
            fingerprint=("project_id", "period"),
            template=_RECONCILED + "{held} are marked invoiced, but {why}, so this work is not "
            "billed in the ERP. Invoice it again in the ERP, or set the billing events back to "
            "pending for the billing run" + _CHECKED_AGAIN,
            noun="billing event",
            fix_form="reconciliation",
            fix_permission="integrations.change_billingevent",
        ),
        CaseType(
            # The project's status is delivery data: PMO reopens it (the billing run then bills
            # the time) or has the time made non-billable in the PSA.
            name="reconciliation_closed_project_unbilled",
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("project_id", "period"),
            template=_RECONCILED + "the project is closed in the PSA, but {held} of the month "
            "were never billed ({expected} approved, {found} billed). Reopen the project so the "
            "billing run invoices them, or make the time non-billable in the PSA" + _CHECKED_AGAIN,
            noun="approved time entry",
            fix_form="project_status",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            name="reconciliation_time_unbilled",
            queue=Queue.FINANCE,
            priority=Priority.P3,
            fingerprint=("project_id", "period"),
            template=_RECONCILED + "{held} are still not billed more than {sla_days} days "
            "after the work ({expected} approved, {found} billed). The billing run's own cases "
            "say what holds them (a rate, a contract, an exchange rate, a route)" + _CHECKED_AGAIN,
            noun="approved time entry",
            fix_form="reconciliation",
            fix_permission="integrations.change_billingevent",
        ),
        CaseType(
            name="reconciliation_expenses_unbilled",
            queue=Queue.FINANCE,
            priority=Priority.P3,
            fingerprint=("project_id", "period", "currency"),
            template=_RECONCILED + "{held} are approved and billable but not billed more than "
            "{sla_days} days after they were incurred ({expected} approved, {found} billed). "
            "Bill them in the ERP, or make them non-billable in the PSA" + _CHECKED_AGAIN,
            noun="approved expense",
            fix_form="reconciliation",
            fix_permission="integrations.change_billingevent",
        ),
        # --- Expected work that did not happen (integrations/workflows/checks.py, from beat) ---
        # Each is one case per root cause, held records per late item, closed by the next check
        # that no longer finds them.
        CaseType(
            # Approved time past the unbilled SLA (CONCORD_UNBILLED_SLA_DAYS, the
            # reconciliation's) and a day more, still not in the ERP, that no other open case
            # explains (a billing-run, reconciliation or ERP case holding the entry, its
            # billing event or its invoice): nobody has been told. One case per legal entity.
            name="expected_time_not_posted",
            queue=Queue.FINANCE,
            priority=Priority.P2,
            fingerprint=("legal_entity_id",),
            template="{held} for {legal_entity} were approved more than {sla_days} days ago "
            "and are still not in the ERP, and no case says why: neither the billing run nor "
            "the reconciliation holds them. Check that the billing run and the reconciliation "
            "run (Configuration, Schedules) and that an ERP connection serves {legal_entity}; "
            "this case closes by itself once they are posted or another case explains them.",
            noun="approved time entry",
            fix_form="reconciliation",
            fix_permission="integrations.change_billingevent",
        ),
        CaseType(
            # Workflow runs (any process) at one step for longer than
            # CONCORD_RUN_STUCK_AFTER_MINUTES with no open case holding them: their writes
            # never came back delivered, or nothing moved them on. One case per process and step.
            name="workflow_run_stuck",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P2,
            fingerprint=("step_name",),
            template="{held} of {process_words} have been at step \u201c{step_words}\u201d for "
            "more than {threshold} with no case holding them (last: {detail}). Look at the "
            "outbox rows of that step (parked, or never delivered) and retry this case to move "
            "them on; it closes by itself once they are past the step.",
            noun="workflow run",
            fix_form="outbox_replay",
            fix_permission="integrations.change_outboxmessage",
            # Retry the group: every stuck step of the same process.
            group_by=("process_name",),
        ),
        CaseType(
            # Polling schedules (each connection's own row, or poll-all) that beat has not sent
            # for CONCORD_POLL_NOT_RUN_INTERVALS of their intervals: the scheduler, not the
            # connection (poll_stale says which connections' data is late). One case.
            name="poll_schedule_not_run",
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P2,
            fingerprint=("scheduler",),
            template="{held} have not been run by {scheduler} for more than {intervals} of "
            "their intervals, so changes in those systems are not being read. Check that beat "
            "is running (the overview page's health) and the schedules on Configuration, "
            "Schedules; this case closes by itself once each of them runs again.",
            noun="polling schedule",
            fix_form="connection_settings",
            fix_permission="django_celery_beat.change_periodictask",
        ),
        # --- Milestone to invoice (integrations/workflows/milestones.py): what a milestone the
        # PSA marked complete lacks before its ERP invoice can be created. The case holds the
        # milestone's run (the milestone's amount blocked); its retry, or the next change of
        # the milestone, project or contract, resumes the run at the check that failed. -------
        CaseType(
            name=MILESTONE_PROJECT_WITHOUT_CONTRACT,
            queue=Queue.PMO,
            priority=Priority.P2,
            fingerprint=("project_id",),
            template=_milestone(
                "the project is linked to no contract, so there are no terms to invoice it by. "
                "Link the project to its contract."
            ),
            noun="completed milestone",
            fix_form="project_contract",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            name=MILESTONE_PROJECT_WITHOUT_LEGAL_ENTITY,
            queue=Queue.PMO,
            priority=Priority.P2,
            fingerprint=("project_id",),
            template=_milestone(
                "the project has no legal entity to invoice it from. Set the project's legal "
                "entity."
            ),
            noun="completed milestone",
            fix_form="project_legal_entity",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            # Contract terms are the CRM's (sales ops correct them there); finance owns the
            # billing they block and retries it once the corrected contract has arrived. The
            # contract form edits only a contract a system sent invalid, so for this case the
            # page says where to fix it and offers the retry.
            name=MILESTONE_CONTRACT_TERMS,
            queue=Queue.FINANCE,
            priority=Priority.P2,
            fingerprint=("contract_id", "missing"),
            template=_milestone(
                "contract {contract} does not allow it: {missing}. Have the contract corrected "
                "in the CRM."
            ),
            noun="completed milestone",
            fix_form="contract",
            fix_permission="integrations.change_billingevent",
        ),
        CaseType(
            # The milestone disagrees with its contract (currency, or more than the contract's
            # value left to invoice): corrected in the PSA (the milestone) or the CRM (the
            # contract), then retried by finance.
            name=MILESTONE_AMOUNT_MISMATCH,
            queue=Queue.FINANCE,
            priority=Priority.P2,
            fingerprint=("milestone_id",),
            template=_milestone(
                "{why}. Correct the milestone in the PSA or the contract in the CRM."
            ),
            noun="completed milestone",
            fix_form="contract",
            fix_permission="integrations.change_billingevent",
        ),
        CaseType(
            # Milestones are invoiced in their order (due date) within a project: an earlier
            # one still open in the PSA holds a later one back. PMO completes it there (or
            # corrects the due dates); its completion resumes the later milestone's run.
            name=MILESTONE_DEPENDENCY_OPEN,
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("milestone_id",),
            template=_milestone(
                "the earlier {earlier} of the project must be complete first. Complete it in "
                "the PSA, or correct the due dates."
            ),
            noun="completed milestone",
            fix_form="project",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            # The contract's tax profile needs the customer's tax number (EU reverse charge):
            # finance keeps the billing profile; the fix writes it to the ERP, then the run
            # goes on.
            name=MILESTONE_TAX_NUMBER_MISSING,
            queue=Queue.FINANCE,
            priority=Priority.P2,
            fingerprint=("customer_id", "tax_rate"),
            template=_milestone(
                "the customer has no tax number, which the tax profile {tax_rate} of contract "
                "{contract} requires on every invoice. Enter the customer's tax number."
            ),
            noun="completed milestone",
            fix_form="customer_billing_profile",
            fix_permission="integrations.change_customer",
        ),
        # --- Status back-sync (integrations/workflows/back_sync.py) ------------------------------
        CaseType(
            # The contract's record in the CRM is commercial data: sales ops links it (or has
            # the CRM send it), then retries.
            name="back_sync_contract_not_in_crm",
            queue=Queue.SALES_OPS,
            priority=Priority.P3,
            fingerprint=("contract_id",),
            template="Contract {contract} of {customer} has no record in the CRM, so the "
            "billing status of {held} (invoiced and paid in the ERP) cannot be shown to the "
            "account team. Make sure the contract exists in the CRM and is synced to Concord, "
            "then retry.",
            noun="invoice",
            fix_form="reconciliation",
            fix_permission="integrations.change_contract",
        ),
        CaseType(
            # The PSA's client is delivery data: PMO has the customer created in the PSA (or
            # linked to its client), then retries.
            name="back_sync_client_not_in_psa",
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("customer_id",),
            template="Customer {customer} is not a client in {connection}, so {held} issued "
            "in the ERP cannot be shown there with their payments, and their time stays "
            "unbilled in the PSA. Create or link the client in the PSA, then retry.",
            noun="invoice",
            fix_form="reconciliation",
            fix_permission="integrations.change_project",
        ),
        # --- Change orders (integrations/workflows/change_orders.py) ------------------------------
        CaseType(
            # An amendment the CRM sent that cannot be right: its budget is below what is
            # already invoiced on the contract's project. The contract's terms are the CRM's:
            # sales ops has it corrected there (the corrected amendment supersedes the run it
            # holds, and the case closes), or retries once finance has credited the invoices.
            name="change_order_budget_below_invoiced",
            queue=Queue.SALES_OPS,
            priority=Priority.P2,
            fingerprint=("contract_id",),
            template="{held} cannot be propagated to the PSA and the ERP: its budget of "
            "{budget} is below the {invoiced} already invoiced on project {project} for "
            "{customer}. Correct the amendment of contract {contract} in the CRM (its next "
            "version is propagated instead of this one), or retry once the invoices are "
            "credited.",
            noun="contract amendment",
            fix_form="contract",
            fix_permission="integrations.change_contract",
        ),
        # --- Approved expenses that cannot be billed (integrations/workflows/time_to_erp.py, the
        # expense pass of the billing run). Their own types, not the time ones: a case's wording
        # counts one kind of record ("3 approved expenses (GBP 412.50)"), and the time types
        # speak of entries and hours. Same owners and fixes as the time rule they mirror; the
        # retry bills the held expenses again, and billing them closes the case. ---------------
        CaseType(
            name=EXPENSE_ON_INACTIVE_PROJECT,
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("project_id",),
            template=_ON_PROJECT + "the project is {status}, so its expenses cannot be billed.",
            noun="approved expense",
            fix_form="project_status",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            name=EXPENSE_PROJECT_WITHOUT_LEGAL_ENTITY,
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("project_id",),
            template=_NO_LEGAL_ENTITY,
            noun="approved expense",
            fix_form="project_legal_entity",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            name=EXPENSE_PROJECT_WITHOUT_CONTRACT,
            queue=Queue.PMO,
            priority=Priority.P3,
            fingerprint=("project_id",),
            template=_NO_CONTRACT,
            noun="approved expense",
            fix_form="project_contract",
            fix_permission="integrations.change_project",
        ),
        CaseType(
            name=EXPENSE_MISSING_EXCHANGE_RATE,
            queue=Queue.FINANCE,
            priority=Priority.P3,
            fingerprint=("currency", "base"),
            template=_NO_EXCHANGE_RATE,
            noun="approved expense",
            fix_form="exchange_rate",
            fix_permission="integrations.add_exchangerate",
        ),
        CaseType(
            name=EXPENSE_NO_ERP_ROUTE,
            queue=Queue.INTEGRATION_ADMIN,
            priority=Priority.P3,
            fingerprint=("legal_entity_id",),
            template=_NO_ERP_ROUTE,
            noun="approved expense",
            fix_form="routing_rule",
            fix_permission="integrations.add_routingrule",
        ),
        CaseType(
            # The contract's tax profile must be one its legal entity can charge: active, of
            # the entity's country, and, where it needs one (EU reverse charge), with the
            # customer's tax number known. Contract terms are the CRM's and the tax profile the
            # ERP's; finance owns the billing they block and retries once they are corrected.
            name=EXPENSE_TAX_TREATMENT,
            queue=Queue.FINANCE,
            priority=Priority.P3,
            fingerprint=("contract_id", "tax_rate", "why"),
            template=(
                "{held} on contract {contract} for legal entity {legal_entity}"
                + _INVOICED
                + "its tax profile {tax_rate} {why}. Correct the contract's tax profile (or the "
                "customer's tax number), then retry."
            ),
            noun="approved expense",
            fix_form="contract",
            fix_permission="integrations.change_billingevent",
        ),
    )
}

AUTO_CLOSING = frozenset(name for name, t in CATALOGUE.items() if t.auto_close)


def case_type_get(name: str) -> CaseType:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the case catalogue (exceptions/catalogue.py)") from None
