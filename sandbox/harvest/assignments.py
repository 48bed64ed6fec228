"""Harvest task and user assignments: which tasks and people belong to a project.

Served nested (``/projects/{id}/task_assignments``) and as global lists. A task or person is
assigned to a project once; the pair cannot change afterwards (the spec's update bodies have
neither field).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store import Row
from .schema import SYSTEM, Invalid, Kind

if TYPE_CHECKING:
    from .base import HarvestBase


def _validate(h: HarvestBase, kind: str, data: dict[str, Any], existing: Row | None) -> None:
    h.need("projects", data["project_id"], "Project")
    other_kind, index = ("tasks", "pt") if kind == "task_assignments" else ("users", "pu")
    other_key = data["task_id" if kind == "task_assignments" else "user_id"]
    h.need(other_kind, other_key, other_kind[:-1].capitalize())
    if (
        existing is None
        and h.store.table(SYSTEM, kind).index_get(index, (data["project_id"], other_key))
        is not None
    ):
        h.store.stats.of(SYSTEM, kind).duplicates_detected += 1
        raise Invalid(
            f"{other_kind[:-1].capitalize()} has already been assigned to this project",
            "duplicate",
        )


def _render(h: HarvestBase, d: dict[str, Any], other: str) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if not k.endswith("_id")}
    out["project"] = h.project_ref(d["project_id"])
    out[other] = h.ref(f"{other}s", d[f"{other}_id"], *(("name",) if other == "task" else ()))
    return out


TASK_ASSIGNMENTS = Kind(
    "task_assignments",
    {
        "project_id": "int",
        "task_id": "int",
        "is_active": "bool",
        "billable": "bool",
        "hourly_rate": "float",
        "budget": "float",
    },
    ("project_id", "task_id"),
    {"is_active": True, "billable": None, "hourly_rate": None, "budget": None},
    ("project_id", "is_active"),
    create_only=("project_id", "task_id"),  # updateTaskAssignment
    validate=lambda h, data, existing, changes: _validate(h, "task_assignments", data, existing),
    index_keys=lambda data: {"pt": (data["project_id"], data["task_id"])},
    render=lambda h, d: _render(h, d, "task"),
)
USER_ASSIGNMENTS = Kind(
    "user_assignments",
    {
        "project_id": "int",
        "user_id": "int",
        "is_active": "bool",
        "is_project_manager": "bool",
        "use_default_rates": "bool",
        "hourly_rate": "float",
        "budget": "float",
    },
    ("project_id", "user_id"),
    {
        "is_active": True,
        "is_project_manager": False,
        "use_default_rates": True,
        "hourly_rate": None,
        "budget": None,
    },
    ("project_id", "user_id", "is_active"),
    create_only=("project_id", "user_id"),  # updateUserAssignment
    validate=lambda h, data, existing, changes: _validate(h, "user_assignments", data, existing),
    index_keys=lambda data: {"pu": (data["project_id"], data["user_id"])},
    render=lambda h, d: _render(h, d, "user"),
)
