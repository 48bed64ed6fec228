"""Throughput of `map_inbound`: ``python -m integrations.mapping.bench [--records N]``.

Maps Harvest time entries (the object polled in bulk, shaped like the sandbox's: nested user,
project, task and assignments, ~40 keys) through the default published mapping, in one process,
no database. Prints one JSON line, ``{"name": "map_inbound_records_per_s", "value": ...,
"unit": "records/s"}``; per-object figures go to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

from integrations.mapping.apply import CompiledMapping, compile_mapping, map_inbound
from integrations.mapping.defaults import DEFAULT_MAPPINGS, VALUE_MAPS, MappingDefault
from integrations.mapping.transforms import ValueMapTable

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "integrations" / "mapping" / "fixtures"

TIME_ENTRY: dict[str, Any] = {
    "id": 1000999,
    "spent_date": "2026-10-15",
    "user": {"id": 1000009, "name": "Isla Ivanova"},
    "client": {"id": 1000011, "name": "Crown Health Ltd", "currency": "GBP"},
    "project": {"id": 1000011, "name": "Crown Redesign"},
    "task": {"id": 1000002, "name": "Project Management"},
    "user_assignment": {"id": 1000039, "is_active": True, "is_project_manager": False},
    "task_assignment": {"id": 1000057, "is_active": True, "billable": True},
    "external_reference": None,
    "invoice": None,
    "hours": 8.0,
    "hours_without_timer": 8.0,
    "rounded_hours": 8.0,
    "notes": "Build (PUK-0012)",
    "is_locked": True,
    "locked_reason": "Item Approved and Locked for this Time Period",
    "is_closed": True,
    "approval_status": "approved",
    "is_billed": False,
    "is_running": False,
    "billable": True,
    "budgeted": True,
    "billable_rate": 190.0,
    "cost_rate": 76.0,
    "created_at": "2026-10-22T18:01:26Z",
    "updated_at": "2026-10-22T18:01:26Z",
}


def _compiled(vendor: str, object_type: str) -> CompiledMapping:
    spec: MappingDefault = next(m for m in DEFAULT_MAPPINGS[vendor] if m.object_type == object_type)
    tables = {vm.name: ValueMapTable.build(vm.name, vm.entries, vm.default) for vm in VALUE_MAPS}
    return compile_mapping(
        object_type=spec.object_type,
        canonical_model=spec.canonical_model,
        external_id_path=spec.external_id_path,
        version_path=spec.version_path,
        fields=spec.fields,
        value_maps=tables,
    )


def _payloads(template: dict[str, Any], n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        payload = copy.deepcopy(template)
        if "hours" in payload:
            payload["id"] = 2_000_000 + i
            payload["hours"] = round(0.25 + (i % 32) * 0.25, 2)
            payload["spent_date"] = f"2026-10-{1 + i % 28:02d}"
            payload["updated_at"] = f"2026-10-{1 + i % 28:02d}T18:{i % 60:02d}:{i % 59:02d}Z"
        out.append(payload)
    return out


def _rate(mapping: CompiledMapping, payloads: list[dict[str, Any]], seconds: float) -> float:
    done = 0
    began = time.perf_counter()
    while True:
        for payload in payloads:
            record = map_inbound(mapping, payload)
            if record.errors:
                raise SystemExit(f"benchmark payload does not map: {record.errors}")
        done += len(payloads)
        elapsed = time.perf_counter() - began
        if elapsed >= seconds:
            return done / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integrations.mapping.bench")
    parser.add_argument("--records", type=int, default=10_000, help="distinct payloads")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum run time")
    args = parser.parse_args(argv)

    time_entries = _compiled("harvest", "time_entries")
    rate = _rate(time_entries, _payloads(TIME_ENTRY, args.records), args.seconds)
    for vendor, object_type, fixture in (
        ("xero", "Invoices", "xero_invoice.json"),
        ("salesforce", "Opportunity", "salesforce_opportunity.json"),
    ):
        path = FIXTURES / fixture
        if path.exists():
            payload = json.loads(path.read_text())
            other = _rate(_compiled(vendor, object_type), [payload] * 1000, 1.0)
            print(f"{vendor} {object_type}: {other:,.0f} records/s", file=sys.stderr)
    print(
        json.dumps({"name": "map_inbound_records_per_s", "value": round(rate), "unit": "records/s"})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
