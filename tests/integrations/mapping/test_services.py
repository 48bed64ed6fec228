"""Drafts, publishing (with its checks), value maps, vendor defaults and preview."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, transaction

from integrations.mapping.apply import map_inbound
from integrations.mapping.selectors import (
    field_specs,
    mapping_load_published,
    mapping_set_compile,
)
from integrations.mapping.services import (
    mapping_defaults_install,
    mapping_defaults_upgrade,
    mapping_preview,
    mapping_set_create_draft,
    mapping_set_problems,
    mapping_set_publish,
    value_map_create,
    value_map_set_entries,
)
from integrations.models import AuditEvent, Connection, FieldMapping, MappingSet, ValueMap
from integrations.vendors import VENDORS
from integrations.vendors.spec import FieldSpec
from tests.factories import UserFactory, make_connection
from tests.integrations.mapping.conftest import compiled_default, default_spec

pytestmark = pytest.mark.django_db

Payload = Callable[[str], dict[str, Any]]


def _harvest() -> Connection:
    return make_connection(
        name="Harvest", role="psa", vendor="harvest", base_url="http://127.0.0.1:8100/harvest/v2"
    )


def _salesforce() -> Connection:
    return make_connection(
        name="Salesforce", role="crm", vendor="salesforce", base_url="http://127.0.0.1:8100/sf"
    )


def _draft(connection: Connection, canonical_model: str = "project", **kwargs: Any) -> MappingSet:
    return mapping_set_create_draft(
        connection=connection,
        object_type=kwargs.pop("object_type", "projects"),
        canonical_model=canonical_model,
        actor=None,
        **kwargs,
    )


def _field(mapping_set: MappingSet, canonical_field: str, vendor_path: str, **kw: Any) -> None:
    FieldMapping.objects.create(
        mapping_set=mapping_set, canonical_field=canonical_field, vendor_path=vendor_path, **kw
    )


# -- defaults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["xero", "harvest", "salesforce"])
def test_defaults_install_publishes_valid_mappings(vendor: str) -> None:
    connection = {"xero": make_connection, "harvest": _harvest, "salesforce": _salesforce}[vendor]()
    installed = mapping_defaults_install(connection=connection)
    expected = [m.object_type for m in VENDORS[vendor].mappings]
    assert [m.object_type for m in installed] == expected
    assert all(m.status == "published" and m.version == 1 for m in installed)
    for mapping_set, default in zip(installed, VENDORS[vendor].mappings, strict=True):
        assert mapping_set.fields.count() == len(default.fields)
    # Idempotent: nothing published twice, admin edits to value maps are kept.
    ValueMap.objects.filter(name__startswith=vendor).update(description="edited")
    assert mapping_defaults_install(connection=connection) == []
    assert not ValueMap.objects.filter(name__startswith=vendor).exclude(description="edited")


def test_installed_defaults_map_like_the_pure_specs(payload: Payload) -> None:
    connection = make_connection()
    mapping_defaults_install(connection=connection)
    loaded = mapping_load_published(connection_id=connection.pk, object_type="Invoices")
    assert loaded is not None
    assert loaded.problems == ()
    invoice = payload("xero_invoice")
    assert map_inbound(loaded, invoice) == map_inbound(
        compiled_default("xero", "Invoices"), invoice
    )
    assert set(ValueMap.objects.values_list("name", flat=True)) >= {
        "xero_invoice_status",
        "xero_contact_status",
        "country_names",
    }


def _spec_key(spec: FieldSpec) -> tuple[Any, ...]:
    fields = (spec.canonical_field, spec.vendor_path, spec.direction, spec.transform)
    return (*fields, spec.required, json.dumps(dict(spec.options), sort_keys=True))


def _specs(mapping_set: MappingSet) -> set[tuple[Any, ...]]:
    return {_spec_key(spec) for spec in field_specs(mapping_set.fields.all())}


def test_upgrade_adds_the_outbound_invoice_fields_to_a_published_mapping(
    django_capture_on_commit_callbacks: Any,
) -> None:
    """An existing database: its Invoices mapping was published before invoices were rendered
    by it (no outbound rows, the contact id one row both ways), and an admin has since edited
    one row. The upgrade publishes a new version with what is missing, keeping the edit."""
    connection = make_connection()
    default = default_spec("xero", "Invoices")
    old = [
        *(
            f
            for f in default.fields
            if f.direction != "out" and f.canonical_field != "customer__external_id"
        ),
        *default.replaces,
    ]
    edited = FieldSpec("number", "InvoiceNumber", options={"default": "n/a"})
    old = [edited if f.canonical_field == "number" else f for f in old]
    with django_capture_on_commit_callbacks(execute=True):
        mapping_defaults_install(connection=connection)
        draft = mapping_set_create_draft(
            connection=connection, object_type="Invoices", canonical_model="invoice", actor=None
        )
        draft.fields.all().delete()
        for spec in old:
            _field(
                draft,
                spec.canonical_field,
                spec.vendor_path,
                direction=spec.direction,
                transform=spec.transform,
                options=dict(spec.options),
                required=spec.required,
            )
        mapping_set_publish(mapping_set=draft, actor=None)
        ValueMap.objects.filter(name="xero_sales_account").delete()  # new in this release

        (upgraded,) = mapping_defaults_upgrade(connection=connection)

    assert (upgraded.object_type, upgraded.version, upgraded.status) == ("Invoices", 3, "published")
    expected = {_spec_key(f) for f in default.fields if f.canonical_field != "number"}
    assert _specs(upgraded) == expected | {_spec_key(edited)}
    assert ValueMap.objects.get(name="xero_sales_account").default == "200"
    loaded = mapping_load_published(connection_id=connection.pk, object_type="Invoices")
    assert loaded is not None
    assert [target.name for target in loaded.lists] == ["lines"]
    # Idempotent: nothing is missing any more, nothing is published.
    assert mapping_defaults_upgrade(connection=connection) == []


def test_upgrade_leaves_an_object_with_an_open_draft_alone() -> None:
    connection = make_connection()
    mapping_defaults_install(connection=connection)
    published = MappingSet.objects.get(connection=connection, object_type="Invoices")
    published.fields.filter(vendor_path="Reference").delete()  # as if shipped without it
    mapping_set_create_draft(
        connection=connection, object_type="Invoices", canonical_model="invoice", actor=None
    )
    assert mapping_defaults_upgrade(connection=connection) == []


def test_values_sent_by_value_are_mapped_outbound_only() -> None:
    connection = make_connection()
    draft = _draft(connection, object_type="Invoices", canonical_model="invoice")
    _field(draft, "reference", "Reference", direction="out")
    _field(draft, "lines[].quantity", "LineItems[].Quantity", direction="out", transform="money")
    _field(draft, "customer__name", "Contact.Name", direction="both")
    assert mapping_set_problems(draft) == [
        "'customer__name' is sent by value and cannot be read back: map it outbound only"
    ]


# -- drafts ------------------------------------------------------------------------------------


def test_draft_copies_the_published_version() -> None:
    connection = make_connection()
    user = UserFactory.create()
    mapping_defaults_install(connection=connection)
    published = MappingSet.objects.get(connection=connection, object_type="Contacts")

    draft = mapping_set_create_draft(
        connection=connection, object_type="Contacts", canonical_model="customer", actor=user
    )
    assert (draft.version, draft.status) == (2, "draft")
    assert draft.external_id_path == "ContactID"
    assert draft.version_path == "UpdatedDateUTC"

    def rows(ms: MappingSet) -> list[tuple[Any, ...]]:
        return list(
            ms.fields.values_list(
                "canonical_field", "vendor_path", "direction", "transform", "options", "required"
            )
        )

    assert rows(draft) == rows(published)
    assert AuditEvent.objects.filter(object_type="mappingset", object_id=str(draft.pk)).exists()
    with pytest.raises(ValidationError, match=r"already has a draft \(v2\)"):
        mapping_set_create_draft(
            connection=connection, object_type="Contacts", canonical_model="customer", actor=user
        )


def test_draft_from_a_named_version_or_empty() -> None:
    connection = _harvest()
    empty = _draft(connection, external_id_path="id", version_path="updated_at")
    assert empty.fields.count() == 0
    _field(empty, "code", "code")
    _field(empty, "name", "name")
    mapping_set_publish(mapping_set=empty, actor=None)
    second = _draft(connection)
    second.fields.filter(canonical_field="name").delete()
    mapping_set_publish(mapping_set=second, actor=None)

    third = _draft(connection, from_version=1)
    assert sorted(third.fields.values_list("canonical_field", flat=True)) == ["code", "name"]
    third.delete()
    with pytest.raises(ValidationError, match="no version 9"):
        _draft(connection, from_version=9)


def test_draft_takes_the_given_notes_when_empty_and_the_source_notes_when_copied() -> None:
    connection = _harvest()
    first = _draft(connection, notes="Projects from Harvest")
    assert first.notes == "Projects from Harvest"
    _field(first, "name", "name", position=7)
    _field(first, "code", "code", position=3)
    mapping_set_publish(mapping_set=first, actor=None)

    second = _draft(connection, notes="ignored: the copy keeps its source's")
    assert second.notes == "Projects from Harvest"
    # Copied in the source's order, numbered afresh.
    assert list(second.fields.values_list("canonical_field", "position")) == [
        ("code", 0),
        ("name", 1),
    ]


# -- publishing --------------------------------------------------------------------------------


def test_publish_retires_the_previous_version(
    django_capture_on_commit_callbacks: Any,
) -> None:
    connection = _harvest()
    user = UserFactory.create()
    with django_capture_on_commit_callbacks(execute=True):
        mapping_defaults_install(connection=connection)
        v1 = MappingSet.objects.get(connection=connection, object_type="projects")
        draft = _draft(connection)
        published = mapping_set_publish(mapping_set=draft, actor=user)
    v1.refresh_from_db()
    assert v1.status == "retired"
    assert (published.status, published.published_by) == ("published", user)
    assert published.published_at is not None
    statuses = MappingSet.objects.filter(connection=connection, object_type="projects")
    assert sorted(statuses.values_list("version", "status")) == [(1, "retired"), (2, "published")]
    with pytest.raises(ValidationError, match="Only a draft can be published; projects v2 is"):
        mapping_set_publish(mapping_set=published, actor=user)
    event = AuditEvent.objects.filter(object_type="mappingset", object_id=str(draft.pk)).first()
    assert event is not None
    assert event.changes == {"status": ["draft", "published"], "retired_versions": [None, [1]]}


def test_database_allows_one_published_version_per_object() -> None:
    connection = _harvest()
    mapping_defaults_install(connection=connection)
    with pytest.raises(IntegrityError, match="mappingset_one_published"), transaction.atomic():
        MappingSet.objects.create(
            connection=connection,
            object_type="projects",
            canonical_model="project",
            version=7,
            status="published",
            external_id_path="id",
        )


def test_publish_checks_fields_transforms_and_value_maps() -> None:
    connection = _harvest()
    value_map_create(name="known", entries={"a": "b"}, actor=None)
    draft = _draft(connection, object_type="time_entries", canonical_model="timeentry")
    _field(draft, "hourz", "hours")
    _field(draft, "project", "project.id", direction="in")
    _field(draft, "resource__name", "user.name", direction="in")
    _field(draft, "resource__email", "user.email", direction="out")
    _field(draft, "approval_state", "approval_status", transform="value_map")
    _field(draft, "task", "task.name", transform="value_map", options={"value_map": "missing"})
    _field(draft, "notes", "notes", transform="default")
    _field(draft, "date", "spent_date", transform="date", options={"fmt": "xero"})
    _field(draft, "billable", "billable", direction="in")
    _field(draft, "billable", "is_billable", direction="both")
    _field(draft, "hours", "a..b", transform="concat", direction="out")
    with pytest.raises(ValidationError) as caught:
        mapping_set_publish(mapping_set=draft, actor=None)
    # The canonical fields, then what compiling found (CompiledMapping.problems), then what
    # only the whole set shows.
    assert caught.value.messages == [
        "'hourz' is not a field of timeentry",
        "'project' is a relation: map the vendor's id to 'project__external_id' (the upsert "
        "step resolves it)",
        "'name' of resource is not unique, so it cannot identify one",
        "approval_state (approval_status): value_map needs a 'value_map' option naming the map",
        "task (task.name): value map 'missing' does not exist",
        "notes (notes): the default transform needs a 'default' option",
        "date (spent_date): option(s) fmt not used by 'date'",
        "hours (a..b): path 'a..b' has an empty segment",
        "billable is mapped twice in one direction (billable and is_billable)",
        "hours: a concatenation has no reverse; map it inbound only",
    ]
    draft.refresh_from_db()
    assert draft.status == "draft"


def test_publish_refuses_unknown_model_and_empty_mapping() -> None:
    connection = _harvest()
    draft = _draft(connection, canonical_model="widget")
    with pytest.raises(ValidationError) as caught:
        mapping_set_publish(mapping_set=draft, actor=None)
    assert caught.value.messages[0] == "the mapping has no fields"
    assert caught.value.messages[1].startswith("'widget' is not a canonical model (one of: ")


def test_problems_are_what_compiling_found_plus_what_only_the_set_shows() -> None:
    connection = _harvest()
    draft = _draft(connection, external_id_path="a..b")
    _field(draft, "code", "code", direction="in", transform="date", options={"format": "nope"})
    _field(draft, "code", "code2")
    compiled = mapping_set_compile(draft)
    assert compiled.problems == (
        "code (code): date 'format' must be one of iso, xero",
        "external id path: path 'a..b' has an empty segment",
    )
    assert mapping_set_problems(draft) == [
        *compiled.problems,
        "code is mapped twice in one direction (code and code2)",
    ]


def test_problems_reuse_a_compiled_mapping_when_given(django_assert_num_queries: Any) -> None:
    connection = _harvest()
    draft = _draft(connection)
    _field(draft, "code", "code")
    compiled = replace(mapping_set_compile(draft), problems=("found while compiling",))
    with django_assert_num_queries(1):  # the fields, nothing compiled again
        assert mapping_set_problems(draft, compiled=compiled) == ["found while compiling"]


# -- value maps --------------------------------------------------------------------------------


def test_value_map_set_entries_replaces_and_audits(
    django_capture_on_commit_callbacks: Any,
) -> None:
    value_map = value_map_create(
        name="harvest_approval", entries={"approved": "approved", "old": "x"}, actor=None
    )
    with django_capture_on_commit_callbacks() as callbacks:
        value_map_set_entries(
            value_map=value_map,
            entries={"approved": "approved", "submitted": "submitted"},
            default="submitted",
            actor=None,
        )
    assert len(callbacks) == 1  # the cache bump, after commit
    assert dict(value_map.entries.values_list("vendor_value", "canonical_value")) == {
        "approved": "approved",
        "submitted": "submitted",
    }
    value_map.refresh_from_db()
    assert value_map.default == "submitted"
    event = AuditEvent.objects.filter(object_type="valuemap", action="update").get()
    assert event.changes["entries"][0] == {"approved": "approved", "old": "x"}
    with django_capture_on_commit_callbacks() as callbacks:
        value_map_set_entries(
            value_map=value_map,
            entries={"submitted": "submitted", "approved": "approved"},
            actor=None,
        )
    assert callbacks == []  # nothing changed, nothing to reload


# -- preview -----------------------------------------------------------------------------------


def test_preview_maps_stored_payloads_through_a_draft(payload: Payload) -> None:
    connection = _harvest()
    mapping_defaults_install(connection=connection)
    draft = mapping_set_create_draft(
        connection=connection, object_type="projects", canonical_model="project", actor=None
    )
    draft.fields.filter(canonical_field="status").update(options={"value_map": "nope"})
    project = payload("harvest_project")
    broken = payload("harvest_project")
    broken["starts_on"] = "soon"
    records = mapping_preview(mapping_set=draft, payloads=[project, broken])
    assert [r.external_id for r in records] == ["1000011", "1000011"]
    assert [str(e) for e in records[0].errors] == [
        "status (from is_active): value map 'nope' does not exist"
    ]
    assert [e.field for e in records[1].errors] == ["status", "start_date"]
    assert records[0].fields["code"] == "PUK-0012"
    # Preview neither publishes nor changes what workers load.
    loaded = mapping_load_published(connection_id=connection.pk, object_type="projects")
    assert loaded is not None
    assert loaded.version == 1


def test_install_command_installs_then_finds_everything_up_to_date() -> None:
    connection = make_connection()
    out = io.StringIO()
    call_command("mapping_defaults_install", connection=[connection.pk], stdout=out)
    assert out.getvalue() == (
        f"{connection.name}: Contacts v1, Invoices v1, Payments v1, TaxRates v1, "
        "TrackingOptions v1\n"
    )
    out = io.StringIO()
    call_command("mapping_defaults_install", connection=[connection.pk], stdout=out)
    assert out.getvalue() == f"{connection.name}: up to date\n"
