"""The canonical records: Concord's own copy of each business object shared between systems."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Q
from django.db.models.functions import Upper

from integrations.models.base import CanonicalRecord
from integrations.models.fields import CURRENCY_RE, CurrencyField, money_field


def _currency_check(name: str, field: str = "currency") -> models.CheckConstraint:
    return models.CheckConstraint(
        condition=Q(**{f"{field}__regex": CURRENCY_RE}), name=f"{name}_{field}_iso4217"
    )


class ApprovalState(models.TextChoices):
    SUBMITTED = "submitted", "Submitted"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class LegalEntity(CanonicalRecord):
    """A company of the firm that invoices customers (owned by the ERP)."""

    code = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2")
    base_currency = CurrencyField()
    tax_number = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["code"]
        verbose_name_plural = "legal entities"
        constraints = [_currency_check("legalentity", "base_currency")]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class TaxRate(CanonicalRecord):
    """A tax rate the ERP applies (its code is the ERP's tax type)."""

    code = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=120)
    country = models.CharField(max_length=2)
    rate_percent = models.DecimalField(max_digits=6, decimal_places=3)
    requires_customer_tax_number = models.BooleanField(
        default=False, help_text="E.g. EU reverse charge: the customer's VAT number must be known."
    )
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["country", "code"]
        constraints = [
            models.CheckConstraint(
                condition=Q(rate_percent__gte=0) & Q(rate_percent__lte=100),
                name="taxrate_rate_percent_range",
            )
        ]

    def __str__(self) -> str:
        return f"{self.code} {self.rate_percent}%"


class Customer(CanonicalRecord):
    """A client of the firm: commercial data from the CRM, legal billing profile from the ERP."""

    name = models.CharField(max_length=200)
    legal_entity = models.ForeignKey(
        LegalEntity,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="customers",
        help_text="The firm's company that invoices this customer.",
    )
    country = models.CharField(max_length=2, blank=True)
    tax_number = models.CharField(max_length=64, blank=True)
    billing_email = models.EmailField(blank=True)
    billing_address = models.TextField(blank=True)
    currency = CurrencyField()
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["name"])]
        constraints = [_currency_check("customer")]

    def __str__(self) -> str:
        return self.name


class Contract(CanonicalRecord):
    """Commercial terms agreed in the CRM."""

    class BillingModel(models.TextChoices):
        TIME_AND_MATERIALS = "tm", "Time and materials"
        FIXED_FEE = "fixed_fee", "Fixed fee (milestones)"
        RETAINER = "retainer", "Retainer"

    # How approved time on a contract is billed: by the hour (time and materials, retainer: the
    # billing run invoices it) or by milestone (fixed fee: its time is never invoiced by the
    # hour). The billing run, the finance page and the API read the rule from here.
    HOURLY_MODELS = (BillingModel.TIME_AND_MATERIALS, BillingModel.RETAINER)

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        ENDED = "ended", "Ended"

    number = models.CharField(max_length=64, unique=True)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="contracts")
    legal_entity = models.ForeignKey(
        LegalEntity, on_delete=models.PROTECT, null=True, blank=True, related_name="contracts"
    )
    billing_model = models.CharField(max_length=16, choices=BillingModel.choices)
    currency = CurrencyField()
    total_value = money_field(default=Decimal("0"))
    # None: the CRM's contract names no payment terms (provisioning holds it on sales ops'
    # case, milestone billing on finance's; an invoice of its time is due in the firm's usual
    # DEFAULT_PAYMENT_TERMS_DAYS).
    DEFAULT_PAYMENT_TERMS_DAYS = 30
    payment_terms_days = models.PositiveSmallIntegerField(
        default=DEFAULT_PAYMENT_TERMS_DAYS, null=True, blank=True
    )
    tax_rate = models.ForeignKey(
        TaxRate,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="contracts",
        help_text="The tax profile invoices under this contract use.",
    )
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    # Finance's choice per contract: one running draft a month rather than one per billing run.
    # The billing run adds its lines (time and expenses) to the contract's draft of the same
    # currency, legal entity and month while that draft has not been sent to the ERP yet; a
    # draft already sent is never changed (the run opens a new one).
    # A database default as well: set-based seeding (tests/benchmarks/) inserts contracts by SQL.
    add_to_open_draft = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Bill new approved time and expenses onto this contract's unsent draft "
        "invoice of the same currency, legal entity and month instead of a new invoice.",
    )

    class Meta:
        ordering = ["number"]
        # The case search's number look-up (number__iexact: UPPER(number) = UPPER(term)).
        indexes = [models.Index(Upper("number"), name="contract_number_upper")]
        constraints = [
            _currency_check("contract"),
            models.CheckConstraint(condition=Q(total_value__gte=0), name="contract_value_nonneg"),
            models.CheckConstraint(
                condition=Q(end_date__isnull=True)
                | Q(start_date__isnull=True)
                | Q(end_date__gte=models.F("start_date")),
                name="contract_dates_ordered",
            ),
        ]

    def __str__(self) -> str:
        return self.number


class Project(CanonicalRecord):
    """An engagement delivered in the PSA."""

    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        ACTIVE = "active", "Active"
        ON_HOLD = "on_hold", "On hold"
        CLOSED = "closed", "Closed"

    class Region(models.TextChoices):
        AMERICAS = "americas", "Americas"
        EMEA = "emea", "EMEA"
        APAC = "apac", "APAC"

    code = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="projects")
    contract = models.ForeignKey(
        Contract, on_delete=models.PROTECT, null=True, blank=True, related_name="projects"
    )
    legal_entity = models.ForeignKey(
        LegalEntity, on_delete=models.PROTECT, null=True, blank=True, related_name="projects"
    )
    # Blank until someone knows it: the CRM's opportunity carries a region, a PSA project
    # (Harvest) has none, and PMO sets it in Concord. A default would file every Harvest
    # project under one region and skew the region figures.
    region = models.CharField(max_length=16, choices=Region.choices, blank=True)
    currency = CurrencyField()
    budget = money_field(default=Decimal("0"))
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PLANNED)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)

    class Meta:
        ordering = ["code"]
        indexes = [
            models.Index(fields=["status", "region"]),
            # The case search's code look-up (code__iexact: UPPER(code) = UPPER(term)).
            models.Index(Upper("code"), name="project_code_upper"),
        ]
        constraints = [
            _currency_check("project"),
            models.CheckConstraint(condition=Q(budget__gte=0), name="project_budget_nonneg"),
        ]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class Resource(CanonicalRecord):
    """A worker who delivers (and books time)."""

    name = models.CharField(max_length=200)
    email = models.EmailField(unique=True)
    # A PSA user may have no role (Harvest's account owner often has none); their billable time
    # then waits on a "missing rate" case rather than the worker never reaching Concord.
    role = models.CharField(max_length=64, blank=True)
    cost_rate = money_field()
    cost_currency = CurrencyField()
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            _currency_check("resource", "cost_currency"),
            models.CheckConstraint(condition=Q(cost_rate__gte=0), name="resource_cost_nonneg"),
        ]

    def __str__(self) -> str:
        return self.name


class Assignment(CanonicalRecord):
    """A resource staffed on a project in a role."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="assignments")
    resource = models.ForeignKey(Resource, on_delete=models.PROTECT, related_name="assignments")
    role = models.CharField(max_length=64)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["project", "resource"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "resource"], name="assignment_unique_project_resource"
            )
        ]

    def __str__(self) -> str:
        return f"{self.resource} on {self.project} as {self.role}"


class RateCard(CanonicalRecord):
    """Bill rate of a role in a currency: the firm's default, or one contract's negotiated rate."""

    contract = models.ForeignKey(
        Contract, on_delete=models.CASCADE, null=True, blank=True, related_name="rate_cards"
    )
    role = models.CharField(max_length=64)
    currency = CurrencyField()
    bill_rate = money_field()

    class Meta:
        ordering = ["role", "currency"]
        constraints = [
            _currency_check("ratecard"),
            models.CheckConstraint(condition=Q(bill_rate__gte=0), name="ratecard_rate_nonneg"),
            models.UniqueConstraint(
                fields=["contract", "role", "currency"],
                name="ratecard_unique_contract_role_currency",
            ),
            # NULL contract rows are the firm default; NULLs are distinct in UNIQUE, so the
            # default needs its own constraint.
            models.UniqueConstraint(
                fields=["role", "currency"],
                condition=Q(contract__isnull=True),
                name="ratecard_unique_default_role_currency",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.bill_rate} {self.currency}"


class BillingBasis(models.TextChoices):
    """How a time entry is billed, by its project's contract (Contract.HOURLY_MODELS)."""

    HOURLY = "hourly", "Hourly: the billing run invoices it"
    MILESTONE = "milestone", "Fixed fee: billed by milestone, not by the hour"
    NO_CONTRACT = "no_contract", "No contract: held until the project has one"


def billing_basis() -> models.Case:
    """A time entry's BillingBasis, by its project's contract, as a query expression (annotate
    a TimeEntry query with it)."""
    return models.Case(
        models.When(
            project__contract__billing_model__in=Contract.HOURLY_MODELS,
            then=models.Value(BillingBasis.HOURLY),
        ),
        models.When(project__contract__isnull=False, then=models.Value(BillingBasis.MILESTONE)),
        default=models.Value(BillingBasis.NO_CONTRACT),
        output_field=models.CharField(),
    )


def milestone_billed_projects() -> models.QuerySet[Project, Any]:
    """The ids of the projects whose time is ``BillingBasis.MILESTONE`` (a contract that bills
    no hours), as a subquery: the billing run leaves their time out of what it reads."""
    return (
        Project.objects.filter(contract__isnull=False)
        .exclude(contract__billing_model__in=Contract.HOURLY_MODELS)
        .values("pk")
    )


class TimeEntryQuerySet(models.QuerySet["TimeEntry"]):
    def unbilled(self) -> TimeEntryQuerySet:
        """Approved billable time with no billing event yet: what a billing run considers."""
        return self.filter(
            approval_state=ApprovalState.APPROVED, billable=True, billing_event__isnull=True
        )


class TimeEntry(CanonicalRecord):
    objects = TimeEntryQuerySet.as_manager()

    resource = models.ForeignKey(Resource, on_delete=models.PROTECT, related_name="time_entries")
    # Indexed by (project, date) below, which serves project lookups too.
    project = models.ForeignKey(
        Project, on_delete=models.PROTECT, related_name="time_entries", db_index=False
    )
    task = models.CharField(max_length=120, blank=True)
    date = models.DateField()
    hours = models.DecimalField(max_digits=5, decimal_places=2)
    approval_state = models.CharField(
        max_length=16, choices=ApprovalState.choices, default=ApprovalState.SUBMITTED
    )
    billable = models.BooleanField(default=True)
    notes = models.TextField(blank=True)

    class Meta:
        ordering = ["-date", "id"]
        verbose_name_plural = "time entries"
        indexes = [
            models.Index(fields=["project", "date"]),
            models.Index(fields=["approval_state", "date"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(hours__gt=0) & Q(hours__lte=24), name="timeentry_hours_range"
            )
        ]

    def __str__(self) -> str:
        return f"{self.resource} {self.date} {self.hours}h"


class ExpenseQuerySet(models.QuerySet["Expense"]):
    def unbilled(self) -> ExpenseQuerySet:
        """Approved billable expenses with no billing event yet: what a billing run considers."""
        return self.filter(
            approval_state=ApprovalState.APPROVED, billable=True, billing_event__isnull=True
        )


class Expense(CanonicalRecord):
    objects = ExpenseQuerySet.as_manager()

    resource = models.ForeignKey(Resource, on_delete=models.PROTECT, related_name="expenses")
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="expenses")
    date = models.DateField()
    category = models.CharField(max_length=64)
    amount = money_field()
    currency = CurrencyField()
    receipt_url = models.URLField(blank=True)
    approval_state = models.CharField(
        max_length=16, choices=ApprovalState.choices, default=ApprovalState.SUBMITTED
    )
    billable = models.BooleanField(default=True)
    notes = models.TextField(blank=True)

    class Meta:
        ordering = ["-date", "id"]
        indexes = [
            models.Index(fields=["project", "date"]),
            models.Index(fields=["approval_state", "date"]),
        ]
        constraints = [
            _currency_check("expense"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="expense_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.category} {self.amount} {self.currency}"


class Milestone(CanonicalRecord):
    class Status(models.TextChoices):
        PLANNED = "planned", "Planned"
        COMPLETE = "complete", "Complete"
        INVOICED = "invoiced", "Invoiced"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="milestones")
    name = models.CharField(max_length=200)
    amount = money_field()
    currency = CurrencyField()
    due_date = models.DateField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PLANNED)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["due_date", "id"]
        indexes = [models.Index(fields=["status", "due_date"])]
        constraints = [
            _currency_check("milestone"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="milestone_amount_nonneg"),
        ]

    def __str__(self) -> str:
        return self.name


class Invoice(CanonicalRecord):
    """An invoice in the ERP (Xero ACCREC)."""

    # Concord's reference on the invoices it creates in an ERP ("CONCORD-INV-<id>"): how a
    # retried create finds the one it made (look-up-before-create), and how a poll of the ERP
    # recognises it as Concord's own rather than a new invoice (integrations/sync/upsert.py).
    REFERENCE_PREFIX = "CONCORD-INV-"

    @classmethod
    def own_reference_id(cls, reference: object) -> int | None:
        """The id of the Concord invoice a vendor's reference names, if it names one."""
        if not isinstance(reference, str) or not reference.startswith(cls.REFERENCE_PREFIX):
            return None
        digits = reference[len(cls.REFERENCE_PREFIX) :]
        return int(digits) if digits.isdigit() and len(digits) < 19 else None

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SUBMITTED = "submitted", "Submitted"
        AUTHORISED = "authorised", "Authorised"
        PAID = "paid", "Paid"
        VOIDED = "voided", "Voided"

    legal_entity = models.ForeignKey(LegalEntity, on_delete=models.PROTECT, related_name="invoices")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    contract = models.ForeignKey(
        Contract, on_delete=models.PROTECT, null=True, blank=True, related_name="invoices"
    )
    number = models.CharField(max_length=64, blank=True, help_text="Assigned by the ERP.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    currency = CurrencyField()
    issue_date = models.DateField(null=True, blank=True)
    due_date = models.DateField(null=True, blank=True)
    subtotal = money_field(default=Decimal("0"))
    tax_total = money_field(default=Decimal("0"))
    total = money_field(default=Decimal("0"))
    amount_due = money_field(default=Decimal("0"))
    # The ERP connection Concord made the invoice for, decided when it is made (the billing
    # and milestone workflows; empty for invoices the ERP made). A legal entity switched to
    # another ERP keeps its earlier invoices on the old one (integrations/services/
    # route_switches.py), and each ERP numbers its own: both may issue an INV-00007.
    erp_connection = models.ForeignKey(
        "integrations.Connection",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )

    class Meta:
        ordering = ["-issue_date", "-id"]
        indexes = [
            models.Index(fields=["legal_entity", "status"]),
            # An invoice by its number within its entity, whichever ERP numbered it (the case
            # search, exceptions/selectors.py): the unique constraint below leads with the ERP.
            models.Index(
                fields=["legal_entity", "number"],
                condition=~Q(number=""),
                name="invoice_entity_number",
            ),
        ]
        constraints = [
            _currency_check("invoice"),
            # Numbers are unique within the issuing entity and the ERP that numbered them (one
            # ERP for invoices made before any had a connection); drafts have none yet.
            models.UniqueConstraint(
                fields=["legal_entity", "erp_connection", "number"],
                condition=~Q(number=""),
                nulls_distinct=False,
                name="invoice_unique_entity_number",
            ),
            models.CheckConstraint(
                condition=Q(total=models.F("subtotal") + models.F("tax_total")),
                name="invoice_total_is_subtotal_plus_tax",
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"Draft invoice #{self.pk}"


class BillingEvent(CanonicalRecord):
    """Something billable that becomes an invoice line: approved time, an expense, a milestone."""

    class Source(models.TextChoices):
        TIME = "time", "Time entry"
        EXPENSE = "expense", "Expense"
        MILESTONE = "milestone", "Milestone"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        INVOICED = "invoiced", "Invoiced"
        WAIVED = "waived", "Waived"

    source = models.CharField(max_length=16, choices=Source.choices)
    time_entry = models.OneToOneField(
        TimeEntry, on_delete=models.PROTECT, null=True, blank=True, related_name="billing_event"
    )
    expense = models.OneToOneField(
        Expense, on_delete=models.PROTECT, null=True, blank=True, related_name="billing_event"
    )
    milestone = models.OneToOneField(
        Milestone, on_delete=models.PROTECT, null=True, blank=True, related_name="billing_event"
    )
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="billing_events")
    contract = models.ForeignKey(
        Contract, on_delete=models.PROTECT, null=True, blank=True, related_name="billing_events"
    )
    legal_entity = models.ForeignKey(
        LegalEntity, on_delete=models.PROTECT, related_name="billing_events"
    )
    description = models.CharField(max_length=400)
    quantity = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("1"))
    unit_amount = money_field()
    amount = money_field()
    currency = CurrencyField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    invoice = models.ForeignKey(
        Invoice, on_delete=models.PROTECT, null=True, blank=True, related_name="billing_events"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        # No index names `status`: a posted invoice turns its (up to 50) events from pending to
        # invoiced, and an UPDATE that changes no indexed column, on a page with room, is a HOT
        # update that writes none of the table's eight index entries again (migration 0030
        # leaves that room: fillfactor 60). Nothing looks events up by status alone; they are
        # reached by their entry, invoice or project.
        constraints = [
            _currency_check("billingevent"),
            # Exactly one source record, and the one that `source` names.
            models.CheckConstraint(
                condition=(
                    Q(
                        source="time",
                        time_entry__isnull=False,
                        expense__isnull=True,
                        milestone__isnull=True,
                    )
                    | Q(
                        source="expense",
                        time_entry__isnull=True,
                        expense__isnull=False,
                        milestone__isnull=True,
                    )
                    | Q(
                        source="milestone",
                        time_entry__isnull=True,
                        expense__isnull=True,
                        milestone__isnull=False,
                    )
                ),
                name="billingevent_one_matching_source",
            ),
            models.CheckConstraint(
                condition=Q(status="invoiced", invoice__isnull=False) | ~Q(status="invoiced"),
                name="billingevent_invoiced_has_invoice",
            ),
        ]

    def __str__(self) -> str:
        return self.description


class Payment(CanonicalRecord):
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    date = models.DateField()
    amount = money_field()
    currency = CurrencyField()
    reference = models.CharField(max_length=120, blank=True)

    class Meta:
        ordering = ["-date", "-id"]
        constraints = [
            _currency_check("payment"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency} on {self.date}"


class ExchangeRate(CanonicalRecord):
    """One unit of `base_currency` is worth `rate` units of `quote_currency` on `date`."""

    base_currency = CurrencyField()
    quote_currency = CurrencyField()
    date = models.DateField()
    rate = models.DecimalField(max_digits=18, decimal_places=8)

    class Meta:
        ordering = ["-date", "base_currency", "quote_currency"]
        constraints = [
            _currency_check("exchangerate", "base_currency"),
            _currency_check("exchangerate", "quote_currency"),
            models.UniqueConstraint(
                fields=["base_currency", "quote_currency", "date"],
                name="exchangerate_unique_pair_date",
            ),
            models.CheckConstraint(condition=Q(rate__gt=0), name="exchangerate_rate_positive"),
            models.CheckConstraint(
                condition=~Q(base_currency=models.F("quote_currency")),
                name="exchangerate_distinct_currencies",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.base_currency}/{self.quote_currency} {self.rate} on {self.date}"
