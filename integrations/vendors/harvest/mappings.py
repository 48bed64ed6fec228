"""Harvest's default mappings and value maps (published for a new connection by
`mapping_defaults_install`; admins edit them as drafts from then on).

- Foreign keys arrive as Harvest's id in ``<relation>__external_id``; the upsert resolves them.
  Outbound, Harvest wants them as integers (``project_id``, ``user_id``, ``client_id``).
- A client's address is the ERP's: left out, so routine syncs raise no ownership conflicts.
- Harvest users carry no currency: ``cost_currency`` defaults to USD, the account currency of
  the sandbox; edit the draft for an account in another currency. A user one of whose roles is
  a legal entity's code (``UK01``: the firm tags its people by company) is costed in that
  entity's base currency instead (integrations/sync/tenancy.py).
- A user without a cost rate is not stored with a silent 0: ``cost_rate`` has no default, so
  the record is refused by validation and PMO gets a case naming the users (fix the cost rate
  in Harvest: its next change is read).
- A project provisioning creates is billable; its ``bill_by`` follows its contract's billing
  model (value map ``harvest_bill_by``, keyed by the canonical value: a fixed fee bills no
  hours); its notes name the opportunity, the legal entity and the ERP's ids.
- Rate cards are the sandbox's ``x_rate_cards`` extension: the firm's default bill rate per
  role and currency (no contract). Harvest keeps bill rates in the PSA (people, projects,
  tasks), so the PSA is the owner of the firm's default rate card (migration
  0015_reference_data: ``ratecard`` owned by the PSA, its ``contract`` field by the CRM, whose
  negotiated contract rates are commercial terms). ``starts_on``/``ends_on`` are not kept: the
  canonical rate card holds the rate in force.
- Status back-sync (integrations/workflows/back_sync.py) writes, and never polls: the ERP's
  invoice mirrored as a Harvest invoice (``invoices``, canonical ``psa_invoice``: one line per
  billing event), each ERP payment on it (``invoice_payments``, ``psa_payment``), and a time
  entry's ``is_billed`` (a sandbox extension: read-only in Harvest, see sandbox/README.md).
"""

from __future__ import annotations

from integrations.vendors.spec import F, MappingDefault, ValueMapDefault

VALUE_MAPS: tuple[ValueMapDefault, ...] = (
    ValueMapDefault(
        "harvest_approval",
        "Harvest approval_status -> canonical approval state",
        {
            "unsubmitted": "submitted",
            "submitted": "submitted",
            "approved": "approved",
            "rejected": "rejected",
        },
    ),
    ValueMapDefault(
        "harvest_bill_by",
        "Canonical contract billing model -> Harvest project bill_by (keyed by the canonical "
        "value: time and materials and retainers bill people's hours, fixed fee bills none)",
        {"tm": "People", "retainer": "People", "fixed_fee": "none"},
        default="People",
    ),
    ValueMapDefault(
        "harvest_project_active",
        "Harvest project is_active -> canonical project status",
        {"true": "active", "false": "closed"},
    ),
    ValueMapDefault(
        "harvest_milestone_status",
        "Harvest milestone status (sandbox extension x_milestones) -> canonical milestone status",
        {"open": "planned", "complete": "complete", "invoiced": "invoiced"},
    ),
    # Project provisioning (integrations/workflows/provisioning.py) reads it as the firm's
    # configuration, edited by integration admins like any value map.
    ValueMapDefault(
        "provisioning_milestone_plan",
        "A fixed-fee contract's milestones (name -> share of the contract's value in per cent "
        "/ due at that per cent of the contract's term); the shares add up to 100",
        {
            "Kick-off": "20/0",
            "Design sign-off": "30/40",
            "Go-live": "30/80",
            "Acceptance": "20/100",
        },
    ),
)

MAPPINGS: tuple[MappingDefault, ...] = (
    MappingDefault(
        "time_entries",
        "timeentry",
        "id",
        "updated_at",
        (
            F("date", "spent_date", transform="date", required=True),
            F("hours", "hours", transform="money", required=True, places=2),
            F("approval_state", "approval_status", "in", "value_map", value_map="harvest_approval"),
            F("billable", "billable"),
            F("notes", "notes", default=""),
            F("task", "task.name", "in", default=""),
            F("project__external_id", "project.id", "in", required=True),
            F("project__external_id", "project_id", "out", required=True, vendor_type="int"),
            F("resource__external_id", "user.id", "in", required=True),
            F("resource__external_id", "user_id", "out", vendor_type="int"),
            # Status back-sync marks an entry billed once its ERP invoice is issued (a sandbox
            # extension: Harvest itself sets it only when the entry is imported into one of its
            # own invoices; see integrations/workflows/back_sync.py).
            F("is_billed", "is_billed", "out", vendor_type="bool"),
        ),
    ),
    MappingDefault(
        "projects",
        "project",
        "id",
        "updated_at",
        (
            F("code", "code", required=True),
            F("name", "name", required=True),
            F(
                "status",
                "is_active",
                transform="value_map",
                value_map="harvest_project_active",
                vendor_type="bool",
                # A planned or paused project is still active in Harvest.
                reverse={"planned": "true", "on_hold": "true"},
            ),
            F("budget", "cost_budget", transform="money", places=2, default="0"),
            F("start_date", "starts_on", transform="date"),
            F("end_date", "ends_on", transform="date"),
            F("currency", "client.currency", "in"),
            F("customer__external_id", "client.id", "in", required=True),
            F("customer__external_id", "client_id", "out", vendor_type="int"),
            # A new project (provisioning): how it bills, by its contract's billing model.
            F(
                "billing_model",
                "bill_by",
                "out",
                "value_map",
                value_map="harvest_bill_by",
                keyed_by="canonical",
            ),
            F("billable", "is_billable", "out", "default", default=True),
            F("budget_by", "budget_by", "out", "default", default="project_cost"),
            # The opportunity, legal entity and ERP ids in words (Harvest has no such fields).
            F("notes", "notes", "out"),
        ),
    ),
    MappingDefault(
        "clients",
        "customer",
        "id",
        "updated_at",
        (
            F("name", "name", required=True),
            F("currency", "currency"),
            F("active", "is_active"),
        ),
    ),
    MappingDefault(
        "users",
        "resource",
        "id",
        "updated_at",
        (
            F("name", "first_name", "in", "concat", paths=["first_name", "last_name"], sep=" "),
            F("email", "email", required=True),
            F("role", "roles.0", "in", default=""),
            # No default: a user without a cost rate is refused and shown, never costed at 0.
            F("cost_rate", "cost_rate", transform="money", places=2),
            F("cost_currency", "cost_currency", "in", "default", default="USD"),
            F("active", "is_active"),
        ),
        "Harvest users carry no currency: cost_currency is this connection's account currency "
        "(or the base currency of the legal entity a user's role names).",
        replaces=(F("cost_rate", "cost_rate", transform="money", places=2, default="0"),),
    ),
    MappingDefault(
        "x_rate_cards",
        "ratecard",
        "id",
        "updated_at",
        (
            F("role", "role", required=True),
            F("currency", "currency", required=True),
            F("bill_rate", "hourly_rate", transform="money", required=True, places=2),
        ),
        "The firm's default bill rate per role and currency (sandbox extension x_rate_cards).",
    ),
    MappingDefault(
        "expenses",
        "expense",
        "id",
        "updated_at",
        (
            F("date", "spent_date", transform="date", required=True),
            F("category", "expense_category.name", "in", required=True),
            F("amount", "total_cost", transform="money", required=True, places=2),
            F("currency", "client.currency", "in"),
            F("approval_state", "approval_status", "in", "value_map", value_map="harvest_approval"),
            F("billable", "billable"),
            F("notes", "notes", default=""),
            F("receipt_url", "receipt.url", "in", default=""),
            F("project__external_id", "project.id", "in", required=True),
            F("project__external_id", "project_id", "out", required=True, vendor_type="int"),
            F("resource__external_id", "user.id", "in", required=True),
            F("resource__external_id", "user_id", "out", vendor_type="int"),
        ),
    ),
    # Status back-sync (integrations/workflows/back_sync.py), written, never polled (virtual
    # canonical models: integrations/mapping/canonical.py): the ERP invoice
    # mirrored in Harvest (its number, dates, one line per billed item), and each ERP payment
    # recorded on it, so delivery sees what is invoiced and paid where it works.
    MappingDefault(
        "invoices",
        "psa_invoice",
        "id",
        "updated_at",
        (
            F("customer__external_id", "client.id", "in"),
            F("customer__external_id", "client_id", "out", required=True, vendor_type="int"),
            # Two-way: Harvest's answer reads back through the same rows (never polled).
            F("number", "number", required=True),
            F("currency", "currency"),
            F("issue_date", "issue_date", transform="date"),
            F("due_date", "due_date", transform="date"),
            F("subject", "subject"),
            F("notes", "notes"),
            F("tax_percent", "tax", "out", "money"),
            F("kind", "line_items[].kind", "out", "default", default="Service"),
            F("lines[].project", "line_items[].project_id", "out", vendor_type="int"),
            F("lines[].description", "line_items[].description", "out", required=True),
            F("lines[].quantity", "line_items[].quantity", "out", "money", required=True),
            F("lines[].unit_amount", "line_items[].unit_price", "out", "money", required=True),
            F("lines[].taxed", "line_items[].taxed", "out", vendor_type="bool"),
        ),
        "The ERP invoice mirrored in Harvest by status back-sync (written, never polled).",
    ),
    MappingDefault(
        "invoice_payments",
        "psa_payment",
        "id",
        "updated_at",
        (
            F("invoice__external_id", "invoice_id", "out", required=True, vendor_type="int"),
            F("amount", "amount", transform="money", required=True),
            F("date", "paid_date", transform="date", required=True),
            # Names the ERP's payment: how a retried create finds the one it made.
            F("notes", "notes", required=True),
        ),
        "An ERP payment recorded on the mirrored Harvest invoice by status back-sync "
        "(written, never polled).",
    ),
    # The sandbox's milestone extension (Harvest has none): fixed-fee billing. The PSA owns a
    # milestone's completion; Concord writes back only its status, once the ERP invoice exists
    # (integrations/workflows/milestones.py: an update carries the id and the status alone).
    MappingDefault(
        "x_milestones",
        "milestone",
        "id",
        "updated_at",
        (
            F("name", "name", required=True),
            F("amount", "amount", transform="money", required=True, places=2),
            F("currency", "currency", required=True),
            F("due_date", "due_on", transform="date"),
            F(
                "status",
                "status",
                transform="value_map",
                required=True,
                value_map="harvest_milestone_status",
            ),
            F("completed_at", "completed_at", "in", "datetime"),
            F("project__external_id", "project.id", "in", required=True),
            F("project__external_id", "project_id", "out", vendor_type="int"),
        ),
        "Fixed-fee milestones (sandbox extension x_milestones): open, complete, invoiced. "
        "Project provisioning creates a fixed-fee contract's milestones (outbound: name, "
        "amount, currency, due date, status open, the project's id).",
    ),
    # Project provisioning (integrations/workflows/provisioning.py), written, never polled
    # (a virtual canonical model): the firm's standard tasks assigned to the new project. They
    # are Harvest's default tasks (``is_default``: "added to future projects", each billable by
    # its ``billable_by_default``), kept where the PSA owns them; one row per project, and the
    # connector posts the assignments Harvest does not have yet.
    MappingDefault(
        "task_assignments",
        "project_tasks",
        "id",
        "updated_at",
        (
            F("project__external_id", "project.id", "in"),
            F("project__external_id", "project_id", "out", required=True, vendor_type="int"),
            # Each assignment made active (Harvest's answer reads back through the same row).
            F("active", "is_active", default=True),
        ),
        "The firm's standard tasks (Harvest's active default tasks) assigned to a provisioned "
        "project (written, never polled).",
    ),
    # Project provisioning, written, never polled (a virtual canonical model; the canonical
    # Assignment is the record): the opportunity's delivery lead (Harvest's project manager)
    # and team staffed on the new project.
    MappingDefault(
        "user_assignments",
        "psa_user_assignment",
        "id",
        "updated_at",
        (
            F("project__external_id", "project.id", "in"),
            F("project__external_id", "project_id", "out", required=True, vendor_type="int"),
            F("resource__external_id", "user.id", "in"),
            F("resource__external_id", "user_id", "out", required=True, vendor_type="int"),
            F("project_manager", "is_project_manager", vendor_type="bool", default=False),
            F("active", "is_active", default=True),
        ),
        "The opportunity's delivery lead (project manager) and team staffed on a provisioned "
        "project (written, never polled).",
    ),
)
