"""Every Harvest object the sandbox serves, by name, from one module per resource."""

from __future__ import annotations

from .assignments import TASK_ASSIGNMENTS, USER_ASSIGNMENTS
from .clients import CLIENTS, CONTACTS
from .expenses import EXPENSE_CATEGORIES, EXPENSES
from .invoices import INVOICE_PAYMENTS, INVOICES
from .milestones import X_MILESTONES
from .projects import PROJECTS
from .rate_cards import X_RATE_CARDS
from .schema import Kind
from .tasks import TASKS
from .time_entries import TIME_ENTRIES
from .users import ROLES, USERS

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        CLIENTS,
        CONTACTS,
        USERS,
        ROLES,
        TASKS,
        PROJECTS,
        TASK_ASSIGNMENTS,
        USER_ASSIGNMENTS,
        EXPENSE_CATEGORIES,
        TIME_ENTRIES,
        EXPENSES,
        INVOICES,
        INVOICE_PAYMENTS,
        # sandbox extensions
        X_MILESTONES,
        X_RATE_CARDS,
    )
}
# Served only under their parent (``/invoices/{id}/payments``), not at ``/v2/<kind>``.
NESTED_ONLY = frozenset({"invoice_payments"})
