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
)
