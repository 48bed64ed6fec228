"""One record at a time: ``/sobjects/{type}`` create, ``/{id}`` get and update,
``/External_Id__c/{value}`` upsert."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..gate import JSON
from .base import SalesforceBase
from .schema import FIELDS, SYSTEM, SfError


class SObjects(SalesforceBase):
    async def create(self, request: Request) -> Response:
        obj = request.path_params["obj"]
        try:
            data = self.clean(obj, await self._body(request), creating=True)
            row = self.insert(obj, data)
        except SfError as exc:
            return self.fail(request, exc)
        return JSON({"id": row.key, "success": True, "errors": []}, 201)

    async def one(self, request: Request) -> Response:
        obj = request.path_params["obj"]
        try:
            row = self._get(obj, request.path_params["id"])
            if request.method == "GET":
                fields = [
                    f.strip()
                    for f in request.query_params.get("fields", "").split(",")
                    if f.strip()
                ]
                unknown = [f for f in fields if f not in FIELDS[obj]]
                if unknown:
                    raise SfError(
                        "INVALID_FIELD", f"No such column '{unknown[0]}' on entity '{obj}'", unknown
                    )
                return JSON(self.render(obj, row, fields or None))
            self.update(obj, row, self.clean(obj, await self._body(request), creating=False))
        except SfError as exc:
            return self.fail(request, exc)
        return Response(status_code=204)

    async def upsert(self, request: Request) -> Response:
        obj, field, value = (
            request.path_params["obj"],
            request.path_params["field"],
            request.path_params["value"],
        )
        try:
            if obj not in FIELDS:
                raise SfError("NOT_FOUND", f"sObject type '{obj}' is not supported.", status=404)
            if field != "External_Id__c":
                raise SfError(
                    "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {field}",
                    status=404,
                )
            body = await self._body(request)
            existing = self.store.table(SYSTEM, obj).index_get(field, value)
            if existing is None:
                row = self.insert(obj, self.clean(obj, {**body, field: value}, creating=True))
                return JSON({"id": row.key, "success": True, "errors": [], "created": True}, 201)
            self.update(obj, existing, self.clean(obj, body, creating=False))
            return JSON({"id": existing.key, "success": True, "errors": [], "created": False}, 200)
        except SfError as exc:
            return self.fail(request, exc)
