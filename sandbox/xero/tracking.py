"""Xero tracking categories and their options (Concord's project dimension on invoice lines).

At most two active categories per tenant; names unique within a tenant, option names within a
category.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..store import Row
from .base import SYSTEM, XeroBase
from .tenants import Tenant


class TrackingCategories(XeroBase):
    def render_category(self, row: Row, tenant: Tenant) -> dict[str, Any]:
        options = self.store.table(SYSTEM, "TrackingOptions", tenant.id).rows
        return {
            "TrackingCategoryID": row.key,
            "Name": row.data["Name"],
            "Status": row.data.get("Status", "ACTIVE"),
            "Options": [
                self.render_option(options[o]) for o in row.data["Options"] if o in options
            ],
        }

    @staticmethod
    def render_option(row: Row) -> dict[str, Any]:
        return {
            "TrackingOptionID": row.key,
            "Name": row.data["Name"],
            "Status": row.data.get("Status", "ACTIVE"),
            "TrackingCategoryID": row.data["TrackingCategoryID"],
        }

    async def tracking_categories(self, request: Request) -> Response:
        tenant = self.tenant(request)
        if request.method == "GET":
            include_archived = request.query_params.get("includeArchived") == "true"
            rows = [
                r
                for r in self.store.rows(SYSTEM, "TrackingCategories", tenant.id)
                if include_archived or r.data.get("Status") != "ARCHIVED"
            ]
            return self.envelope(
                "TrackingCategories", [self.render_category(r, tenant) for r in rows]
            )
        try:
            body = await request.json()
        except ValueError:
            return self.bad_request(request, "The request body is not valid JSON")
        name = body.get("Name") if isinstance(body, dict) else None
        if not name:
            return self.bad_request(
                request, "Tracking Category Name must be specified", "validation"
            )
        existing = [
            r
            for r in self.store.rows(SYSTEM, "TrackingCategories", tenant.id)
            if r.data.get("Status", "ACTIVE") == "ACTIVE"
        ]
        if any(r.data["Name"].casefold() == str(name).casefold() for r in existing):
            self.store.stats.of(SYSTEM, "TrackingCategories").duplicates_detected += 1
            return self.bad_request(
                request, "For each specified tracking category, name must be unique.", "duplicate"
            )
        if len(existing) >= 2:
            return self.bad_request(
                request, "You can only have 2 active tracking categories", "validation"
            )
        row = self.store.insert(
            SYSTEM,
            "TrackingCategories",
            str(uuid.uuid4()),
            {"Name": name, "Status": "ACTIVE", "Options": []},
            tenant.id,
        )
        return self.envelope("TrackingCategories", [self.render_category(row, tenant)])

    async def tracking_category(self, request: Request) -> Response:
        tenant = self.tenant(request)
        row = self.store.get(
            SYSTEM, "TrackingCategories", request.path_params["id"].lower(), tenant.id
        )
        if row is None:
            return self.not_found(request)
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return self.bad_request(request, "The request body is not valid JSON")
            if not isinstance(body, dict):
                return self.bad_request(request, "Expected a TrackingCategory object")
            for key in ("Name", "Status"):
                if key in body:
                    row.data[key] = body[key]
            self.store.touch(SYSTEM, "TrackingCategories", row, tenant.id)
        return self.envelope("TrackingCategories", [self.render_category(row, tenant)])

    async def tracking_options(self, request: Request) -> Response:
        tenant = self.tenant(request)
        category = self.store.get(
            SYSTEM, "TrackingCategories", request.path_params["id"].lower(), tenant.id
        )
        if category is None:
            return self.not_found(request)
        items = await self.elements(request, "Options")
        if isinstance(items, Response):
            return items
        options = self.store.table(SYSTEM, "TrackingOptions", tenant.id).rows
        taken = {
            options[o].data["Name"].casefold() for o in category.data["Options"] if o in options
        }
        for item in items:
            name = str(item.get("Name") or "")
            if not name or len(name) > 100:
                return self.bad_request(
                    request, "Tracking option name must be 1 to 100 characters", "validation"
                )
            if name.casefold() in taken:
                self.store.stats.of(SYSTEM, "TrackingOptions").duplicates_detected += 1
                return self.bad_request(
                    request, "For each specified tracking option, name must be unique.", "duplicate"
                )
            taken.add(name.casefold())
        created = [self.add_option(category, str(item["Name"]), tenant.id) for item in items]
        return self.envelope("Options", [self.render_option(r) for r in created])

    def add_option(
        self,
        category: Row,
        name: str,
        tenant_id: str,
        *,
        seeded: bool = False,
        option_id: str | None = None,
    ) -> Row:
        row = self.store.insert(
            SYSTEM,
            "TrackingOptions",
            option_id or str(uuid.uuid4()),
            {"Name": name, "Status": "ACTIVE", "TrackingCategoryID": category.key},
            tenant_id,
            at=category.updated if seeded else None,
            seeded=seeded,
        )
        category.data["Options"].append(row.key)
        if not seeded:
            self.store.touch(SYSTEM, "TrackingCategories", category, tenant_id)
        return row

    async def tracking_option(self, request: Request) -> Response:
        tenant = self.tenant(request)
        option = self.store.get(
            SYSTEM, "TrackingOptions", request.path_params["option"].lower(), tenant.id
        )
        if option is None or option.data["TrackingCategoryID"] != request.path_params["id"].lower():
            return self.not_found(request)
        try:
            body = await request.json()
        except ValueError:
            return self.bad_request(request, "The request body is not valid JSON")
        for key in ("Name", "Status"):
            if isinstance(body, dict) and key in body:
                option.data[key] = body[key]
        self.store.touch(SYSTEM, "TrackingOptions", option, tenant.id)
        return self.envelope("Options", [self.render_option(option)])

    def _tracking(self, tracking: Any, tenant: Tenant) -> dict[str, Any] | None:
        if not isinstance(tracking, dict):
            return None
        options = self.store.table(SYSTEM, "TrackingOptions", tenant.id)
        for category in self.store.rows(SYSTEM, "TrackingCategories", tenant.id):
            if category.data.get("Status", "ACTIVE") != "ACTIVE":
                continue
            wanted_id = str(tracking.get("TrackingCategoryID") or "").lower()
            if (
                wanted_id != category.key
                and str(tracking.get("Name") or "").casefold() != category.data["Name"].casefold()
            ):
                continue
            for option_id in category.data["Options"]:
                option = options.rows.get(option_id)
                if option is None or option.data.get("Status", "ACTIVE") != "ACTIVE":
                    continue
                if option_id == str(tracking.get("TrackingOptionID") or "").lower() or (
                    str(tracking.get("Option") or "").casefold() == option.data["Name"].casefold()
                ):
                    return {
                        "TrackingCategoryID": category.key,
                        "TrackingOptionID": option_id,
                        "Name": category.data["Name"],
                        "Option": option.data["Name"],
                    }
        return None
