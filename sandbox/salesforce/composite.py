"""sObject Collections (``/composite/sobjects``): up to 200 records created or updated in one
request with ``allOrNone``, and reads of up to 2,000 records by id."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..gate import JSON, refuse
from ..store import Row
from .base import SalesforceBase
from .schema import FIELDS, SYSTEM, SfError

MAX_COLLECTION = 200  # sObject Collections: at most 200 records per create/update request
MAX_COLLECTION_GET = 2000


class Composite(SalesforceBase):
    async def collection_write(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            records = body.get("records")
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise SfError("JSON_PARSER_ERROR", "records must be a list of objects")
            if len(records) > MAX_COLLECTION:
                raise SfError(
                    "EXCEEDED_ID_LIMIT",
                    f"record limit exceeded: at most {MAX_COLLECTION} records per request",
                )
        except SfError as exc:
            return self.fail(request, exc)
        all_or_none = bool(body.get("allOrNone"))
        creating = request.method == "POST"
        planned: list[tuple[str, Row | None, dict[str, Any]] | SfError] = []
        ext_in_batch: set[tuple[str, str]] = set()
        for record in records:
            try:
                obj = str((record.get("attributes") or {}).get("type") or "")
                fields = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
                if creating:
                    if record.get("id") or record.get("Id"):
                        raise SfError(
                            "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"]
                        )
                    data = self.clean(obj, fields, creating=True)
                    ext = data.get("External_Id__c")
                    if ext and (
                        (obj, ext) in ext_in_batch
                        or self.store.table(SYSTEM, obj).index_get("External_Id__c", ext)
                    ):
                        self.store.stats.of(SYSTEM, obj).duplicates_detected += 1
                        raise SfError(
                            "DUPLICATE_VALUE",
                            "duplicate value found: External_Id__c",
                            ["External_Id__c"],
                        )
                    if ext:
                        ext_in_batch.add((obj, ext))
                    planned.append((obj, None, data))
                else:
                    ident = str(record.get("id") or record.get("Id") or "")
                    if not ident:
                        raise SfError(
                            "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"]
                        )
                    row = self._get(obj, ident)
                    planned.append((obj, row, self.clean(obj, fields, creating=False)))
            except SfError as exc:
                planned.append(exc)
        failed = any(isinstance(p, SfError) for p in planned)
        results: list[dict[str, Any]] = []
        for plan in planned:
            if isinstance(plan, SfError):
                refuse(request, "validation")
                self.store.stats.refused(SYSTEM, "composite", 200, plan.code.lower())
                results.append(
                    {
                        "success": False,
                        "errors": [
                            {
                                "statusCode": plan.code,
                                "message": plan.message,
                                "fields": plan.fields,
                            }
                        ],
                    }
                )
            elif failed and all_or_none:
                results.append(
                    {
                        "id": plan[1].key if plan[1] else None,
                        "success": False,
                        "errors": [
                            {
                                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                "message": "Record rolled back because not all records were valid "
                                "and the request was using AllOrNone header",
                                "fields": [],
                            }
                        ],
                    }
                )
            else:
                obj, target, data = plan
                try:
                    if target is None:
                        target = self.insert(obj, data)
                    else:
                        self.update(obj, target, data)
                except SfError as exc:
                    results.append(
                        {
                            "success": False,
                            "errors": [
                                {
                                    "statusCode": exc.code,
                                    "message": exc.message,
                                    "fields": exc.fields,
                                }
                            ],
                        }
                    )
                    continue
                results.append({"id": target.key, "success": True, "errors": []})
        return JSON(results)

    async def collection_read(self, request: Request) -> Response:
        obj = request.path_params["obj"]
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        fields = [f for f in request.query_params.get("fields", "").split(",") if f]
        try:
            if obj not in FIELDS:
                raise SfError("NOT_FOUND", f"sObject type '{obj}' is not supported.", status=404)
            if not ids or not fields:
                raise SfError("MISSING_ARGUMENT", "ids and fields are required")
            if len(ids) > MAX_COLLECTION_GET:
                raise SfError("EXCEEDED_ID_LIMIT", f"at most {MAX_COLLECTION_GET} ids per request")
            unknown = [f for f in fields if f not in FIELDS[obj]]
            if unknown:
                raise SfError(
                    "INVALID_FIELD", f"No such column '{unknown[0]}' on entity '{obj}'", unknown
                )
        except SfError as exc:
            return self.fail(request, exc)
        out: list[dict[str, Any] | None] = []
        for ident in ids:
            row = self.store.get(SYSTEM, obj, self._full_id(ident))
            out.append(None if row is None else self.render(obj, row, fields))
        return JSON(out)
