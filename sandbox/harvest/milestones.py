"""``/harvest/v2/x_milestones``: a sandbox extension (Harvest has no milestones) for
fixed-fee billing. Status ``open`` -> ``complete`` (stamped ``completed_at``) -> ``invoiced``;
the currency defaults to the project's client's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import Row
from .schema import SYSTEM, Invalid, Kind, iso

if TYPE_CHECKING:
    from .base import HarvestBase

MILESTONE_STATES = ("open", "complete", "invoiced")


def _validate(
    h: HarvestBase, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
) -> None:
    h.need("projects", data["project_id"], "Project")
    if data.get("status") not in MILESTONE_STATES:
        raise Invalid(f"Status must be one of {', '.join(MILESTONE_STATES)}")


def _derive(h: HarvestBase, data: dict[str, Any], changes: dict[str, Any]) -> None:
    if changes.get("status") == "complete" and not data.get("completed_at"):
        data["completed_at"] = iso(h.store.clock.now())
    data.setdefault("completed_at", None)
    if data.get("currency") is None:
        project = h.store.get(SYSTEM, "projects", data["project_id"])
        client = h.store.get(SYSTEM, "clients", project.data["client_id"]) if project else None
        data["currency"] = client.data.get("currency") if client else None


def _render(h: HarvestBase, d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k != "project_id"}
    out["project"] = h.project_ref(d["project_id"])
    return out


X_MILESTONES = Kind(
    "x_milestones",
    {
        "project_id": "int",
        "name": "str",
        "amount": "float",
        "currency": "str",
        "due_on": "date",
        "status": "str",
        "notes": "str",
        "external_reference": "str",
    },
    ("project_id", "name", "amount"),
    {
        "currency": None,
        "due_on": None,
        "status": "open",
        "notes": None,
        "external_reference": None,
    },
    ("project_id", "status"),
    "due_on",
    validate=_validate,
    derive=_derive,
    render=_render,
)
