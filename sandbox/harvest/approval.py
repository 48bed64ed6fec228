"""What time entries and expenses share: approval state and the lock it puts on the record,
work only on a known, active project by a known person, and external references.

Harvest's records say ``is_closed`` ("approved via Timesheet Approval"); the sandbox adds
``approval_status`` (``unsubmitted`` | ``submitted`` | ``approved``), settable by PATCH
(Harvest only approves in its web UI), and keeps ``is_closed``/``is_locked``/``locked_reason``
consistent with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import Row
from .schema import SYSTEM, Invalid

if TYPE_CHECKING:
    from .base import HarvestBase

APPROVAL_STATES = ("unsubmitted", "submitted", "approved")
# Approved work is locked in Harvest; only un-approving (an extension) is allowed.
UNLOCKING_FIELDS = frozenset({"approval_status", "is_billed", "external_reference"})


def check_work(
    h: HarvestBase,
    kind: str,
    data: dict[str, Any],
    existing: Row | None,
    changes: dict[str, Any],
) -> None:
    """The rules checked first on every write of a time entry or expense."""
    if (
        existing is not None
        and existing.data.get("approval_status") == "approved"
        and set(changes) - UNLOCKING_FIELDS
    ):
        raise Invalid(
            f"{'Time entry' if kind == 'time_entries' else 'Expense'} is locked: "
            "it has been approved",
            "locked",
        )
    project = h.need("projects", data["project_id"], "Project")
    if data.get("approval_status", "unsubmitted") not in APPROVAL_STATES:
        raise Invalid(f"Approval status must be one of {', '.join(APPROVAL_STATES)}")
    if existing is None and not project.data.get("is_active"):
        raise Invalid("Project is archived: time and expenses cannot be added", "archived_project")
    h.need("users", data.get("user_id"), "User")


def count_repeated_reference(
    h: HarvestBase,
    kind: str,
    data: dict[str, Any],
    existing: Row | None,
    changes: dict[str, Any],
) -> None:
    """Checked last: an ``external_reference.id`` another record has already."""
    ref = data.get("external_reference")
    ref_id = ref.get("id") if isinstance(ref, dict) else None
    if ref_id and "external_reference" in changes:
        other = h.store.table(SYSTEM, kind).index_get("external_reference", str(ref_id))
        if other is not None and other is not existing:
            # Harvest accepts it; the sandbox counts it so tests can prove nothing doubled.
            h.store.stats.of(SYSTEM, kind).duplicates_detected += 1


def reference_keys(data: dict[str, Any]) -> dict[str, Any]:
    """The index entry of a record's ``external_reference`` (an object with an ``id``)."""
    ref = data.get("external_reference")
    if not ref:
        return {}
    ref_id = ref.get("id") if isinstance(ref, dict) else ref
    return {"external_reference": str(ref_id)} if ref_id else {}


def derive_approval(data: dict[str, Any]) -> None:
    data.setdefault("approval_status", "unsubmitted")
    data.setdefault("is_billed", False)
