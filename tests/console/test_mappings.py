"""The mapping editor (/config/mappings/): drafts edited through the page and checked before
each save, value maps with CSV, preview against stored payloads and open cases, publishing,
four eyes, versions, diff, rollback and history; integration admins only.

Harvest's projects are the running example: an older installation whose project-state value
map knows only "true", so every archived project (is_active false) opens a mapping case. The
payloads are polled ones (kept verbatim), so no vendor is called here; the end-to-end run with
the sandbox, replays and all, is tests/e2e/test_mapping_editor.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from exceptions.models import CaseEvent, ExceptionCase
from integrations.mapping.preview import mapping_preview_run
from integrations.mapping.review import mapping_set_review
from integrations.mapping.selectors import mapping_cache_clear, mapping_load_published
from integrations.mapping.services import (
    mapping_defaults_install,
    mapping_set_create_draft,
    mapping_set_publish,
    value_map_create,
)
from integrations.mapping.versions import (
    draft_value_map_entry_set,
    mapping_set_rollback,
    mapping_versions_diff,
)
from integrations.models import (
    AuditEvent,
    Connection,
    ConsoleSettings,
    InboundMessage,
    MappingSet,
    ValueMap,
)
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS, VIEWER
from integrations.sync.inbound import inbound_process
from tests.factories import UserFactory, make_connection

pytestmark = pytest.mark.django_db

PROJECTS = "projects"


@pytest.fixture(autouse=True)
def _fresh_mapping_cache() -> Iterator[None]:
    mapping_cache_clear()
    yield
    mapping_cache_clear()


@pytest.fixture
def harvest() -> Connection:
    # Admins of an older installation kept the project-state map to "true" only.
    value_map_create(
        name="harvest_project_active",
        entries={"true": "active"},
        description="Harvest project is_active -> canonical project status",
        actor=None,
    )
    connection = make_connection(
        name="Harvest",
        vendor="harvest",
        role="psa",
        base_url="http://127.0.0.1:9/harvest/v2",  # never called: the payloads are polled ones
        credentials={"access_token": "token", "account_id": "100001"},
    )
    mapping_defaults_install(connection=connection)
    return connection


def project(number: int, *, active: bool = True, code: str | None = "") -> dict[str, Any]:
    return {
        "id": number,
        "code": f"P-{number}" if code == "" else code,
        "name": f"Project {number}",
        "is_active": active,
        "cost_budget": 1000.0,
        "starts_on": "2026-01-05",
        "ends_on": None,
        "client": {"id": 501, "name": "Acme", "currency": "USD"},
        "updated_at": f"2026-11-20T10:{number // 60:02d}:{number % 60:02d}Z",
    }


def receive(connection: Connection, *payloads: dict[str, Any]) -> list[InboundMessage]:
    """Polled payloads kept and processed, as a poll does one by one (mapping cases open)."""
    messages = []
    for payload in payloads:
        message = InboundMessage.objects.create(
            connection=connection,
            source=InboundMessage.Source.POLL,
            object_type=PROJECTS,
            external_id=str(payload["id"]),
            dedupe_key=f"projects:{payload['id']}:{payload['updated_at']}",
            payload=payload,
        )
        inbound_process(message_id=message.pk)
        messages.append(message)
    return messages


def mapping_cases(connection: Connection) -> list[ExceptionCase]:
    return list(
        ExceptionCase.objects.filter(
            case_type="mapping_error", connection=connection, status="open"
        ).order_by("pk")
    )


def admin_client(username: str = "ada") -> Client:
    client = Client()
    client.force_login(UserFactory.create(username=username, role=INTEGRATION_ADMIN))
    return client


def url(connection: Connection, name: str = "mapping", *args: Any) -> str:
    return reverse(f"console:{name}", args=[connection.pk, PROJECTS, *args])


def text(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def draft_of(connection: Connection) -> MappingSet:
    return MappingSet.objects.get(connection=connection, object_type=PROJECTS, status="draft")


# -- who may ------------------------------------------------------------------------------------


def _every_page(connection: Connection) -> list[tuple[str, str]]:
    draft = mapping_set_create_draft(
        connection=connection, object_type=PROJECTS, canonical_model="project", actor=None
    )
    row = draft.fields.first()
    assert row is not None
    vm = "harvest_project_active"
    return [
        ("get", reverse("console:mappings")),
        ("post", reverse("console:mapping_settings")),
        ("get", url(connection)),
        ("post", url(connection, "mapping_draft")),
        ("post", url(connection, "mapping_discard")),
        ("post", url(connection, "mapping_draft_settings")),
        ("post", url(connection, "mapping_field_add")),
        ("post", url(connection, "mapping_field", row.pk)),
        ("post", url(connection, "mapping_field_remove", row.pk)),
        ("post", url(connection, "mapping_value_map_new")),
        ("post", url(connection, "mapping_entry", vm)),
        ("post", url(connection, "mapping_entry_delete", vm)),
        ("post", url(connection, "mapping_default", vm)),
        ("post", url(connection, "mapping_import", vm)),
        ("get", url(connection, "mapping_export", vm)),
        ("get", url(connection, "mapping_preview")),
        ("post", url(connection, "mapping_publish")),
        ("get", url(connection, "mapping_fixed")),
        ("post", url(connection, "mapping_fixed")),
        ("get", url(connection, "mapping_versions")),
        ("get", url(connection, "mapping_diff")),
        ("post", url(connection, "mapping_approve", draft.version)),
        ("post", url(connection, "mapping_reject", draft.version)),
        ("post", url(connection, "mapping_rollback", 1)),
    ]


@pytest.mark.parametrize("role", [FINANCE, PMO, SALES_OPS, VIEWER, ""])
def test_no_one_but_an_integration_admin_reaches_a_mapping_page_or_action(
    harvest: Connection, role: str
) -> None:
    client = Client()
    client.force_login(UserFactory.create(role=role))
    pages = _every_page(harvest)
    before = AuditEvent.objects.count()
    rows = draft_of(harvest).fields.count()
    for method, address in pages:
        response = getattr(client, method)(address, {"vendor_value": "x", "canonical_value": "y"})
        assert response.status_code == 403, (role, method, address)
    assert AuditEvent.objects.count() == before  # nothing was written
    assert draft_of(harvest).fields.count() == rows


def test_anonymous_is_sent_to_sign_in_from_every_mapping_page(harvest: Connection) -> None:
    client = Client()
    for method, address in _every_page(harvest):
        response = getattr(client, method)(address)
        assert response.status_code == 302, (method, address)
        assert "/login/" in response["Location"]


# -- the index ----------------------------------------------------------------------------------


def test_index_lists_each_object_with_its_versions_and_open_cases(harvest: Connection) -> None:
    receive(harvest, project(1, active=False), project(2, active=False))
    client = admin_client()
    page = text(client.get(reverse("console:mappings")))
    assert "Mappings" in page
    row = re.search(r"<td><a href=\"[^\"]+/projects/\">projects</a></td>.*?</tr>", page)
    assert row is not None
    assert "v1" in row.group(0)
    assert "<strong>1</strong>" in row.group(0)  # one open mapping case, holding both

    filtered = text(client.get(reverse("console:mappings"), {"q": "expens"}))
    assert ">expenses</a>" in filtered
    assert ">projects</a>" not in filtered
    none = text(client.get(reverse("console:mappings"), {"q": "nothing-like-this"}))
    assert "No mapped object matches these filters." in none

    csv = client.get(reverse("console:mappings"), {"format": "csv", "q": "projects"})
    assert csv["Content-Type"].startswith("text/csv")
    assert csv.getvalue().decode().splitlines() == [
        "connection,object,canonical_model,published_version,unpublished,open_cases",
        '"Harvest",projects,project,1,,1',
    ]
    assert "Mappings" in text(client.get(reverse("console:index")))


# -- the editor: a real payload beside the mapping ----------------------------------------------


def test_editor_shows_a_recent_payload_and_what_each_version_makes_of_it(
    harvest: Connection,
) -> None:
    (archived,) = receive(harvest, project(7, active=False))
    client = admin_client()
    page = text(client.get(url(harvest), {"sample": archived.pk}))
    assert "A recent projects payload" in page
    assert "&quot;is_active&quot;: false" in page  # the vendor's payload, as received
    assert (
        "v1 cannot read it:</p><ul><li>status (from is_active): value &#x27;false&#x27; is not in "
        "value map &#x27;harvest_project_active&#x27; and the map has no default</li>" in page
    )
    assert "1 open mapping case" in page

    client.post(url(harvest, "mapping_draft"))
    client.post(
        url(harvest, "mapping_entry", "harvest_project_active"),
        {"vendor_value": "false", "canonical_value": "closed", "tab": "in"},
    )
    page = text(client.get(url(harvest), {"sample": archived.pk}))
    assert "v2 reads it; the published version does not." in page
    assert re.search(r"<code>status</code></td><td>closed</td>", page)


def test_outbound_tab_lists_the_rows_written_to_the_vendor(harvest: Connection) -> None:
    page = text(admin_client().get(url(harvest), {"direction": "out"}))
    assert "Outbound: Concord to vendor" in page
    assert "<code>client_id</code>" in page  # customer__external_id -> client_id, out only
    assert "<code>client.id</code>" not in page  # the inbound row is on the other tab
    assert "Nothing of this kind has been sent to Harvest yet" in page


# -- editing a draft: checked before each save ---------------------------------------------------


def test_a_row_is_checked_before_it_is_saved(harvest: Connection) -> None:
    receive(harvest, project(1), project(2))
    client = admin_client()
    client.post(url(harvest, "mapping_draft"))
    draft = draft_of(harvest)
    add = url(harvest, "mapping_field_add")
    row = {"direction": "in", "transform": "copy", "tab": "in"}

    refused = client.post(add, {**row, "canonical_field": "colour", "vendor_path": "name"})
    assert refused.status_code == 400
    assert "&#x27;colour&#x27; is not a field of project" in text(refused)

    mismatch = client.post(
        add,
        {**row, "canonical_field": "region", "vendor_path": "cost_budget", "transform": "money"},
    )
    assert mismatch.status_code == 400
    assert (
        "region (cost_budget): type mismatch: &#x27;money&#x27; gives an amount, but "
        "project.region holds text"
    ) in text(mismatch)

    twice = client.post(add, {**row, "canonical_field": "name", "vendor_path": "code"})
    assert twice.status_code == 400
    assert "name is already mapped inbound (from name): edit that row instead" in text(twice)

    # A path none of the recent payloads has is a doubt: saved only when the admin confirms.
    unseen = {
        **row,
        "direction": "both",
        "canonical_field": "end_date",
        "vendor_path": "finishes_on",
    }
    doubt = client.post(
        url(harvest, "mapping_field", draft.fields.get(canonical_field="end_date").pk),
        {**unseen, "transform": "date"},
    )
    assert doubt.status_code == 400
    assert (
        "unknown path: finishes_on (end_date) is in none of the 2 latest projects payloads"
        in text(doubt)
    )
    assert 'name="confirm"' in text(doubt)
    assert draft.fields.get(canonical_field="end_date").vendor_path == "ends_on"
    saved = client.post(
        url(harvest, "mapping_field", draft.fields.get(canonical_field="end_date").pk),
        {**unseen, "transform": "date", "confirm": "on"},
    )
    assert saved.status_code == 302
    assert draft.fields.get(canonical_field="end_date").vendor_path == "finishes_on"
    event = AuditEvent.objects.filter(object_type="mappingset", object_id=str(draft.pk)).first()
    assert event is not None
    assert event.actor_label == "ada"
    assert event.changes["field end_date (both)"][1]["vendor_path"] == "finishes_on"

    removed = client.post(
        url(harvest, "mapping_field_remove", draft.fields.get(canonical_field="end_date").pk),
        {"tab": "in"},
    )
    assert removed.status_code == 302
    assert not draft.fields.filter(canonical_field="end_date").exists()
    # The published version was never touched.
    published = MappingSet.objects.get(connection=harvest, object_type=PROJECTS, version=1)
    assert published.fields.filter(canonical_field="end_date", vendor_path="ends_on").exists()


def test_a_refusal_comes_back_on_the_form_it_concerns_as_it_was_typed(
    harvest: Connection,
) -> None:
    """Each write's refusal lands on its own form (the edited row, the value map's new entry,
    the draft's settings), keeping what was typed; the other forms stay blank."""
    client = admin_client()
    client.post(url(harvest, "mapping_draft"))
    draft = draft_of(harvest)
    edited = draft.fields.get(canonical_field="end_date")
    row = {"direction": "in", "transform": "copy", "tab": "in", "canonical_field": "colour"}

    refused = text(
        client.post(url(harvest, "mapping_field", edited.pk), {**row, "vendor_path": "x.y"})
    )
    # The edited row is open as a form holding what was typed; the add form is blank and closed.
    editing = re.search(rf'<tr id="field-{edited.pk}" class="mapping-editing">(.*?)</tr>', refused)
    assert editing is not None
    assert 'value="colour"' in editing.group(1)
    assert "is not a field of project" in editing.group(1)
    assert refused.count('value="colour"') == 1
    assert '<details class="mapping-add">' in refused

    added = text(client.post(url(harvest, "mapping_field_add"), {**row, "vendor_path": "x.y"}))
    assert '<details class="mapping-add" open>' in added
    assert "mapping-editing" not in added

    entry = client.post(
        url(harvest, "mapping_entry", "harvest_project_active"),
        {"vendor_value": "maybe", "canonical_value": "perhaps"},
    )
    assert entry.status_code == 400
    new_entry = re.search(r'<tr class="mapping-new-entry">(.*?)</tr>', text(entry))
    assert new_entry is not None
    assert 'value="maybe"' in new_entry.group(1)
    assert 'value="perhaps"' in new_entry.group(1)

    settings = client.post(
        url(harvest, "mapping_draft_settings"),
        {"external_id_path": "", "version_path": "updated_at", "notes": "typed", "tab": "in"},
    )
    assert settings.status_code == 400
    form = re.search(r'<form class="mapping-settings-form".*?</form>', text(settings))
    assert form is not None
    assert "typed</textarea>" in form.group(0)
    assert "This field is required." in form.group(0)
    assert draft_of(harvest).notes != "typed"


def test_a_published_version_is_never_edited(harvest: Connection) -> None:
    client = admin_client()
    response = client.post(
        url(harvest, "mapping_entry", "harvest_project_active"),
        {"vendor_value": "false", "canonical_value": "closed"},
    )
    assert response.status_code == 400
    assert "There is no draft to change" in text(response)
    assert dict(
        ValueMap.objects.get(name="harvest_project_active").entries.values_list(
            "vendor_value", "canonical_value"
        )
    ) == {"true": "active"}


def test_value_map_entries_are_checked_and_stay_in_the_draft_until_it_is_published(
    harvest: Connection, django_capture_on_commit_callbacks: Any
) -> None:
    client = admin_client()
    client.post(url(harvest, "mapping_draft"))
    entry = url(harvest, "mapping_entry", "harvest_project_active")
    refused = client.post(entry, {"vendor_value": "false", "canonical_value": "archived"})
    assert refused.status_code == 400
    assert (
        "value map &#x27;harvest_project_active&#x27;: &#x27;archived&#x27; is not a project "
        "status (planned, active, on_hold, closed), which status (is_active) needs"
    ) in text(refused)
    assert (
        client.post(entry, {"vendor_value": "false", "canonical_value": "closed"}).status_code
        == 302
    )

    # The global map, which published mappings read, is unchanged until the draft is published.
    global_map = ValueMap.objects.get(name="harvest_project_active")
    assert set(global_map.entries.values_list("vendor_value", flat=True)) == {"true"}
    published = mapping_load_published(connection_id=harvest.pk, object_type=PROJECTS)
    assert published is not None
    assert dict(published.value_maps["harvest_project_active"].entries) == {"true": "active"}

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url(harvest, "mapping_publish"))
    assert response.status_code == 302
    assert response["Location"] == url(harvest, "mapping_fixed")
    assert dict(global_map.entries.values_list("vendor_value", "canonical_value")) == {
        "true": "active",
        "false": "closed",
    }
    v2 = MappingSet.objects.get(connection=harvest, object_type=PROJECTS, version=2)
    assert v2.status == "published"
    assert v2.value_maps["harvest_project_active"]["entries"] == {
        "true": "active",
        "false": "closed",
    }
    reloaded = mapping_load_published(connection_id=harvest.pk, object_type=PROJECTS)
    assert reloaded is not None
    assert reloaded.version == 2
    assert dict(reloaded.value_maps["harvest_project_active"].entries)["false"] == "closed"


def test_value_map_csv_export_and_import(harvest: Connection) -> None:
    client = admin_client()
    client.post(url(harvest, "mapping_draft"))
    export = client.get(url(harvest, "mapping_export", "harvest_project_active"))
    assert export["Content-Type"].startswith("text/csv")
    assert export.content.decode() == "vendor_value,canonical_value\ntrue,active\n"

    def upload(content: str, **extra: str) -> Any:
        csv = SimpleUploadedFile("map.csv", content.encode(), content_type="text/csv")
        return client.post(
            url(harvest, "mapping_import", "harvest_project_active"), {"file": csv, **extra}
        )

    bad = upload("vendor_value,canonical_value\nfalse,closed\nmaybe,perhaps\n,x\n")
    assert bad.status_code == 400
    assert "line 3: value map &#x27;harvest_project_active&#x27;: &#x27;perhaps&#x27;" in text(bad)
    assert "line 4: both values are needed" in text(bad)
    assert draft_of(harvest).value_maps == {}  # one bad line: nothing imported

    merged = upload("vendor_value,canonical_value\nfalse,closed\n")
    assert merged.status_code == 302
    follow = text(client.get(merged["Location"]))
    assert (
        "harvest_project_active: 1 added, 0 changed, 0 removed, 1 unchanged in the draft." in follow
    )
    assert draft_of(harvest).value_maps["harvest_project_active"]["entries"] == {
        "true": "active",
        "false": "closed",
    }
    replaced = upload("vendor_value,canonical_value\nfalse,closed\n", replace="on")
    assert replaced.status_code == 302
    assert draft_of(harvest).value_maps["harvest_project_active"]["entries"] == {"false": "closed"}
    export = client.get(url(harvest, "mapping_export", "harvest_project_active"), {"version": 2})
    assert export.content.decode() == "vendor_value,canonical_value\nfalse,closed\n"
    # The published version's map, as it was published.
    export = client.get(url(harvest, "mapping_export", "harvest_project_active"), {"version": 1})
    assert export.content.decode() == "vendor_value,canonical_value\ntrue,active\n"


# -- preview and the cases it fixes -------------------------------------------------------------


def test_preview_names_the_cases_a_draft_fixes_and_the_records_it_changes(
    harvest: Connection,
) -> None:
    receive(
        harvest,
        project(1),
        project(2, active=False),
        project(3, active=False),
        project(4, active=False, code=None),  # also without a code: a case of its own
    )
    cases = mapping_cases(harvest)
    assert [c.record_count for c in cases] == [2, 1]
    client = admin_client()
    client.post(url(harvest, "mapping_draft"))
    client.post(
        url(harvest, "mapping_entry", "harvest_project_active"),
        {"vendor_value": "false", "canonical_value": "closed"},
    )
    page = text(client.get(url(harvest, "mapping_preview")))
    assert "v2 would fix 1 of 2 open cases</strong> (2 held payloads it reads)" in page
    assert f'<a href="/cases/{cases[0].pk}/">#{cases[0].pk}</a>' in page
    assert "Still: code (from code): required path &#x27;code&#x27; is null" in page
    assert "<strong>2</strong> read now, unreadable before" in page
    assert "<strong>1</strong> unchanged" in page  # the active project reads as before
    assert "<strong>1</strong> unreadable either way" in page

    preview = mapping_preview_run(mapping_set=draft_of(harvest), last=20)
    assert [c.case.pk for c in preview.fixed_cases] == [cases[0].pk]
    assert preview.fixed_records == 2
    assert sorted(r.sample.label for r in preview.changed_records) == [
        "projects 2 (P-2 Project 2)",
        "projects 3 (P-3 Project 3)",
    ]


def test_published_version_retries_the_cases_it_fixes_as_one_group(
    harvest: Connection, django_capture_on_commit_callbacks: Any
) -> None:
    held = receive(harvest, project(2, active=False), project(3, active=False))
    (case,) = mapping_cases(harvest)
    client = admin_client()
    client.post(url(harvest, "mapping_draft"))
    client.post(
        url(harvest, "mapping_entry", "harvest_project_active"),
        {"vendor_value": "false", "canonical_value": "closed"},
    )
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url(harvest, "mapping_publish"))
    page = text(client.get(url(harvest, "mapping_fixed")))
    assert "v2 reads every payload of 1 of 1 open case." in page
    assert "Retry the 1 fixed case" in page

    stale = client.post(
        url(harvest, "mapping_fixed"), {"case": [case.pk], f"revision-{case.pk}": case.revision + 5}
    )
    assert stale.status_code == 409
    assert "Nothing was retried." in text(stale)

    with django_capture_on_commit_callbacks(execute=True):
        retried = client.post(
            url(harvest, "mapping_fixed"), {"case": [case.pk], f"revision-{case.pk}": case.revision}
        )
    assert retried.status_code == 302
    assert f"Retried 1 case(s): #{case.pk} replayed 2 inbound message(s)" in text(
        client.get(retried["Location"])
    )
    replays = InboundMessage.objects.filter(replay_of__in=held)
    assert replays.count() == 2
    assert CaseEvent.objects.filter(case=case, action="retried").count() == 1
    event = AuditEvent.objects.filter(object_type="mappingset", changes__has_key="cases retried")
    assert event.get().changes["cases retried"] == [None, [case.pk]]


def test_retry_refuses_cases_of_another_object(harvest: Connection) -> None:
    other = ExceptionCase.objects.create(
        fingerprint="x",
        process="inbound",
        step="mapping",
        case_type="mapping_error",
        queue="integration_admin",
        subject={"object_type": "clients"},
        message="m",
        connection=harvest,
        first_seen_at="2026-11-20T10:00:00Z",
        last_seen_at="2026-11-20T10:00:00Z",
    )
    response = admin_client().post(
        url(harvest, "mapping_fixed"), {"case": [other.pk], f"revision-{other.pk}": 0}
    )
    assert response.status_code == 400
    assert "are not mapping cases of projects on this connection; nothing was retried" in text(
        response
    )


# -- checks that refuse a publish ---------------------------------------------------------------


def test_a_required_vendor_field_left_unmapped_is_refused_before_publishing() -> None:
    xero = make_connection(name="Xero", vendor="xero", role="erp")
    mapping_defaults_install(connection=xero)
    draft = mapping_set_create_draft(
        connection=xero, object_type="Invoices", canonical_model="invoice", actor=None
    )
    draft.fields.filter(vendor_path="Reference").delete()
    review = mapping_set_review(draft)
    assert review.errors == [
        "no outbound row writes Reference, which put_invoices requires: the vendor would "
        "refuse every record"
    ]
    client = admin_client()
    response = client.post(reverse("console:mapping_publish", args=[xero.pk, "Invoices"]))
    assert response.status_code == 400
    assert "no outbound row writes Reference, which put_invoices requires" in text(response)
    draft.refresh_from_db()
    assert draft.status == "draft"


def test_dropping_a_field_every_record_needs_is_refused(harvest: Connection) -> None:
    draft = mapping_set_create_draft(
        connection=harvest, object_type=PROJECTS, canonical_model="project", actor=None
    )
    draft.fields.filter(canonical_field="code").delete()
    assert "code: v1 reads it and this version does not, but every project needs one" in (
        mapping_set_review(draft).errors
    )


# -- four eyes ----------------------------------------------------------------------------------


def test_four_eyes_holds_a_publish_until_another_admin_approves(
    harvest: Connection, django_capture_on_commit_callbacks: Any
) -> None:
    ada, bob = admin_client("ada"), admin_client("bob")
    response = ada.post(reverse("console:mapping_settings"), {"mapping_four_eyes": "on"})
    assert response.status_code == 302
    assert ConsoleSettings.load().mapping_four_eyes
    setting = AuditEvent.objects.get(object_type="consolesettings")
    assert (setting.actor_label, setting.changes) == ("ada", {"mapping_four_eyes": [False, True]})

    ada.post(url(harvest, "mapping_draft"))
    ada.post(
        url(harvest, "mapping_entry", "harvest_project_active"),
        {"vendor_value": "false", "canonical_value": "closed"},
    )
    with django_capture_on_commit_callbacks(execute=True):
        published = ada.post(url(harvest, "mapping_publish"))
    assert "waits for another admin&#x27;s approval" in text(ada.get(published["Location"]))
    v2 = MappingSet.objects.get(connection=harvest, object_type=PROJECTS, version=2)
    assert (v2.status, v2.submitted_by.username) == ("pending", "ada")  # type: ignore[union-attr]
    # v1 stays in effect, with its value map.
    assert MappingSet.objects.get(version=1, connection=harvest, object_type=PROJECTS).status == (
        "published"
    )
    assert (
        not ValueMap.objects.get(name="harvest_project_active")
        .entries.filter(vendor_value="false")
        .exists()
    )
    assert "You published it: another admin approves it." in text(ada.get(url(harvest)))

    own = ada.post(url(harvest, "mapping_approve", 2))
    assert own.status_code == 400
    assert "Four-eyes: another admin must approve what you published." in text(own)
    # Nor can a draft be started meanwhile.
    blocked = ada.post(url(harvest, "mapping_draft"))
    assert "has v2 waiting for approval: approve or reject it first." in text(blocked)

    assert "Approve and publish v2" in text(bob.get(url(harvest)))
    with django_capture_on_commit_callbacks(execute=True):
        approved = bob.post(url(harvest, "mapping_approve", 2))
    assert approved.status_code == 302
    v2.refresh_from_db()
    assert (v2.status, v2.published_by.username) == ("published", "bob")  # type: ignore[union-attr]
    assert (
        ValueMap.objects.get(name="harvest_project_active")
        .entries.filter(vendor_value="false", canonical_value="closed")
        .exists()
    )
    events = AuditEvent.objects.filter(object_type="mappingset", object_id=str(v2.pk))
    assert {(e.actor_label, str(e.changes.get("status"))) for e in events} >= {
        ("ada", "['draft', 'pending']"),
        ("bob", "['pending', 'published']"),
    }


def test_four_eyes_reject_sends_the_version_back_to_draft_with_the_reason(
    harvest: Connection,
) -> None:
    ConsoleSettings.objects.update_or_create(pk=1, defaults={"mapping_four_eyes": True})
    ada, bob = admin_client("ada"), admin_client("bob")
    ada.post(url(harvest, "mapping_draft"))
    ada.post(url(harvest, "mapping_publish"))
    missing = bob.post(url(harvest, "mapping_reject", 2), {"reason": " "})
    assert missing.status_code == 400
    assert "Say why it is rejected" in text(missing)
    bob.post(url(harvest, "mapping_reject", 2), {"reason": "Map false to closed first."})
    v2 = MappingSet.objects.get(connection=harvest, object_type=PROJECTS, version=2)
    assert (v2.status, v2.submitted_by) == ("draft", None)
    history = text(ada.get(url(harvest, "mapping_versions")))
    assert "Map false to closed first." in history


# -- versions, diff, rollback, history ------------------------------------------------------------


def test_diff_rollback_and_history(
    harvest: Connection, django_capture_on_commit_callbacks: Any
) -> None:
    client = admin_client()
    client.post(url(harvest, "mapping_draft"))
    draft = draft_of(harvest)
    client.post(
        url(harvest, "mapping_entry", "harvest_project_active"),
        {"vendor_value": "false", "canonical_value": "closed"},
    )
    client.post(
        url(harvest, "mapping_field", draft.fields.get(canonical_field="budget").pk),
        {
            "canonical_field": "budget",
            "vendor_path": "budget",
            "direction": "both",
            "transform": "money",
            "options": '{"places": 2, "default": "0"}',
            "confirm": "on",
        },
    )
    draft.refresh_from_db()
    diff = mapping_versions_diff(
        MappingSet.objects.get(connection=harvest, object_type=PROJECTS, version=1), draft
    )
    assert [(c.key, c.kind, c.changes) for c in diff.fields] == [
        ("budget (both ways)", "changed", [("vendor_path", "cost_budget", "budget")])
    ]
    (vm,) = diff.value_maps
    assert (vm.name, vm.added, vm.removed, vm.changed) == (
        "harvest_project_active",
        [("false", "closed")],
        [],
        [],
    )
    page = text(client.get(url(harvest, "mapping_diff")))
    assert "From v1 to v2" in page
    assert "vendor_path: cost_budget → budget" in page
    assert "added false → closed" in page

    with django_capture_on_commit_callbacks(execute=True):
        client.post(url(harvest, "mapping_publish"))
    versions = text(client.get(url(harvest, "mapping_versions")))
    assert "Roll back to v1" in versions
    with django_capture_on_commit_callbacks(execute=True):
        rolled = client.post(url(harvest, "mapping_rollback", 1))
    assert rolled.status_code == 302
    assert "Rolled back: v3, a copy of v1 with its value maps, is published." in text(
        client.get(rolled["Location"])
    )
    v3 = MappingSet.objects.get(connection=harvest, object_type=PROJECTS, version=3)
    assert (v3.status, v3.based_on) == ("published", 1)
    assert v3.fields.get(canonical_field="budget").vendor_path == "cost_budget"
    assert dict(
        ValueMap.objects.get(name="harvest_project_active").entries.values_list(
            "vendor_value", "canonical_value"
        )
    ) == {"true": "active"}
    assert mapping_versions_diff(
        MappingSet.objects.get(connection=harvest, object_type=PROJECTS, version=1), v3
    ).empty

    history = text(client.get(url(harvest, "mapping_versions")))
    assert "<code>harvest_project_active: false</code>: — → closed" in history
    assert "<code>rollback_to</code>: — → 1" in history
    assert "ada" in history


def test_rolling_back_to_a_version_that_is_not_retired_is_refused(harvest: Connection) -> None:
    v1 = MappingSet.objects.get(connection=harvest, object_type=PROJECTS, version=1)
    with pytest.raises(Exception, match="only a retired version is rolled back to"):
        mapping_set_rollback(mapping_set=v1, actor=None)


def test_publishing_elsewhere_writes_the_draft_value_maps_and_keeps_a_copy(
    harvest: Connection,
) -> None:
    draft = mapping_set_create_draft(
        connection=harvest, object_type=PROJECTS, canonical_model="project", actor=None
    )
    draft_value_map_entry_set(
        mapping_set=draft,
        name="harvest_project_active",
        vendor_value="false",
        canonical_value="closed",
        actor=None,
    )
    published = mapping_set_publish(mapping_set=draft, actor=None)
    # The copy holds every map the version's rows read, the changed one as the draft left it.
    assert published.value_maps["harvest_project_active"] == {
        "entries": {"true": "active", "false": "closed"},
        "default": "",
    }
    read = {
        row.options["value_map"] for row in published.fields.all() if row.options.get("value_map")
    }
    assert set(published.value_maps) == read


def test_the_pages_read_a_bounded_number_of_queries(
    harvest: Connection, django_assert_max_num_queries: Any
) -> None:
    receive(harvest, *[project(n, active=n % 2 == 0) for n in range(1, 41)])
    client = admin_client()
    client.post(url(harvest, "mapping_draft"))
    for _ in range(3):  # versions and their history do not cost a query each
        mapping_set_publish(mapping_set=draft_of(harvest), actor=None)
        client.post(url(harvest, "mapping_draft"))
    for address, most in [
        (url(harvest), 30),
        (url(harvest, "mapping_preview"), 30),
        (url(harvest, "mapping_fixed"), 15),
        (url(harvest, "mapping_versions"), 15),
        (url(harvest, "mapping_diff"), 16),
        (reverse("console:mappings"), 10),
    ]:
        with django_assert_max_num_queries(most):
            assert client.get(address).status_code == 200


def test_under_four_eyes_the_admin_cannot_change_a_value_map_at_once(harvest: Connection) -> None:
    ConsoleSettings.objects.update_or_create(pk=1, defaults={"mapping_four_eyes": True})
    staff = Client()
    staff.force_login(User.objects.create_superuser("root", "root@example.invalid", "pw"))
    value_map = ValueMap.objects.get(name="harvest_project_active")
    change = f"/admin/integrations/valuemap/{value_map.pk}/change/"
    page = staff.get(change)
    assert page.status_code == 200  # shown, read-only
    assert 'name="entries-0-canonical_value"' not in page.content.decode()
    response = staff.post(change, {"name": value_map.name, "default": "closed"})
    assert response.status_code == 403
    value_map.refresh_from_db()
    assert value_map.default == ""
