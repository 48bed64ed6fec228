"""Xero contacts: PUT creates, POST creates or updates (by ``ContactID`` or ``ContactNumber``);
names are unique among active contacts."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..store import Row
from .base import SYSTEM, XeroBase
from .formats import ms_date
from .tenants import Tenant


class Contacts(XeroBase):
    CONTACT_FIELDS = (
        "ContactNumber",
        "AccountNumber",
        "ContactStatus",
        "Name",
        "FirstName",
        "LastName",
        "CompanyNumber",
        "EmailAddress",
        "TaxNumber",
        "AccountsReceivableTaxType",
        "AccountsPayableTaxType",
        "Addresses",
        "Phones",
        "DefaultCurrency",
        "Website",
    )

    def render_contact(self, row: Row, tenant: Tenant | None = None) -> dict[str, Any]:
        d = row.data
        out: dict[str, Any] = {"ContactID": row.key}
        for name in self.CONTACT_FIELDS:
            value = d.get(name)
            if value not in (None, ""):
                out[name] = value
        out.setdefault("ContactStatus", "ACTIVE")
        out.setdefault("Addresses", [])
        out.setdefault("Phones", [])
        out.update(
            BankAccountDetails="",
            IsSupplier=False,
            IsCustomer=bool(d.get("IsCustomer")),
            UpdatedDateUTC=ms_date(row.updated),
            ContactGroups=[],
            HasAttachments=False,
            HasValidationErrors=False,
        )
        return out

    async def list_or_write_contacts(self, request: Request) -> Response:
        if request.method == "GET":
            return self.select(request, "Contacts", self.render_contact)
        return await self.write_contacts(request, None)

    async def one_contact(self, request: Request) -> Response:
        tenant = self.tenant(request)
        key = request.path_params["id"].lower()
        row = self.store.get(SYSTEM, "Contacts", key, tenant.id)
        if row is None:
            row = self.store.table(SYSTEM, "Contacts", tenant.id).index_get(
                "number", request.path_params["id"]
            )
        if request.method == "GET":
            return (
                self.not_found(request)
                if row is None
                else self.envelope("Contacts", [self.render_contact(row)])
            )
        if row is None:
            return self.not_found(request)
        return await self.write_contacts(request, row)

    async def write_contacts(self, request: Request, target: Row | None) -> Response:
        tenant = self.tenant(request)
        items = await self.elements(request, "Contacts")
        if isinstance(items, Response):
            return items
        plans: list[tuple[dict[str, Any], Row | None, list[str]]] = []
        table = self.store.table(SYSTEM, "Contacts", tenant.id)
        names_in_batch: set[str] = set()
        for item in items:
            row = target
            if row is None and request.method == "POST":
                if item.get("ContactID"):
                    row = self.store.get(
                        SYSTEM, "Contacts", str(item["ContactID"]).lower(), tenant.id
                    )
                    if row is None:
                        plans.append((item, None, ["Contact not found"]))
                        continue
                elif item.get("ContactNumber"):
                    row = table.index_get("number", item["ContactNumber"])
            errors = self._contact_errors(item, row, tenant, names_in_batch)
            if item.get("Name"):
                names_in_batch.add(str(item["Name"]).casefold())
            plans.append((item, row, errors))
        return self._commit(
            request, "Contacts", plans, self._apply_contact, self.render_contact, tenant
        )

    def _contact_errors(
        self, item: dict[str, Any], row: Row | None, tenant: Tenant, batch: set[str]
    ) -> list[str]:
        errors: list[str] = []
        name = item.get("Name", row.data.get("Name") if row else None)
        if not name:
            errors.append("The contact name must be specified.")
        elif "Name" in item:
            other = self.store.table(SYSTEM, "Contacts", tenant.id).index_get(
                "name", str(name).casefold()
            )
            if (
                other is not None
                and other is not row
                and other.data.get("ContactStatus", "ACTIVE") == "ACTIVE"
            ) or str(name).casefold() in batch:
                self.store.stats.of(SYSTEM, "Contacts").duplicates_detected += 1
                errors.append(
                    f"The contact name {name} is already assigned to another contact. "
                    "The contact name must be unique across all active contacts."
                )
        for address in item.get("Addresses") or []:
            if not isinstance(address, dict) or address.get("AddressType") not in (
                "POBOX",
                "STREET",
            ):
                errors.append("AddressType must be POBOX or STREET.")
        if item.get("TaxNumber") is not None and len(str(item["TaxNumber"])) > 50:
            errors.append("The TaxNumber must be at most 50 characters long.")
        if item.get("ContactStatus") not in (None, "ACTIVE", "ARCHIVED"):
            errors.append("ContactStatus must be ACTIVE or ARCHIVED.")
        currency = item.get("DefaultCurrency")
        if currency and self.store.get(SYSTEM, "Currencies", currency, tenant.id) is None:
            errors.append(f"Organisation is not subscribed to currency {currency}")
        return errors

    def _apply_contact(self, item: dict[str, Any], row: Row | None, tenant: Tenant) -> Row:
        data = {k: item[k] for k in self.CONTACT_FIELDS if k in item}
        if row is None:
            data.setdefault("ContactStatus", "ACTIVE")
            return self.insert("Contacts", str(uuid.uuid4()), data, tenant.id)
        self.replace("Contacts", row, {**row.data, **data}, tenant.id)
        return row
