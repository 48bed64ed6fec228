"""Harvest tasks (what time is spent on; assigned to projects in assignments.py)."""

from __future__ import annotations

from .schema import Kind

TASKS = Kind(
    "tasks",
    {
        "name": "str",
        "billable_by_default": "bool",
        "default_hourly_rate": "float",
        "is_default": "bool",
        "is_active": "bool",
    },
    ("name",),
    {
        "billable_by_default": True,
        "default_hourly_rate": None,
        "is_default": False,
        "is_active": True,
    },
    ("is_active",),
)
