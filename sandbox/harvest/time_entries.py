"""Harvest time entries: hours (or a running timer) on a project's assigned task, with the
billable and cost rates Harvest derives from the project's ``bill_by``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import Row
from .approval import check_work, count_repeated_reference, derive_approval, reference_keys
from .schema import SYSTEM, Invalid, Kind, iso

if TYPE_CHECKING:
    from .base import HarvestBase


def _validate(
    h: HarvestBase, data: dict[str, Any], existing: Row | None, changes: dict[str, Any]
) -> None:
    check_work(h, "time_entries", data, existing, changes)
    if "project_id" in changes or "task_id" in changes:
        assignment = h.store.table(SYSTEM, "task_assignments").index_get(
            "pt", (data["project_id"], data["task_id"])
        )
        if assignment is None:
            raise Invalid("Task is not assigned to this project", "unassigned_task")
    if data.get("hours") is not None and not 0 <= data["hours"] <= 24:
        raise Invalid("Hours must be between 0 and 24")
    count_repeated_reference(h, "time_entries", data, existing, changes)


def _derive(h: HarvestBase, data: dict[str, Any], changes: dict[str, Any]) -> None:
    if "hours" in changes or "ended_time" in changes or "is_running" not in data:
        running = data.get("hours") is None and not data.get("ended_time")
        data["is_running"] = running
        data["timer_started_at"] = iso(h.store.clock.now()) if running else None
        if data.get("hours") is None:
            data["hours"] = 0.0
    derive_approval(data)
    if {"project_id", "task_id", "user_id", "billable"} & set(changes):
        data["billable"], data["billable_rate"], data["cost_rate"] = _rates(h, data)


def _rates(h: HarvestBase, data: dict[str, Any]) -> tuple[bool, float | None, float | None]:
    project = h.store.get(SYSTEM, "projects", data["project_id"])
    user = h.store.get(SYSTEM, "users", data.get("user_id"))
    ta = h.store.table(SYSTEM, "task_assignments").index_get(
        "pt", (data["project_id"], data["task_id"])
    )
    ua = h.store.table(SYSTEM, "user_assignments").index_get(
        "pu", (data["project_id"], data.get("user_id"))
    )
    billable = bool(
        project and project.data.get("is_billable") and ta and ta.data.get("billable") is not False
    )
    rate: float | None = None
    if billable and project is not None:
        bill_by = project.data.get("bill_by")
        if bill_by == "Project":
            rate = project.data.get("hourly_rate")
        elif bill_by == "Tasks" and ta is not None:
            rate = ta.data.get("hourly_rate")
        elif bill_by == "People":
            if ua is not None and not ua.data.get("use_default_rates"):
                rate = ua.data.get("hourly_rate")
            elif user is not None:
                rate = user.data.get("default_hourly_rate")
    cost = user.data.get("cost_rate") if user else None
    if "billable" in data and data["billable"] is False:
        billable = False
    return billable, rate, cost


def _render(h: HarvestBase, d: dict[str, Any]) -> dict[str, Any]:
    approved = d.get("approval_status") == "approved"
    ta = h.store.table(SYSTEM, "task_assignments").index_get("pt", (d["project_id"], d["task_id"]))
    ua = h.store.table(SYSTEM, "user_assignments").index_get(
        "pu", (d["project_id"], d.get("user_id"))
    )
    project = h.store.get(SYSTEM, "projects", d["project_id"])
    locked_reason = None
    if approved:
        locked_reason = "Item Approved and Locked for this Time Period"
    elif d.get("is_billed"):
        locked_reason = "Item Invoiced and Locked for this Time Period"
    elif project is not None and not project.data.get("is_active"):
        locked_reason = "Project is archived"
    hours = d.get("hours") or 0.0
    return {
        "spent_date": d["spent_date"],
        "user": h.ref("users", d.get("user_id")),
        "user_assignment": h.rendered("user_assignments", ua) if ua else None,
        "client": h.client_of(d["project_id"]),
        "project": h.ref("projects", d["project_id"], "name"),
        "task": h.ref("tasks", d["task_id"], "name"),
        "task_assignment": h.rendered("task_assignments", ta) if ta else None,
        "external_reference": d.get("external_reference"),
        "invoice": d.get("invoice"),
        "hours": hours,
        "hours_without_timer": hours,
        "rounded_hours": round(hours * 4) / 4,  # Harvest's default rounding: 15 minutes
        "notes": d.get("notes"),
        "is_locked": locked_reason is not None,
        "locked_reason": locked_reason,
        "is_closed": approved,
        "approval_status": d.get("approval_status"),
        "is_billed": bool(d.get("is_billed")),
        "timer_started_at": d.get("timer_started_at"),
        "started_time": d.get("started_time"),
        "ended_time": d.get("ended_time"),
        "is_running": bool(d.get("is_running")),
        "billable": bool(d.get("billable")),
        "budgeted": True,
        "billable_rate": d.get("billable_rate"),
        "cost_rate": d.get("cost_rate"),
    }


TIME_ENTRIES = Kind(
    "time_entries",
    {
        "user_id": "int",
        "project_id": "int",
        "task_id": "int",
        "spent_date": "date",
        "started_time": "str",
        "ended_time": "str",
        "notes": "str",
        "external_reference": "dict",
        "hours": "float",
        "approval_status": "str",
        "is_billed": "bool",
        "billable": "bool",
    },
    ("project_id", "task_id", "spent_date"),
    {"notes": None, "external_reference": None, "started_time": None, "ended_time": None},
    (
        "user_id",
        "project_id",
        "task_id",
        "client_id",
        "is_billed",
        "is_running",
        "approval_status",
        "is_closed",
    ),
    "spent_date",
    validate=_validate,
    derive=_derive,
    index_keys=reference_keys,
    render=_render,
)
