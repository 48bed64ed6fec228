"""Configuration as files: the mappings, value maps, rules and connections of one installation
as one JSON document, exported from a test installation and imported into production.

The document (``"format": "concord-config", "version": 1``) names everything by its natural
key (a connection by its name, a legal entity by its code, a value map by its name, a queue by
its code), never by a database id, and lists everything in a stable order, so two exports of
the same configuration are the same bytes and a file diffs well in review. It holds:

- ``connections``: name, vendor, role, base URL, rate limits, enabled. Never credentials: not
  their values, not their names, not the URLs among them (a token URL is one of the secrets);
- ``value_maps``: every value map, with its entries and default;
- ``mappings``: the published version of each connection's objects, with its rows in order;
- ``ownership_rules``, ``case_routes`` and ``sla_policies`` (exceptions' routing), and
  ``erp_routes`` (which ERP connection serves each legal entity).

Importing is a dry run first (`config_import(dry_run=True)`): the file is checked (every
refusal names its place in the document, ``mappings[2].fields[0].direction``), then compared
with the database, section by section (added; changed, before -> after; removed, or left
alone), then applied through the same audited services the console's pages use inside a
transaction that is rolled back, so the dry run reports what those services would refuse
(the checks a mapping version passes before it is published, a base URL that would take stored
credentials elsewhere) and writes nothing. Applying (`dry_run=False`) needs the hashes the dry
run gave (`sha256` of the document, `diff_sha256` of the changes it listed): what is applied is
exactly the file that was previewed, against the database as it was previewed; a refusal
anywhere leaves everything as it was.

How each section is applied:
- a connection is matched by name: a new one is created without credentials (to be entered on
  its page), an existing one has only its non-secret settings updated (`connection_update`,
  which refuses a change that would send stored credentials to another origin), and one the
  file does not name is left alone; a connection's vendor is never changed by a file;
- a mapping that differs from the published version (its settings, its rows, or a value map
  its rows read) becomes a new draft with the file's content, published through the editor's
  path (`mapping_set_request_publish`: the same checks; under four eyes it waits for another
  admin's approval, and the value maps it carries with it); the value maps a file's mapping
  reads travel with that mapping, the others are written directly; mappings and value maps the
  file does not hold are left alone (a value map may be read by mappings it does not hold);
- rules are created, updated and deleted so the database holds exactly the file's; an SLA
  policy the file does not name is left alone (every priority needs one).

A section the file leaves out is left as it is (a file of mappings alone removes no rule); an
empty list is a section with nothing in it. Row order inside a mapping is not a change (rows
are matched by canonical field and direction); a mapping created from a file keeps the file's
order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from exceptions.catalogue import CATALOGUE
from exceptions.models import CaseRoute, ExceptionCase, SlaPolicy, WorkQueue
from exceptions.routes import (
    case_route_create,
    case_route_delete,
    case_route_update,
    process_choices,
    sla_policy_update,
)
from integrations.mapping.ownership_rules import (
    ownership_rule_create,
    ownership_rule_delete,
    ownership_rule_problems,
    ownership_rule_update,
)
from integrations.mapping.selectors import field_specs
from integrations.mapping.services import (
    Actor,
    mapping_set_create_draft,
    value_map_create,
    value_map_set_entries,
)
from integrations.mapping.versions import (
    four_eyes,
    mapping_draft_replace,
    mapping_set_request_publish,
)
from integrations.models import (
    VENDOR_ROLES,
    AuditEvent,
    Connection,
    ConsoleSettings,
    FieldMapping,
    LegalEntity,
    MappingSet,
    OwnershipRule,
    Project,
    RoutingRule,
    SystemRole,
    ValueMap,
    Vendor,
)
from integrations.services.audit import audit_record
from integrations.services.config_rows import (
    config_row_create,
    config_row_delete,
    config_row_update,
)
from integrations.services.connections import connection_create, connection_update
from integrations.vendors.spec import FieldSpec
from integrations.workflows.errors import ConfigPreviewStale

logger = logging.getLogger(__name__)

FORMAT = "concord-config"
VERSION = 1
# A firm's whole configuration is a few hundred kB (the shipped defaults of one connection of
# each vendor export to about 40 kB); 5 MB leaves room for many connections and large maps.
MAX_BYTES = 5_000_000
# Refusals listed at most, per file: enough to fix a file in one go, not a wall of text.
MAX_PROBLEMS = 50

SECTIONS: tuple[tuple[str, str], ...] = (
    ("connections", "Connections"),
    ("value_maps", "Value maps"),
    ("mappings", "Mappings"),
    ("ownership_rules", "Ownership rules"),
    ("case_routes", "Case routing"),
    ("sla_policies", "SLA per priority"),
    ("erp_routes", "ERP routing"),
)
CONNECTION_FIELDS = (
    "name",
    "vendor",
    "role",
    "base_url",
    "rate_limit_per_minute",
    "max_concurrency",
    "enabled",
)
ROW_FIELDS = ("canonical_field", "vendor_path", "direction", "transform", "options", "required")
MAPPING_SETTINGS = ("canonical_model", "external_id_path", "version_path", "notes")
VALUE_MAP_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def _sorted(value: Any) -> Any:
    """JSON values with every object's keys in order (options and entries as stored are not)."""
    if isinstance(value, Mapping):
        return {str(k): _sorted(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


# -- export -------------------------------------------------------------------------------------


def _row(spec: FieldSpec) -> dict[str, Any]:
    return {
        "canonical_field": spec.canonical_field,
        "vendor_path": spec.vendor_path,
        "direction": spec.direction,
        "transform": spec.transform,
        "options": _sorted(dict(spec.options)),
        "required": spec.required,
    }


def _table(value_map: ValueMap) -> dict[str, Any]:
    return {
        "name": value_map.name,
        "description": value_map.description,
        "default": value_map.default,
        "entries": dict(
            sorted((e.vendor_value, e.canonical_value) for e in value_map.entries.all())
        ),
    }


def config_export() -> dict[str, Any]:
    """The installation's configuration as one document (see the module's docstring). Nine
    queries, whatever the number of rows."""
    # Sorted here, not by the database: two installations may collate text differently.
    connections = sorted(
        ({name: getattr(c, name) for name in CONNECTION_FIELDS} for c in Connection.objects.all()),
        key=lambda d: d["name"],
    )
    value_maps = sorted(
        (_table(vm) for vm in ValueMap.objects.prefetch_related("entries")),
        key=lambda d: d["name"],
    )
    published = (
        MappingSet.objects.filter(status=MappingSet.Status.PUBLISHED)
        .select_related("connection")
        .prefetch_related("fields")
    )
    mappings = sorted(
        (
            {
                "connection": ms.connection.name,
                "object_type": ms.object_type,
                **{name: getattr(ms, name) for name in MAPPING_SETTINGS},
                "fields": [_row(spec) for spec in field_specs(ms.fields.all())],
            }
            for ms in published
        ),
        key=lambda d: (d["connection"], d["object_type"]),
    )
    ownership = sorted(
        (
            {
                "object_type": r.object_type,
                "field": r.field,
                "owner_role": r.owner_role,
                "note": r.note,
            }
            for r in OwnershipRule.objects.all()
        ),
        key=lambda d: (d["object_type"], d["field"]),
    )
    routes = sorted(
        (_route_doc(r) for r in CaseRoute.objects.select_related("legal_entity")),
        key=lambda d: _route_key(d),
    )
    slas = [
        {
            "priority": p.priority,
            "resolve_within_seconds": int(p.resolve_within.total_seconds()),
            "due_soon_within_seconds": int(p.due_soon_within.total_seconds()),
        }
        for p in SlaPolicy.objects.order_by("priority")
    ]
    erp = sorted(
        (
            {
                "legal_entity": r.legal_entity.code if r.legal_entity else None,
                "connection": r.connection.name,
            }
            for r in RoutingRule.objects.filter(role=SystemRole.ERP).select_related(
                "legal_entity", "connection"
            )
        ),
        key=lambda d: d["legal_entity"] or "",
    )
    return {
        "format": FORMAT,
        "version": VERSION,
        "connections": connections,
        "value_maps": value_maps,
        "mappings": mappings,
        "ownership_rules": ownership,
        "case_routes": routes,
        "sla_policies": slas,
        "erp_routes": erp,
    }


def config_document_text(document: Mapping[str, Any]) -> str:
    """The document as a file: indented, keys in the document's own order, UTF-8 text."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def document_sha256(document: Mapping[str, Any]) -> str:
    """The document's hash, over its canonical form (keys sorted, no spaces): the same for a
    file re-indented or with its keys reordered by a tool."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _route_doc(route: CaseRoute) -> dict[str, Any]:
    return {
        "case_type": route.case_type,
        "process": route.process,
        "legal_entity": route.legal_entity.code if route.legal_entity else None,
        "region": route.region,
        "queue": route.queue_id,
        "priority": route.priority,
        "note": route.note,
    }


def _route_key(doc: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (
        str(doc.get("case_type") or ""),
        str(doc.get("process") or ""),
        str(doc.get("legal_entity") or ""),
        str(doc.get("region") or ""),
    )


def _route_label(key: tuple[str, str, str, str]) -> str:
    return " / ".join(v for v in key if v) or "every case"


# -- reading and checking a file ----------------------------------------------------------------


def config_parse(text: str | bytes) -> dict[str, Any]:
    """A file's text as a document, or ValidationError saying what is wrong with it in words
    (not JSON, not a Concord configuration, a version this Concord does not read)."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise ValidationError(f"The file is larger than {MAX_BYTES // 1_000_000} MB.")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValidationError("The file is not UTF-8 text.") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"The file is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from None
    return config_check_header(document)


def config_check_header(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ValidationError("The file must hold one JSON object (a Concord configuration).")
    if document.get("format") != FORMAT:
        raise ValidationError(
            f'format: expected "{FORMAT}", found {json.dumps(document.get("format"))}: this is '
            "not a Concord configuration file."
        )
    if document.get("version") != VERSION:
        raise ValidationError(
            f"version: this Concord reads version {VERSION} of the format, the file is version "
            f"{json.dumps(document.get('version'))}."
        )
    return document


class _Checker:
    """Collects what is wrong with a document, each problem prefixed by its path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def items(self, document: Mapping[str, Any], section: str) -> list[tuple[str, dict[str, Any]]]:
        value = document.get(section, [])
        if not isinstance(value, list):
            self.add(section, "must be a list")
            return []
        found = []
        for index, item in enumerate(value):
            path = f"{section}[{index}]"
            if not isinstance(item, dict):
                self.add(path, "must be an object")
                continue
            found.append((path, item))
        return found

    def keys(
        self,
        path: str,
        item: Mapping[str, Any],
        required: Iterable[str],
        optional: Iterable[str] = (),
    ) -> bool:
        required, optional = tuple(required), tuple(optional)
        ok = True
        for key in required:
            if key not in item:
                self.add(path, f"'{key}' is missing")
                ok = False
        for key in sorted(set(item) - set(required) - set(optional)):
            if key in ("credentials", "credential_keys", "secrets", "token", "password"):
                self.add(
                    f"{path}.{key}",
                    "a configuration file never carries credentials; enter them on the "
                    "connection's page in the console",
                )
            else:
                self.add(f"{path}.{key}", "is not a key of this section (a typo?)")
            ok = False
        return ok

    def text(self, path: str, value: Any, *, blank: bool = True, max_length: int = 0) -> bool:
        if not isinstance(value, str):
            self.add(path, f"must be text, found {json.dumps(value)}")
            return False
        if not blank and not value.strip():
            self.add(path, "cannot be empty")
            return False
        if max_length and len(value) > max_length:
            self.add(path, f"is longer than {max_length} characters")
            return False
        return True

    def number(self, path: str, value: Any, *, minimum: int = 1) -> bool:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.add(
                path, f"must be a whole number of at least {minimum}, found {json.dumps(value)}"
            )
            return False
        return True


def _check_connections(check: _Checker, document: Mapping[str, Any]) -> dict[str, str]:
    """The connections' names and roles the file declares."""
    declared: dict[str, str] = {}
    for path, item in check.items(document, "connections"):
        if not check.keys(path, item, CONNECTION_FIELDS):
            continue
        name = item["name"]
        if not check.text(f"{path}.name", name, blank=False, max_length=120):
            continue
        if name in declared:
            check.add(f"{path}.name", f"'{name}' is in the file twice")
            continue
        vendor = item["vendor"]
        if vendor not in Vendor.values:
            check.add(
                f"{path}.vendor",
                f"unknown vendor {json.dumps(vendor)}; Concord connects to "
                f"{', '.join(Vendor.values)}",
            )
        elif item["role"] != VENDOR_ROLES[vendor]:
            check.add(
                f"{path}.role",
                f"a {vendor} connection plays the {VENDOR_ROLES[vendor]} role, not "
                f"{json.dumps(item['role'])}",
            )
        base_url = item["base_url"]
        if check.text(f"{path}.base_url", base_url, blank=False, max_length=500) and not (
            re.match(r"^https?://", base_url)
        ):
            check.add(f"{path}.base_url", "must be an http(s) URL")
        check.number(f"{path}.rate_limit_per_minute", item["rate_limit_per_minute"])
        check.number(f"{path}.max_concurrency", item["max_concurrency"])
        if not isinstance(item["enabled"], bool):
            check.add(f"{path}.enabled", "must be true or false")
        declared[name] = str(item["role"])
    return declared


def _check_value_maps(check: _Checker, document: Mapping[str, Any]) -> set[str]:
    declared: set[str] = set()
    for path, item in check.items(document, "value_maps"):
        if not check.keys(path, item, ("name", "entries"), ("description", "default")):
            continue
        name = item["name"]
        if not isinstance(name, str) or not VALUE_MAP_NAME.match(name):
            check.add(
                f"{path}.name", "a value map's name is up to 64 letters, digits and underscores"
            )
            continue
        if name in declared:
            check.add(f"{path}.name", f"'{name}' is in the file twice")
        declared.add(name)
        check.text(f"{path}.description", item.get("description", ""), max_length=200)
        check.text(f"{path}.default", item.get("default", ""), max_length=200)
        entries = item["entries"]
        if not isinstance(entries, dict):
            check.add(f"{path}.entries", "must be an object of vendor value -> canonical value")
            continue
        for key, value in entries.items():
            if not key.strip() or len(key) > 200:
                check.add(
                    f"{path}.entries",
                    f"the vendor value {json.dumps(key)} must be 1 to 200 characters",
                )
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                check.add(
                    f"{path}.entries.{key}",
                    "the canonical value must be text of 1 to 200 characters",
                )
    return declared


def _check_mappings(
    check: _Checker, document: Mapping[str, Any], connections: Mapping[str, str], maps: set[str]
) -> None:
    known_connections = set(connections) | set(Connection.objects.values_list("name", flat=True))
    known_maps = maps | set(ValueMap.objects.values_list("name", flat=True))
    seen: set[tuple[str, str]] = set()
    for path, item in check.items(document, "mappings"):
        if not check.keys(
            path,
            item,
            ("connection", "object_type", "canonical_model", "external_id_path", "fields"),
            ("version_path", "notes"),
        ):
            continue
        connection, object_type = item["connection"], item["object_type"]
        if (
            check.text(f"{path}.connection", connection, blank=False)
            and connection not in known_connections
        ):
            check.add(
                f"{path}.connection",
                f"no connection '{connection}' in the file nor in this database",
            )
        if not check.text(f"{path}.object_type", object_type, blank=False, max_length=64):
            continue
        if (connection, object_type) in seen:
            check.add(path, f"{object_type} on {connection} is in the file twice")
        seen.add((connection, object_type))
        check.text(f"{path}.canonical_model", item["canonical_model"], blank=False, max_length=64)
        check.text(
            f"{path}.external_id_path", item["external_id_path"], blank=False, max_length=200
        )
        check.text(f"{path}.version_path", item.get("version_path", ""), max_length=200)
        check.text(f"{path}.notes", item.get("notes", ""))
        rows = item["fields"]
        if not isinstance(rows, list) or not rows:
            check.add(f"{path}.fields", "must be a non-empty list of rows")
            continue
        for index, row in enumerate(rows):
            where = f"{path}.fields[{index}]"
            if not isinstance(row, dict):
                check.add(where, "must be an object")
                continue
            if not check.keys(where, row, ("canonical_field", "vendor_path"), ROW_FIELDS):
                continue
            check.text(
                f"{where}.canonical_field", row["canonical_field"], blank=False, max_length=64
            )
            check.text(f"{where}.vendor_path", row["vendor_path"], blank=False, max_length=500)
            if row.get("direction", "both") not in FieldMapping.Direction.values:
                check.add(
                    f"{where}.direction",
                    f"{json.dumps(row.get('direction'))} is not one of "
                    f"{', '.join(FieldMapping.Direction.values)}",
                )
            if row.get("transform", "copy") not in FieldMapping.Transform.values:
                check.add(
                    f"{where}.transform",
                    f"{json.dumps(row.get('transform'))} is not one of "
                    f"{', '.join(FieldMapping.Transform.values)}",
                )
            options = row.get("options", {})
            if not isinstance(options, dict):
                check.add(f"{where}.options", "must be an object")
            elif row.get("transform") == "value_map":
                name = options.get("value_map")
                if isinstance(name, str) and name and name not in known_maps:
                    check.add(
                        f"{where}.options.value_map",
                        f"value map '{name}' is neither in the file nor in this database",
                    )
            if not isinstance(row.get("required", False), bool):
                check.add(f"{where}.required", "must be true or false")


def _check_rules(
    check: _Checker, document: Mapping[str, Any], connections: Mapping[str, str]
) -> None:
    entities = set(LegalEntity.objects.values_list("code", flat=True))
    queues = set(WorkQueue.objects.values_list("code", flat=True))

    def entity(path: str, code: Any) -> None:
        if code is None:
            return
        if not isinstance(code, str) or code not in entities:
            check.add(
                path,
                f"no legal entity {json.dumps(code)} in this database (legal entities come from "
                "the ERP: sync them first, or leave the rule out)",
            )

    seen: set[Any] = set()
    for path, item in check.items(document, "ownership_rules"):
        if not check.keys(path, item, ("object_type", "owner_role"), ("field", "note")):
            continue
        object_type, field_name = item["object_type"], item.get("field", "")
        if not (
            check.text(f"{path}.object_type", object_type)
            and check.text(f"{path}.field", field_name)
        ):
            continue
        for key, problem in ownership_rule_problems(
            object_type=object_type, field=field_name
        ).items():
            check.add(f"{path}.{key}", problem)
        if item["owner_role"] not in SystemRole.values:
            check.add(
                f"{path}.owner_role",
                f"{json.dumps(item['owner_role'])} is not one of {', '.join(SystemRole.values)}",
            )
        check.text(f"{path}.note", item.get("note", ""), max_length=200)
        if ("own", object_type, field_name) in seen:
            check.add(
                path, f"a second rule for {object_type}{'.' + field_name if field_name else ''}"
            )
        seen.add(("own", object_type, field_name))

    processes = dict(process_choices())
    for path, item in check.items(document, "case_routes"):
        if not check.keys(
            path,
            item,
            (),
            ("case_type", "process", "legal_entity", "region", "queue", "priority", "note"),
        ):
            continue
        case_type = item.get("case_type") or ""
        if case_type and case_type not in CATALOGUE:
            check.add(
                f"{path}.case_type",
                f"unknown case type {json.dumps(case_type)}: the catalogue has no such case",
            )
        process = item.get("process") or ""
        if process and process not in processes:
            check.add(
                f"{path}.process",
                f"no case is opened for a process {json.dumps(process)}; choose one of: "
                f"{', '.join(processes)}",
            )
        region = item.get("region") or ""
        if region and region not in Project.Region.values:
            check.add(
                f"{path}.region",
                f"{json.dumps(region)} is not one of {', '.join(Project.Region.values)}",
            )
        entity(f"{path}.legal_entity", item.get("legal_entity"))
        queue = item.get("queue")
        if queue is not None and queue not in queues:
            check.add(
                f"{path}.queue",
                f"unknown queue {json.dumps(queue)}; the queues are {', '.join(sorted(queues))}",
            )
        priority = item.get("priority")
        if priority is not None and priority not in ExceptionCase.Priority.values:
            check.add(
                f"{path}.priority",
                f"must be one of {', '.join(map(str, ExceptionCase.Priority.values))} or null",
            )
        if queue is None and priority is None:
            check.add(path, "a rule sets a queue, a priority or both")
        check.text(f"{path}.note", item.get("note", ""), max_length=200)
        route_key = ("route", *_route_key(item))
        if route_key in seen:
            check.add(
                path,
                f"a second rule for exactly these conditions ({_route_label(_route_key(item))})",
            )
        seen.add(route_key)

    for path, item in check.items(document, "sla_policies"):
        if not check.keys(
            path, item, ("priority", "resolve_within_seconds", "due_soon_within_seconds")
        ):
            continue
        if item["priority"] not in ExceptionCase.Priority.values:
            check.add(
                f"{path}.priority",
                f"must be one of {', '.join(map(str, ExceptionCase.Priority.values))}",
            )
        ok = check.number(f"{path}.resolve_within_seconds", item["resolve_within_seconds"])
        ok = (
            check.number(
                f"{path}.due_soon_within_seconds", item["due_soon_within_seconds"], minimum=0
            )
            and ok
        )
        if ok and item["due_soon_within_seconds"] >= item["resolve_within_seconds"]:
            check.add(f"{path}.due_soon_within_seconds", "must be shorter than the time to resolve")
        if ("sla", item["priority"]) in seen:
            check.add(path, f"P{item['priority']} is in the file twice")
        seen.add(("sla", item["priority"]))

    database_roles = dict(Connection.objects.values_list("name", "role"))
    for path, item in check.items(document, "erp_routes"):
        if not check.keys(path, item, ("connection",), ("legal_entity",)):
            continue
        entity(f"{path}.legal_entity", item.get("legal_entity"))
        name = item["connection"]
        role = connections.get(name) or database_roles.get(name)
        if role is None:
            check.add(
                f"{path}.connection",
                f"no connection {json.dumps(name)} in the file nor in this database",
            )
        elif role != SystemRole.ERP:
            check.add(
                f"{path}.connection",
                f"{name} is a {role} connection; an ERP route needs an ERP connection",
            )
        erp_key = ("erp", item.get("legal_entity"))
        if erp_key in seen:
            check.add(path, f"a second route for {item.get('legal_entity') or 'the default'}")
        seen.add(erp_key)


def config_check(document: Mapping[str, Any]) -> None:
    """Everything wrong with a document's content, each problem with its path; ValidationError
    listing them (the first MAX_PROBLEMS), or nothing."""
    config_check_header(document)
    check = _Checker()
    unknown = sorted(set(document) - {"format", "version", *(s for s, _ in SECTIONS)})
    for key in unknown:
        check.add(key, "is not a section of a Concord configuration")
    connections = _check_connections(check, document)
    maps = _check_value_maps(check, document)
    _check_mappings(check, document, connections, maps)
    _check_rules(check, document, connections)
    if check.problems:
        more = len(check.problems) - MAX_PROBLEMS
        raise ValidationError(
            check.problems[:MAX_PROBLEMS] + ([f"and {more} more"] if more > 0 else [])
        )


# -- comparing a file with the database ---------------------------------------------------------

ADDED, CHANGED, REMOVED, LEFT_ALONE = "added", "changed", "removed", "left_alone"
KINDS = (ADDED, CHANGED, REMOVED, LEFT_ALONE)
# Which writes run first inside a section: a rule removed before one added, so a rule that
# moves from one key to another never meets itself.
_RUN_ORDER = {REMOVED: 0, CHANGED: 1, ADDED: 2, LEFT_ALONE: 3}

Run = Callable[[Actor], str]


@dataclass
class Item:
    """One thing the file changes (or leaves alone): in which section, what it is (`key`, in
    words), where it is in the file (`path`), each attribute's before and after, and, once
    tried, what the services refused or what they did (`outcome`)."""

    section: str
    kind: str
    key: str
    path: str = ""
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    note: str = ""
    refused: list[str] = field(default_factory=list)
    outcome: str = ""
    run: Run | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": self.path,
            "changes": {name: [before, after] for name, before, after in self.changes},
            "note": self.note,
            "outcome": self.outcome,
            "refused": self.refused,
        }


@dataclass
class SectionDiff:
    name: str
    title: str
    items: list[Item]
    unchanged: int = 0
    absent: bool = False  # the file has no such section: left as it is

    def of(self, kind: str) -> list[Item]:
        return [item for item in self.items if item.kind == kind]

    @property
    def added(self) -> list[Item]:
        return self.of(ADDED)

    @property
    def changed(self) -> list[Item]:
        return self.of(CHANGED)

    @property
    def removed(self) -> list[Item]:
        return self.of(REMOVED)

    @property
    def left_alone(self) -> list[Item]:
        return self.of(LEFT_ALONE)

    def summary(self) -> str:
        if self.absent:
            return "not in the file: left as it is"
        parts = [
            f"{len(self.of(kind))} {kind.replace('_', ' ')}" for kind in KINDS if self.of(kind)
        ]
        return ", ".join(parts) or "no change"


@dataclass
class ConfigImport:
    """What a file changes, per section, and whether it was applied."""

    sha256: str
    diff_sha256: str
    sections: list[SectionDiff]
    dry_run: bool
    applied: bool = False

    @property
    def refusals(self) -> list[str]:
        """Every refusal, each starting with its place in the file."""
        return [m for section in self.sections for item in section.items for m in item.refused]

    def count(self, kind: str) -> int:
        return sum(len(section.of(kind)) for section in self.sections)

    @property
    def unchanged(self) -> int:
        return sum(section.unchanged for section in self.sections)

    @property
    def changes(self) -> int:
        return self.count(ADDED) + self.count(CHANGED) + self.count(REMOVED)

    @property
    def can_apply(self) -> bool:
        return not self.refusals and self.changes > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "applied": self.applied,
            "sha256": self.sha256,
            "diff_sha256": self.diff_sha256,
            "can_apply": self.can_apply,
            "counts": {kind: self.count(kind) for kind in KINDS} | {"unchanged": self.unchanged},
            "refusals": self.refusals,
            "sections": {
                s.name: {kind: [i.as_dict() for i in s.of(kind)] for kind in KINDS}
                | {"unchanged": s.unchanged}
                for s in self.sections
            },
        }


def _differs(before: Any, after: Any) -> bool:
    return json.dumps(before, sort_keys=True, default=str) != json.dumps(
        after, sort_keys=True, default=str
    )


def _plan_connections(document: Mapping[str, Any]) -> SectionDiff:
    existing = {c.name: c for c in Connection.objects.all()}
    section = SectionDiff("connections", "Connections", [])
    named: set[str] = set()
    for index, item in enumerate(document.get("connections", [])):
        path = f"connections[{index}]"
        values = {name: item[name] for name in CONNECTION_FIELDS}
        name = values["name"]
        named.add(name)
        current = existing.get(name)
        if current is None:

            def create(actor: Actor, values: dict[str, Any] = values) -> str:
                connection_create(actor=actor, credentials=None, **values)
                return "created without credentials"

            section.items.append(
                Item(
                    "connections",
                    ADDED,
                    name,
                    path,
                    [(k, None, v) for k, v in values.items() if k != "name"],
                    note="Created without credentials (a file never carries them): enter them "
                    "on its page in the console"
                    + (", it is polled from now on." if values["enabled"] else "."),
                    run=create,
                )
            )
            continue
        changes = [
            (k, getattr(current, k), v)
            for k, v in values.items()
            if k != "name" and getattr(current, k) != v
        ]
        if not changes:
            section.unchanged += 1
            continue
        entry = Item("connections", CHANGED, name, path, changes)
        moved = [k for k, _, _ in changes if k in ("vendor", "role")]
        if moved:
            entry.refused.append(
                f"{path}.{moved[0]}: the file says {values['vendor']} ({values['role']}), this "
                f"database's {name} is {current.vendor} ({current.role}); a file never changes "
                "a connection's vendor (add a connection with another name instead)"
            )
        else:
            update = {k: v for k, _, v in changes}

            def change(actor: Actor, pk: int = current.pk, update: dict[str, Any] = update) -> str:
                connection_update(connection=Connection.objects.get(pk=pk), actor=actor, **update)
                return "settings updated; its credentials kept"

            entry.run = change
        section.items.append(entry)
    for name in sorted(set(existing) - named):
        section.items.append(
            Item("connections", LEFT_ALONE, name, note="Not in the file: left as it is.")
        )
    return section


def _global_tables() -> dict[str, dict[str, Any]]:
    return {vm.name: _table(vm) for vm in ValueMap.objects.prefetch_related("entries")}


def _doc_table(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": item["name"],
        "description": item.get("description", ""),
        "default": item.get("default", ""),
        "entries": {str(k): str(v) for k, v in item["entries"].items()},
    }


def _table_changes(
    before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    old_entries = dict((before or {}).get("entries") or {})
    new_entries = dict(after.get("entries") or {})
    changes: list[tuple[str, Any, Any]] = []
    for name in ("description", "default"):
        old = (before or {}).get(name, None if before is None else "")
        if before is None and not after.get(name):
            continue
        if old != after.get(name, ""):
            changes.append((name, old, after.get(name, "")))
    for key in sorted(set(old_entries) | set(new_entries)):
        if old_entries.get(key) != new_entries.get(key):
            changes.append((f"entry {key}", old_entries.get(key), new_entries.get(key)))
    return changes


def _reads(rows: Sequence[FieldSpec]) -> set[str]:
    return {
        str(spec.options.get("value_map", "")) for spec in rows if spec.transform == "value_map"
    } - {""}


def _specs(item: Mapping[str, Any]) -> list[FieldSpec]:
    return [
        FieldSpec(
            canonical_field=row["canonical_field"],
            vendor_path=row["vendor_path"],
            direction=row.get("direction", "both"),
            transform=row.get("transform", "copy"),
            options=dict(row.get("options") or {}),
            required=bool(row.get("required", False)),
        )
        for row in item["fields"]
    ]


def _mapping_label(item: Mapping[str, Any]) -> str:
    return f"{item['connection']} {item['object_type']}"


def _content_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    """Whether a value map's entries or default differ (what mappings read; not its
    description)."""
    return any(k != "description" for k, _, _ in _table_changes(before, after))


def _published_readers() -> dict[str, list[str]]:
    """Each value map's readers among the published mappings: "Harvest projects"."""
    readers: dict[str, set[str]] = {}
    for row in FieldMapping.objects.filter(
        transform=FieldMapping.Transform.VALUE_MAP, mapping_set__status=MappingSet.Status.PUBLISHED
    ).select_related("mapping_set__connection"):
        name = str((row.options or {}).get("value_map", ""))
        ms = row.mapping_set
        readers.setdefault(name, set()).add(f"{ms.connection.name} {ms.object_type}")
    return {name: sorted(labels) for name, labels in readers.items()}


def _plan_value_maps(
    document: Mapping[str, Any],
    tables: Mapping[str, dict[str, Any]],
    read_by: Mapping[str, list[str]],
    four_eyes_on: bool,
) -> SectionDiff:
    """`read_by`: the file's mappings that read each map (the map travels in their drafts).
    A map no mapping of the file reads is written directly, unless four eyes is on and
    published mappings read it: then a change to it waits for a second admin like any change
    to what a published mapping reads, so the file must hold one of them."""
    section = SectionDiff("value_maps", "Value maps", [])
    published_readers = _published_readers()
    named: set[str] = set()
    for index, item in enumerate(document.get("value_maps", [])):
        path = f"value_maps[{index}]"
        table = _doc_table(item)
        name = table["name"]
        named.add(name)
        current = tables.get(name)
        changes = _table_changes(current, table)
        if not changes:
            section.unchanged += 1
            continue
        readers = read_by.get(name, [])
        entry = Item("value_maps", ADDED if current is None else CHANGED, name, path, changes)
        content = _content_changes(current, table)
        described = current is not None and any(k == "description" for k, _, _ in changes)
        others = published_readers.get(name, [])
        if content and readers:
            entry.note = (
                f"Written when {' and '.join(readers)} is published (it reads this map), "
                "after the mapping's checks (and a second admin's approval under four eyes)."
            )
        elif content and others and four_eyes_on:
            entry.refused.append(
                f"{path}: {', '.join(others)} read{'s' if len(others) == 1 else ''} this map "
                "and four eyes is on: a change to it is published with a mapping that reads "
                "it; add that mapping to the file"
            )
        elif content and others:
            entry.note = (
                f"Also changes what {', '.join(others)} read{'s' if len(others) == 1 else ''}."
            )

        def write(
            actor: Actor,
            table: dict[str, Any] = table,
            exists: bool = current is not None,
            direct: bool = content and not readers,
            described: bool = described,
        ) -> str:
            if not exists:
                if not direct:
                    return ""  # created when its mapping is published (the note says so)
                value_map_create(
                    name=table["name"],
                    entries=table["entries"],
                    default=table["default"],
                    description=table["description"],
                    actor=actor,
                )
                return "created"
            done = []
            value_map = ValueMap.objects.get(name=table["name"])
            if direct:
                value_map_set_entries(
                    value_map=value_map,
                    entries=table["entries"],
                    default=table["default"],
                    actor=actor,
                )
                done.append("entries written")
            if described:
                config_row_update(
                    row=value_map, data={"description": table["description"]}, actor=actor
                )
                done.append("description written")
            return ", ".join(done)

        entry.run = write
        section.items.append(entry)
    for name in sorted(set(tables) - named):
        section.items.append(
            Item(
                "value_maps",
                LEFT_ALONE,
                name,
                note="Not in the file: left as it is (mappings the file does not hold may "
                "read it).",
            )
        )
    return section


def _row_text(row: Mapping[str, Any]) -> str:
    options = ", ".join(
        f"{k}={json.dumps(v)}" for k, v in sorted((row.get("options") or {}).items())
    )
    required = ", required" if row.get("required") else ""
    return f"{row['vendor_path']} ({row['transform']}{', ' + options if options else ''}{required})"


def _plan_mappings(
    document: Mapping[str, Any],
    doc_tables: Mapping[str, dict[str, Any]],
    tables: Mapping[str, dict[str, Any]],
    source: str,
) -> SectionDiff:
    section = SectionDiff("mappings", "Mappings", [])
    published = {
        (ms.connection.name, ms.object_type): ms
        for ms in MappingSet.objects.filter(status=MappingSet.Status.PUBLISHED)
        .select_related("connection")
        .prefetch_related("fields")
    }
    named: set[tuple[str, str]] = set()
    for index, item in enumerate(document.get("mappings", [])):
        path = f"mappings[{index}]"
        key = (item["connection"], item["object_type"])
        named.add(key)
        specs = _specs(item)
        settings = {name: item.get(name, "") for name in MAPPING_SETTINGS}
        # The value maps this version reads that the file changes: they travel in its draft.
        carried = {}
        for name in sorted(_reads(specs)):
            table = doc_tables.get(name)
            if table is None:
                continue
            current_table = tables.get(name)
            if current_table is None or _content_changes(current_table, table):
                carried[name] = {"entries": table["entries"], "default": table["default"]}
                if current_table is None:
                    carried[name]["description"] = table["description"]
        current = published.get(key)
        changes: list[tuple[str, Any, Any]] = []
        before_settings = (
            {name: getattr(current, name) for name in MAPPING_SETTINGS} if current else {}
        )
        changes += [
            (name, before_settings.get(name), value)
            for name, value in settings.items()
            if (current is None and value)
            or (current is not None and before_settings[name] != value)
        ]
        before_rows = (
            {(s.canonical_field, s.direction): _row(s) for s in field_specs(current.fields.all())}
            if current
            else {}
        )
        after_rows = {(s.canonical_field, s.direction): _row(s) for s in specs}
        for row_key in sorted(set(before_rows) | set(after_rows)):
            old, new = before_rows.get(row_key), after_rows.get(row_key)
            label = f"row {row_key[0]} ({row_key[1]})"
            if old is None or new is None:
                changes.append((label, old and _row_text(old), new and _row_text(new)))
            else:
                changes += [
                    (f"{label} {attr}", old[attr], new[attr])
                    for attr in ROW_FIELDS[1:]
                    if _differs(old[attr], new[attr])
                ]
        changes += [
            (
                f"value map {name}",
                "as in this database" if name in tables else None,
                "as in the file",
            )
            for name in carried
        ]
        if not changes:
            section.unchanged += 1
            continue

        def publish(
            actor: Actor,
            item: Mapping[str, Any] = item,
            specs: list[FieldSpec] = specs,
            settings: dict[str, Any] = settings,
            carried: dict[str, dict[str, Any]] = carried,
        ) -> str:
            connection = Connection.objects.filter(name=item["connection"]).first()
            if connection is None:
                raise ValidationError(f"there is no connection '{item['connection']}' to map")
            draft = mapping_set_create_draft(
                connection=connection,
                object_type=item["object_type"],
                canonical_model=settings["canonical_model"],
                external_id_path=settings["external_id_path"],
                version_path=settings["version_path"],
                notes=settings["notes"],
                actor=actor,
            )
            draft = mapping_draft_replace(
                mapping_set=draft,
                specs=specs,
                value_maps=carried,
                source=source,
                actor=actor,
                **settings,
            )
            done = mapping_set_request_publish(mapping_set=draft, actor=actor)
            if done.status == MappingSet.Status.PENDING:
                return (
                    f"v{done.version} waits for another admin's approval (four eyes); "
                    "the published version stays in effect until then"
                )
            return f"v{done.version} published"

        section.items.append(
            Item(
                "mappings",
                CHANGED if current else ADDED,
                _mapping_label(item),
                path,
                changes,
                note=f"A new version replaces v{current.version}." if current else "",
                run=publish,
            )
        )
    for key in sorted(set(published) - named):
        section.items.append(
            Item(
                "mappings",
                LEFT_ALONE,
                f"{key[0]} {key[1]}",
                note=f"Not in the file: v{published[key].version} stays published.",
            )
        )
    return section


def _keyed_rules(
    section: SectionDiff,
    *,
    wanted: list[tuple[str, Any, dict[str, Any]]],
    existing: Mapping[Any, Any],
    current: Callable[[Any], dict[str, Any]],
    label: Callable[[Any], str],
    create: Callable[[dict[str, Any], Actor], Any],
    update: Callable[[Any, dict[str, Any], Actor], Any],
    delete: Callable[[Any, Actor], Any] | None,
    left_alone_note: str = "",
) -> SectionDiff:
    """Rules matched by natural key: created, changed or deleted (or left alone when `delete`
    is None) so the database holds the file's."""
    for path, key, values in wanted:
        row = existing.get(key)
        if row is None:

            def add(actor: Actor, values: dict[str, Any] = values) -> str:
                create(values, actor)
                return "created"

            section.items.append(
                Item(
                    section.name,
                    ADDED,
                    label(key),
                    path,
                    [(k, None, v) for k, v in _shown(values).items() if v not in (None, "")],
                    run=add,
                )
            )
            continue
        before = _shown(current(row))
        after = _shown(values)
        changes = [(k, before.get(k), v) for k, v in after.items() if before.get(k) != v]
        if not changes:
            section.unchanged += 1
            continue

        def change(actor: Actor, row: Any = row, values: dict[str, Any] = values) -> str:
            update(type(row)._default_manager.get(pk=row.pk), values, actor)
            return "changed"

        section.items.append(Item(section.name, CHANGED, label(key), path, changes, run=change))
    named = {key for _, key, _ in wanted}
    for key in sorted(set(existing) - named, key=lambda k: json.dumps(k, default=str)):
        row = existing[key]
        if delete is None:
            section.items.append(Item(section.name, LEFT_ALONE, label(key), note=left_alone_note))
            continue

        def remove(actor: Actor, row: Any = row, delete: Callable[..., Any] = delete) -> str:
            delete(type(row)._default_manager.get(pk=row.pk), actor)
            return "deleted"

        section.items.append(
            Item(
                section.name,
                REMOVED,
                label(key),
                changes=[
                    (k, v, None) for k, v in _shown(current(row)).items() if v not in (None, "")
                ],
                run=remove,
            )
        )
    return section


def _shown(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as the file writes them: a legal entity by its code, a queue by its code, a
    connection by its name, durations in seconds."""
    shown: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, LegalEntity | WorkQueue):
            value = value.code
        elif isinstance(value, Connection):
            value = value.name
        elif isinstance(value, timedelta):
            name, value = f"{name}_seconds", int(value.total_seconds())
        shown[name] = value
    return shown


def _plan_rules(document: Mapping[str, Any]) -> list[SectionDiff]:
    entities = {e.code: e for e in LegalEntity.objects.all()}
    queues = {q.code: q for q in WorkQueue.objects.all()}

    ownership = _keyed_rules(
        SectionDiff("ownership_rules", "Ownership rules", []),
        wanted=[
            (
                f"ownership_rules[{i}]",
                (item["object_type"], item.get("field", "")),
                {
                    "object_type": item["object_type"],
                    "field": item.get("field", ""),
                    "owner_role": item["owner_role"],
                    "note": item.get("note", ""),
                },
            )
            for i, item in enumerate(document.get("ownership_rules", []))
        ],
        existing={(r.object_type, r.field): r for r in OwnershipRule.objects.all()},
        current=lambda r: {
            "object_type": r.object_type,
            "field": r.field,
            "owner_role": r.owner_role,
            "note": r.note,
        },
        label=lambda k: f"{k[0]}.{k[1]}" if k[1] else k[0],
        create=lambda values, actor: ownership_rule_create(data=values, actor=actor),
        update=lambda row, values, actor: ownership_rule_update(rule=row, data=values, actor=actor),
        delete=lambda row, actor: ownership_rule_delete(rule=row, actor=actor),
    )

    def route_values(item: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "case_type": item.get("case_type") or "",
            "process": item.get("process") or "",
            "legal_entity": entities.get(item.get("legal_entity") or ""),
            "region": item.get("region") or "",
            "queue": queues.get(item.get("queue") or ""),
            "priority": item.get("priority"),
            "note": item.get("note", ""),
        }

    routes = _keyed_rules(
        SectionDiff("case_routes", "Case routing", []),
        wanted=[
            (f"case_routes[{i}]", _route_key(item), route_values(item))
            for i, item in enumerate(document.get("case_routes", []))
        ],
        existing={
            _route_key(_route_doc(r)): r
            for r in CaseRoute.objects.select_related("legal_entity", "queue")
        },
        current=lambda r: {
            "case_type": r.case_type,
            "process": r.process,
            "legal_entity": r.legal_entity,
            "region": r.region,
            "queue": r.queue,
            "priority": r.priority,
            "note": r.note,
        },
        label=_route_label,
        create=lambda values, actor: case_route_create(data=values, actor=actor),
        update=lambda row, values, actor: case_route_update(route=row, data=values, actor=actor),
        delete=lambda row, actor: case_route_delete(route=row, actor=actor),
    )

    def sla_create(values: dict[str, Any], actor: Actor) -> Any:
        return config_row_create(model=SlaPolicy, data=values, actor=actor)

    slas = _keyed_rules(
        SectionDiff("sla_policies", "SLA per priority", []),
        wanted=[
            (
                f"sla_policies[{i}]",
                item["priority"],
                {
                    "priority": item["priority"],
                    "resolve_within": timedelta(seconds=item["resolve_within_seconds"]),
                    "due_soon_within": timedelta(seconds=item["due_soon_within_seconds"]),
                },
            )
            for i, item in enumerate(document.get("sla_policies", []))
        ],
        existing={p.priority: p for p in SlaPolicy.objects.all()},
        current=lambda p: {
            "priority": p.priority,
            "resolve_within": p.resolve_within,
            "due_soon_within": p.due_soon_within,
        },
        label=lambda k: f"P{k}",
        create=sla_create,
        update=lambda row, values, actor: sla_policy_update(
            policy=row,
            resolve_within=values["resolve_within"],
            due_soon_within=values["due_soon_within"],
            actor=actor,
        ),
        delete=None,
        left_alone_note="Not in the file: left as it is (every priority needs an SLA).",
    )

    def erp_values(item: Mapping[str, Any]) -> dict[str, Any]:
        # The connection by name: it may be one the file creates, found when the rule is written.
        return {
            "role": SystemRole.ERP,
            "legal_entity": entities.get(item.get("legal_entity") or ""),
            "connection": item["connection"],
        }

    def erp_row(values: dict[str, Any]) -> dict[str, Any]:
        connection = Connection.objects.filter(name=values["connection"]).first()
        if connection is None:
            raise ValidationError(f"there is no connection '{values['connection']}' to route to")
        return {**values, "connection": connection}

    erp = _keyed_rules(
        SectionDiff("erp_routes", "ERP routing", []),
        wanted=[
            (f"erp_routes[{i}]", item.get("legal_entity"), erp_values(item))
            for i, item in enumerate(document.get("erp_routes", []))
        ],
        existing={
            (r.legal_entity.code if r.legal_entity else None): r
            for r in RoutingRule.objects.filter(role=SystemRole.ERP).select_related(
                "legal_entity", "connection"
            )
        },
        current=lambda r: {
            "role": r.role,
            "legal_entity": r.legal_entity,
            "connection": r.connection,
        },
        label=lambda k: k or "every other legal entity (the default)",
        create=lambda values, actor: config_row_create(
            model=RoutingRule, data=erp_row(values), actor=actor
        ),
        update=lambda row, values, actor: config_row_update(
            row=row, data={"connection": erp_row(values)["connection"]}, actor=actor
        ),
        delete=lambda row, actor: config_row_delete(row=row, actor=actor),
    )
    return [ownership, routes, slas, erp]


def _plan(document: Mapping[str, Any], sha256: str) -> list[SectionDiff]:
    tables = _global_tables()
    doc_tables = {item["name"]: _doc_table(item) for item in document.get("value_maps", [])}
    read_by: dict[str, list[str]] = {}
    for item in document.get("mappings", []):
        for name in sorted(_reads(_specs(item))):
            read_by.setdefault(name, []).append(_mapping_label(item))
    source = f"configuration file {sha256[:12]}"
    sections = [
        _plan_connections(document),
        _plan_value_maps(document, tables, read_by, four_eyes()),
        _plan_mappings(document, doc_tables, tables, source),
        *_plan_rules(document),
    ]
    # A section the file leaves out is not managed by it: nothing in it is removed or listed
    # (a file of mappings alone must not delete every rule). An empty list removes every rule.
    for section in sections:
        if section.name not in document:
            section.items, section.unchanged, section.absent = [], 0, True
    return sections


def _diff_sha256(sections: Sequence[SectionDiff]) -> str:
    listed = [
        [s.name, i.kind, i.key, i.path, [[k, b, a] for k, b, a in i.changes]]
        for s in sections
        for i in s.items
    ]
    text = json.dumps(listed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# -- applying -----------------------------------------------------------------------------------


class _RolledBack(Exception):
    """Leaves the dry run's (or a refused import's) transaction with nothing written."""


def _messages(error: ValidationError, path: str) -> list[str]:
    if hasattr(error, "error_dict"):
        return [
            f"{path}{'' if name == '__all__' else '.' + name}: {message}"
            for name, messages in error.message_dict.items()
            for message in messages
        ]
    return [f"{path}: {message}" for message in error.messages]


def _try(sections: Sequence[SectionDiff], actor: Actor) -> None:
    """Every write of the plan through its service, each in a savepoint so one refusal does not
    hide the next: every refusal of the file is listed at once."""
    for section in sections:
        for item in sorted(section.items, key=lambda i: _RUN_ORDER[i.kind]):
            if item.run is None or item.refused:
                continue
            where = item.path or f"{section.name} {item.key}"
            try:
                with transaction.atomic():
                    item.outcome = item.run(actor)
            except ValidationError as error:
                item.refused = _messages(error, where)
            except IntegrityError as error:
                # A row another admin wrote meanwhile; the savepoint is rolled back.
                item.refused = [f"{where}: the database refused it ({error})"]


def config_import(
    *,
    document: Mapping[str, Any],
    actor: Actor,
    dry_run: bool = True,
    sha256: str = "",
    diff_sha256: str = "",
) -> ConfigImport:
    """Check a document, compare it with the database, and try it through the services inside a
    transaction: rolled back for a dry run (nothing is written; the result lists what would
    change and what the services would refuse), kept for an import (`dry_run` False) only when
    nothing is refused, and only with the `sha256` and `diff_sha256` the dry run gave: the file
    previewed, against the configuration as it was previewed (`ConfigPreviewStale` otherwise).
    An import leaves one audit event with the counts (on the console settings), beside the
    services' own per-row events."""
    config_check(document)
    digest = document_sha256(document)
    if not dry_run and sha256 != digest:
        raise ConfigPreviewStale(
            "This is not the file that was previewed: preview it (dry run) and apply what the "
            "preview showed."
        )
    sections = _plan(document, digest)
    result = ConfigImport(
        sha256=digest, diff_sha256=_diff_sha256(sections), sections=sections, dry_run=dry_run
    )
    if not dry_run and diff_sha256 != result.diff_sha256:
        raise ConfigPreviewStale(
            "The configuration changed since this file was previewed: preview it again, and "
            "apply what the new preview shows."
        )
    try:
        with transaction.atomic():
            _try(sections, actor)
            if dry_run or result.refusals or not result.changes:
                raise _RolledBack
            counts = {kind: result.count(kind) for kind in (ADDED, CHANGED, REMOVED)}
            audit_record(
                actor=actor,
                action=AuditEvent.Action.UPDATE,
                instance=ConsoleSettings.load(),
                changes={
                    "configuration file": [None, digest],
                    **{kind: [None, n] for kind, n in counts.items()},
                    **{
                        s.title: [None, s.summary()]
                        for s in sections
                        if s.added or s.changed or s.removed
                    },
                },
            )
            result.applied = True
    except _RolledBack:
        pass
    logger.info(
        "configuration file %s %s: %d added, %d changed, %d removed, %d refused",
        digest[:12],
        "applied" if result.applied else "tried",
        result.count(ADDED),
        result.count(CHANGED),
        result.count(REMOVED),
        len(result.refusals),
    )
    return result


def config_imports(*, limit: int = 10) -> list[AuditEvent]:
    """The latest imports, newest first (their audit events)."""
    return list(
        AuditEvent.objects.filter(
            object_type="consolesettings", changes__has_key="configuration file"
        ).order_by("-at", "-id")[:limit]
    )
