"""The mapping editor (/config/mappings/): per connection, object and direction, the rows and
value maps of a mapping beside a real recent vendor payload and what it becomes; drafts edited
row by row and entry by entry (checked before each save), a preview against the latest payloads
and the open cases a draft would fix, publishing (or four-eyes approval), the retry of the cases
a published version fixes, versions with a diff between any two, rollback, and who changed what.

Views parse what was sent, call one service or selector (integrations/mapping/versions.py,
review.py, preview.py; integrations/workflows/mapping_release.py) and render. A write answers
with a redirect to the page it came from and a message saying what was done (a plain form post;
the editor's forms are ordinary forms); a refusal comes back on the page with its reasons (400).
Integration admins only (`admin_required`), on every view.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST

from exceptions.errors import HTTP_STATUS, CaseActionError
from exceptions.views.cases import pretty
from integrations.console.access import admin_required
from integrations.console.mapping_forms import (
    CsvImportForm,
    DefaultForm,
    DraftSettingsForm,
    EntryDeleteForm,
    EntryForm,
    FieldRowForm,
    FourEyesForm,
    NewValueMapForm,
    PreviewForm,
    RejectForm,
    RetryFixedForm,
)
from integrations.mapping.canonical import (
    BOOKKEEPING,
    OUTBOUND_FIELDS,
    VIRTUAL_MODELS,
    canonical_models,
)
from integrations.mapping.errors import EditNeedsConfirmation
from integrations.mapping.preview import (
    SampleResult,
    mapping_cases_check,
    mapping_outbound_preview,
    mapping_preview_run,
    mapping_sample_compare,
    open_mapping_cases,
)
from integrations.mapping.review import (
    SAMPLES_DEFAULT,
    mapping_set_review,
    recent_samples,
)
from integrations.mapping.selectors import mapping_set_compile
from integrations.mapping.services import UNPUBLISHED
from integrations.mapping.versions import (
    console_settings_update,
    draft_value_map_create,
    draft_value_map_default_set,
    draft_value_map_entry_delete,
    draft_value_map_entry_set,
    draft_value_map_import,
    draft_value_maps,
    four_eyes,
    mapping_draft_discard,
    mapping_draft_settings,
    mapping_draft_start,
    mapping_field_remove,
    mapping_field_save,
    mapping_history,
    mapping_objects,
    mapping_set_approve,
    mapping_set_reject,
    mapping_set_request_publish,
    mapping_set_rollback,
    mapping_version,
    mapping_versions,
    mapping_versions_diff,
    spec_of,
    value_map_csv,
)
from integrations.models import Connection, FieldMapping, MappingSet
from integrations.vendors import VENDORS
from integrations.workflows.mapping_release import mapping_fixed_cases_retry, outbound_samples

Status = MappingSet.Status
DIRECTIONS = {"in": "Inbound: vendor to Concord", "out": "Outbound: Concord to vendor"}
# Recent payloads the editor offers beside the mapping (each mapped on every view: ~1 ms).
SAMPLE_CHOICES = 10
# Audit events per page of a mapping's history (keyset paged by event id).
HISTORY_PAGE = 30


# -- where we are ------------------------------------------------------------------------------


def _object(connection_id: int, object_type: str) -> tuple[Connection, list[MappingSet]]:
    connection = get_object_or_404(Connection, pk=connection_id)
    versions = mapping_versions(connection=connection, object_type=object_type)
    entry = VENDORS.get(str(connection.vendor))
    shipped = {d.object_type for d in (entry.mappings if entry else ())}
    if not versions and object_type not in shipped:
        raise Http404(f"{connection.name} maps no {object_type}.")
    return connection, versions


def _of(versions: list[MappingSet], *statuses: str) -> MappingSet | None:
    return next((v for v in versions if v.status in statuses), None)


def _url(name: str, connection: Connection, object_type: str, **query: Any) -> str:
    url = reverse(f"console:{name}", args=[connection.pk, object_type])
    wanted = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{url}?{urlencode(wanted)}" if wanted else url


def _back(request: HttpRequest, connection: Connection, object_type: str) -> str:
    """The editor, on the direction the form was posted from."""
    direction = request.POST.get("tab") or request.GET.get("direction")
    return _url("mapping", connection, object_type, direction=direction)


def _done(request: HttpRequest, text: str, to: str) -> HttpResponse:
    messages.success(request, text)
    return redirect(to)


def _head(versions: list[MappingSet]) -> dict[str, MappingSet | None]:
    """What every mapping page's head shows (console/_mapping_head.html)."""
    return {
        "draft": _of(versions, Status.DRAFT),
        "pending": _of(versions, Status.PENDING),
        "published": _of(versions, Status.PUBLISHED),
    }


def _draft(versions: list[MappingSet]) -> MappingSet:
    draft = _of(versions, Status.DRAFT)
    if draft is None:
        raise ValidationError("There is no draft to change: create one from the published version.")
    return draft


# -- the index ---------------------------------------------------------------------------------


@require_GET
@admin_required
def mapping_index(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Every connection's mapped objects (a handful per connection, so one page without paging),
    filtered by connection and words, with the four-eyes setting."""
    connection_id = request.GET.get("connection", "")
    search = request.GET.get("q", "")
    objects = mapping_objects(
        connection_id=int(connection_id) if connection_id.isdigit() else None, search=search
    )
    if request.GET.get("format") == "csv":
        return _index_csv(objects)
    context = {
        "objects": objects,
        "connections": Connection.objects.order_by("name"),
        "connection_id": connection_id,
        "q": search,
        "pending": [o for o in objects if o.unpublished and o.unpublished.status == Status.PENDING],
        "four_eyes_form": FourEyesForm(initial={"mapping_four_eyes": four_eyes()}),
        "csv_query": urlencode({"connection": connection_id, "q": search, "format": "csv"}),
    }
    return render(request, "console/mappings.html", context)


def _index_csv(objects: list[Any]) -> StreamingHttpResponse:
    def rows() -> Any:
        yield "connection,object,canonical_model,published_version,unpublished,open_cases\n"
        for o in objects:
            unpublished = (
                f"v{o.unpublished.version} {o.unpublished.status}" if o.unpublished else ""
            )
            published = o.published.version if o.published else ""
            yield (
                f'"{o.connection.name}",{o.object_type},{o.canonical_model},{published},'
                f"{unpublished},{o.open_cases}\n"
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="mappings.csv"'
    return response


@require_POST
@admin_required
def mapping_settings(request: HttpRequest) -> HttpResponse:
    form = FourEyesForm(request.POST)
    form.is_valid()
    on = bool(form.cleaned_data.get("mapping_four_eyes"))
    console_settings_update(mapping_four_eyes=on, actor=request.user)
    text = (
        "Four eyes is on: a published mapping now waits for another admin's approval."
        if on
        else "Four eyes is off: a published mapping applies at once."
    )
    return _done(request, text, reverse("console:mappings"))


# -- the editor --------------------------------------------------------------------------------


def _canonical_choices(model_name: str) -> list[str]:
    model = canonical_models().get(model_name)
    names: list[str] = sorted(VIRTUAL_MODELS.get(model_name, ()))
    if model is not None:
        for target in model._meta.concrete_fields:
            if target.name in BOOKKEEPING:
                continue
            names.append(f"{target.name}__external_id" if target.is_relation else target.name)
    return sorted({*names, *OUTBOUND_FIELDS.get(model_name, ())})


def _paths(value: Any, prefix: str = "") -> list[str]:
    """Every path in a payload (lists by their first item), for the editor's suggestions."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            here = f"{prefix}.{key}" if prefix else str(key)
            found += [here, *_paths(item, here)]
        return found
    if isinstance(value, list) and value:
        return _paths(value[0], f"{prefix}.0")
    return []


def _json(value: Any) -> str:
    """A payload as the case pages show one (indented, cut when huge); "" for none."""
    return "" if value is None else pretty(value)


def shown(value: Any) -> str:
    """A canonical value as an admin compares it: dates as ISO, null as null."""
    if value is None:
        return "null"
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def _result_rows(result: SampleResult | None) -> list[dict[str, Any]]:
    """What a payload becomes, field by field: through the version shown and the published one."""
    if result is None or result.after is None:
        return []
    after = result.after.fields
    before = result.before.fields if result.before is not None else None
    rows = []
    for name in sorted(set(after) | set(before or {})):
        value = shown(after.get(name))
        was = shown(before.get(name)) if before is not None else value
        rows.append(
            {
                "name": name,
                "value": value,
                "before": was,
                "missing": name not in after,
                "changed": value != was,
            }
        )
    return rows


def _value_map_rows(
    shown: MappingSet, rows: list[FieldMapping], tables: dict[str, Any]
) -> list[dict[str, Any]]:
    """The value maps the rows on screen read (and, in a draft, those it created), each with
    which way its entries read."""
    readers: dict[str, list[FieldMapping]] = {}
    for row in rows:
        if row.transform == FieldMapping.Transform.VALUE_MAP:
            readers.setdefault(str((row.options or {}).get("value_map", "")), []).append(row)
    names = list(readers)
    if shown.status == Status.DRAFT:
        names += [n for n in (shown.value_maps or {}) if n not in names and n in tables]
    found = []
    for name in names:
        table = tables.get(name)
        keyed = any((r.options or {}).get("keyed_by") == "canonical" for r in readers.get(name, []))
        found.append(
            {
                "name": name,
                "table": table,
                "entries": sorted(table.entries.items()) if table else [],
                "readers": readers.get(name, []),
                "keyed_by_canonical": keyed,
                "changed": name in (shown.value_maps or {}) and shown.status in UNPUBLISHED,
            }
        )
    return found


def _editor(
    request: HttpRequest,
    connection: Connection,
    object_type: str,
    versions: list[MappingSet],
    *,
    status: int = 200,
    **forms: Any,
) -> HttpResponse:
    draft = _of(versions, Status.DRAFT)
    pending = _of(versions, Status.PENDING)
    published = _of(versions, Status.PUBLISHED)
    shown = draft or pending or published
    direction = request.GET.get("direction") or request.POST.get("tab") or ""
    context: dict[str, Any] = {
        "connection": connection,
        "object_type": object_type,
        "draft": draft,
        "pending": pending,
        "published": published,
        "shown": shown,
        "four_eyes": four_eyes(),
        "open_cases": open_mapping_cases(connection=connection, object_type=object_type),
        "directions": DIRECTIONS,
    }
    if shown is None:
        context["direction"] = direction or "in"
        return render(request, "console/mapping_editor.html", context, status=status)
    all_rows = list(shown.fields.all())
    if direction not in DIRECTIONS:
        has_in = any(r.direction in ("in", "both") for r in all_rows)
        direction = "in" if has_in or not all_rows else "out"
    rows = [r for r in all_rows if r.direction in (direction, "both")]
    blank = FieldRowForm(initial={"direction": direction, "transform": "copy"})
    editing, edit_form = request.GET.get("edit", ""), None
    if forms.get("row_form_of") is not None:  # an edit refused: the row's form as typed
        editing, edit_form = str(forms["row_form_of"]), forms["row_form"]
    else:
        edited = next((r for r in rows if str(r.pk) == editing), None)
        if edited is not None:
            edit_form = FieldRowForm(initial=FieldRowForm.initial_of(spec_of(edited)))
    compiled = mapping_set_compile(shown)
    samples = recent_samples(connection=connection, object_type=object_type, limit=SAMPLES_DEFAULT)
    review = mapping_set_review(shown, samples=samples, compiled=compiled)
    tables = draft_value_maps(shown)
    context.update(
        direction=direction,
        rows=rows,
        editing=editing,
        edit_form=edit_form,
        add_form=forms["row_form"] if "row_form" in forms and editing == "" else blank,
        review=review,
        value_maps=_value_map_rows(shown, rows, tables),
        canonical_choices=_canonical_choices(shown.canonical_model),
        value_map_names=sorted(tables),
        settings_form=forms.get("settings_form")
        or DraftSettingsForm(
            initial={
                "external_id_path": shown.external_id_path,
                "version_path": shown.version_path,
                "notes": shown.notes,
            }
        ),
        entry_form=forms.get("entry_form"),
        entry_form_map=forms.get("entry_form_of"),
        map_form=forms.get("map_form") or NewValueMapForm(),
        import_form=forms.get("import_form") or CsvImportForm(),
        import_form_map=forms.get("import_form_of"),
        refusal=forms.get("refusal"),
        reject_form=forms.get("reject_form") or RejectForm(),
    )
    if direction == "in":
        chosen = request.GET.get("sample", "")
        offered = samples[:SAMPLE_CHOICES]
        sample = next((s for s in offered if str(s.message.pk) == chosen), None) or next(
            (s for s in offered if s.record is not None), offered[0] if offered else None
        )
        result = None
        if sample is not None:
            (result,) = mapping_sample_compare(
                mapping_set=shown, samples=[sample], compiled=compiled
            )
        context.update(
            samples=offered,
            sample=sample,
            sample_json=_json(sample.record if sample and sample.record else None),
            result=result,
            result_rows=_result_rows(result),
            path_choices=sorted(set(_paths(sample.record))) if sample and sample.record else [],
        )
    else:
        records = outbound_samples(connection=connection, object_type=object_type)
        rendered = mapping_outbound_preview(
            mapping_set=shown, records=[(r.label, r.canonical, r.sent) for r in records]
        )
        context["outbound"] = [
            {
                "result": result,
                "sent": _json(result.sent),
                "after": _json(result.after),
                "before": _json(result.before),
            }
            for result in rendered
        ]
        context["path_choices"] = sorted({p for r in records if r.sent for p in _paths(r.sent)})
    return render(request, "console/mapping_editor.html", context, status=status)


@require_GET
@admin_required
def mapping_editor(request: HttpRequest, connection_id: int, object_type: str) -> HttpResponse:
    connection, versions = _object(connection_id, object_type)
    return _editor(request, connection, object_type, versions)


def _action(
    request: HttpRequest,
    connection_id: int,
    object_type: str,
    act: Callable[[Connection, list[MappingSet]], str],
    *,
    to: Callable[[Connection], str] | None = None,
    of: Any = None,
    **form: Any,
) -> HttpResponse:
    """Run one write; its summary as a message and back to the editor, or its refusal on the
    editor page (400): on the form it concerns, passed by the editor's name for it (e.g.
    `entry_form=form`, `of` the value map or row it is for), or at the top when none is."""
    connection, versions = _object(connection_id, object_type)
    try:
        text = act(connection, versions)
    except ValidationError as refused:
        shown: dict[str, Any] = {"refusal": refused.messages}
        if form:
            ((name, bound),) = form.items()
            shown = {name: _with(bound, refused), f"{name}_of": of}
        return _editor(request, connection, object_type, versions, status=400, **shown)
    target = to(connection) if to else _back(request, connection, object_type)
    return _done(request, text, target)


@require_POST
@admin_required
def draft_start(request: HttpRequest, connection_id: int, object_type: str) -> HttpResponse:
    def act(connection: Connection, versions: list[MappingSet]) -> str:
        draft = mapping_draft_start(
            connection=connection,
            object_type=object_type,
            canonical_model=request.POST.get("canonical_model", ""),
            actor=request.user,
        )
        source = f"a copy of v{draft.based_on}" if draft.based_on else "empty"
        return f"Draft v{draft.version} created ({source}). Nothing changes until it is published."

    return _action(request, connection_id, object_type, act)


@require_POST
@admin_required
def draft_discard(request: HttpRequest, connection_id: int, object_type: str) -> HttpResponse:
    def act(connection: Connection, versions: list[MappingSet]) -> str:
        draft = _draft(versions)
        mapping_draft_discard(mapping_set=draft, actor=request.user)
        return f"Draft v{draft.version} discarded."

    return _action(request, connection_id, object_type, act)


@require_POST
@admin_required
def draft_settings(request: HttpRequest, connection_id: int, object_type: str) -> HttpResponse:
    form = DraftSettingsForm(request.POST)

    def act(connection: Connection, versions: list[MappingSet]) -> str:
        if not form.is_valid():
            raise ValidationError("Check the draft's settings.")
        draft = _draft(versions)
        mapping_draft_settings(mapping_set=draft, actor=request.user, **form.cleaned_data)
        return "Draft settings saved."

    return _action(request, connection_id, object_type, act, settings_form=form)


def _with(form: Any, refused: ValidationError) -> Any:
    """The form with the service's reasons on it (as errors not tied to one field), unless
    they are the form's own (a field left empty)."""
    if form.is_bound:
        form.is_valid()
        own = {str(e) for errors in form.errors.values() for e in errors}
        for message in refused.messages:
            if message not in own:
                form.add_error(None, message)
    return form


@require_POST
@admin_required
def field_save(
    request: HttpRequest, connection_id: int, object_type: str, field_id: int | None = None
) -> HttpResponse:
    """Add a row to the draft, or change one (`field_id`)."""
    form = FieldRowForm(request.POST)

    def act(connection: Connection, versions: list[MappingSet]) -> str:
        if not form.is_valid():
            raise ValidationError("Check the row.")
        spec = form.spec()
        try:
            mapping_field_save(
                mapping_set=_draft(versions),
                spec=spec,
                field_id=field_id,
                actor=request.user,
                samples=recent_samples(
                    connection=connection, object_type=object_type, limit=SAMPLES_DEFAULT
                ),
                confirmed=bool(form.cleaned_data.get("confirm")),
            )
        except EditNeedsConfirmation as doubt:
            form.doubts = doubt.messages  # type: ignore[attr-defined]
            raise
        verb = "changed" if field_id else "added"
        return f"Row {spec.canonical_field} ← {spec.vendor_path} {verb} in the draft."

    return _action(request, connection_id, object_type, act, row_form=form, of=field_id)


@require_POST
@admin_required
def field_remove(
    request: HttpRequest, connection_id: int, object_type: str, field_id: int
) -> HttpResponse:
    def act(connection: Connection, versions: list[MappingSet]) -> str:
        mapping_field_remove(mapping_set=_draft(versions), field_id=field_id, actor=request.user)
        return "Row removed from the draft."

    return _action(request, connection_id, object_type, act)


@require_POST
@admin_required
def value_map_new(request: HttpRequest, connection_id: int, object_type: str) -> HttpResponse:
    form = NewValueMapForm(request.POST)

    def act(connection: Connection, versions: list[MappingSet]) -> str:
        if not form.is_valid():
            raise ValidationError("Check the value map's name.")
        draft = _draft(versions)
        draft_value_map_create(mapping_set=draft, actor=request.user, **form.cleaned_data)
        name = form.cleaned_data["name"]
        return (
            f"Value map {name} created in the draft: add its entries, and name it in a row "
            "(transform value-map lookup). It is created for everyone when the draft is published."
        )

    return _action(request, connection_id, object_type, act, map_form=form)


@require_POST
@admin_required
def entry_save(
    request: HttpRequest, connection_id: int, object_type: str, name: str
) -> HttpResponse:
    form = EntryForm(request.POST)

    def act(connection: Connection, versions: list[MappingSet]) -> str:
        if not form.is_valid():
            raise ValidationError("Both values are needed.")
        data = form.cleaned_data
        draft_value_map_entry_set(
            mapping_set=_draft(versions),
            name=name,
            vendor_value=data["vendor_value"],
            canonical_value=data["canonical_value"],
            was=data.get("was") or None,
            actor=request.user,
        )
        return (
            f"{name}: {data['vendor_value'].strip()} → {data['canonical_value'].strip()} saved in "
            "the draft."
        )

    return _action(request, connection_id, object_type, act, entry_form=form, of=name)


@require_POST
@admin_required
def entry_delete(
    request: HttpRequest, connection_id: int, object_type: str, name: str
) -> HttpResponse:
    form = EntryDeleteForm(request.POST)

    def act(connection: Connection, versions: list[MappingSet]) -> str:
        if not form.is_valid():
            raise ValidationError("Which entry?")
        value = form.cleaned_data["vendor_value"]
        draft_value_map_entry_delete(
            mapping_set=_draft(versions), name=name, vendor_value=value, actor=request.user
        )
        return f"{name}: the entry for {value} is removed in the draft."

    return _action(request, connection_id, object_type, act)


@require_POST
@admin_required
def default_save(
    request: HttpRequest, connection_id: int, object_type: str, name: str
) -> HttpResponse:
    form = DefaultForm(request.POST)

    def act(connection: Connection, versions: list[MappingSet]) -> str:
        form.is_valid()
        default = form.cleaned_data.get("default", "")
        draft_value_map_default_set(
            mapping_set=_draft(versions), name=name, default=default, actor=request.user
        )
        return (
            f"{name}: default set to {default} in the draft."
            if default.strip()
            else f"{name}: no default in the draft (a value without an entry opens a case)."
        )

    return _action(request, connection_id, object_type, act)


@require_POST
@admin_required
def entries_import(
    request: HttpRequest, connection_id: int, object_type: str, name: str
) -> HttpResponse:
    form = CsvImportForm(request.POST, request.FILES)

    def act(connection: Connection, versions: list[MappingSet]) -> str:
        if not form.is_valid():
            raise ValidationError("Choose a CSV file.")
        found = draft_value_map_import(
            mapping_set=_draft(versions),
            name=name,
            text=form.cleaned_data["file"],
            replace=bool(form.cleaned_data.get("replace")),
            actor=request.user,
        )
        return (
            f"{name}: {found.added} added, {found.changed} changed, {found.removed} removed, "
            f"{found.unchanged} unchanged in the draft."
        )

    return _action(request, connection_id, object_type, act, import_form=form, of=name)


@require_GET
@admin_required
def entries_export(
    request: HttpRequest, connection_id: int, object_type: str, name: str
) -> HttpResponse:
    """A value map as CSV, as the version asked for (`?version=`, else the editor's) has it."""
    _, versions = _object(connection_id, object_type)
    wanted = request.GET.get("version", "")
    shown = (
        next((v for v in versions if str(v.version) == wanted), None)
        if wanted
        else _of(versions, *UNPUBLISHED) or _of(versions, Status.PUBLISHED)
    )
    table = draft_value_maps(shown).get(name) if shown else None
    if shown is None or table is None:
        raise Http404(f"That version reads no value map {name}.")
    response = HttpResponse(value_map_csv(table), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}-v{shown.version}.csv"'
    return response


# -- preview, publish, approve, retry ----------------------------------------------------------


@require_GET
@admin_required
def mapping_preview(request: HttpRequest, connection_id: int, object_type: str) -> HttpResponse:
    """The draft (or the version pending approval) against the latest payloads and the open
    mapping cases; nothing is written. Reads the records change notifications name."""
    connection, versions = _object(connection_id, object_type)
    shown = _of(versions, *UNPUBLISHED)
    form = PreviewForm(request.GET or None)
    last = (form.cleaned_data.get("last") if form.is_valid() else None) or SAMPLES_DEFAULT
    context: dict[str, Any] = {
        "connection": connection,
        "object_type": object_type,
        "shown": shown,
        "form": form if form.is_bound else PreviewForm(initial={"last": last}),
        "four_eyes": four_eyes(),
        **_head(versions),
    }
    if shown is not None:
        context["preview"] = mapping_preview_run(mapping_set=shown, last=last)
        context["review"] = mapping_set_review(shown)
    return render(request, "console/mapping_preview.html", context)


@require_POST
@admin_required
def mapping_publish(request: HttpRequest, connection_id: int, object_type: str) -> HttpResponse:
    def act(connection: Connection, versions: list[MappingSet]) -> str:
        done = mapping_set_request_publish(mapping_set=_draft(versions), actor=request.user)
        if done.status == Status.PENDING:
            return (
                f"v{done.version} waits for another admin's approval (four eyes); "
                "the published version stays in effect until then."
            )
        return f"v{done.version} is published: the next records are mapped with it."

    def to(connection: Connection) -> str:
        return _url("mapping_fixed", connection, object_type)

    return _action(request, connection_id, object_type, act, to=to)


@require_POST
@admin_required
def mapping_approve(
    request: HttpRequest, connection_id: int, object_type: str, version: int
) -> HttpResponse:
    def act(connection: Connection, versions: list[MappingSet]) -> str:
        target = mapping_version(connection=connection, object_type=object_type, version=version)
        done = mapping_set_approve(mapping_set=target, actor=request.user)
        by = done.submitted_by.get_username() if done.submitted_by else "its publisher"
        return f"v{done.version} approved and published (published by {by})."

    def to(connection: Connection) -> str:
        return _url("mapping_fixed", connection, object_type)

    return _action(request, connection_id, object_type, act, to=to)


@require_POST
@admin_required
def mapping_reject(
    request: HttpRequest, connection_id: int, object_type: str, version: int
) -> HttpResponse:
    form = RejectForm(request.POST)

    def act(connection: Connection, versions: list[MappingSet]) -> str:
        target = mapping_version(connection=connection, object_type=object_type, version=version)
        form.is_valid()
        mapping_set_reject(
            mapping_set=target, actor=request.user, reason=form.cleaned_data.get("reason", "")
        )
        return f"v{version} is a draft again; the reason is in its history."

    return _action(request, connection_id, object_type, act, reject_form=form)


@admin_required
def mapping_fixed(request: HttpRequest, connection_id: int, object_type: str) -> HttpResponse:
    """The open mapping cases the published version now reads, and (POST) their retry as one
    group retry per root-cause group."""
    connection, versions = _object(connection_id, object_type)
    published = _of(versions, Status.PUBLISHED)
    outcome = None
    status = 200
    refusal: list[str] = []
    if request.method == "POST":
        if published is None:
            raise Http404("Nothing is published.")
        form = RetryFixedForm(request.POST)
        try:
            if not form.is_valid():
                raise ValidationError(list(form.non_field_errors()))
            outcome = mapping_fixed_cases_retry(
                actor=request.user, mapping_set=published, revisions=form.revisions
            )
        except ValidationError as refused:
            refusal, status = refused.messages, 400
        except CaseActionError as error:  # someone acted on a case since the page was shown
            refusal, status = [str(error)], HTTP_STATUS.get(type(error), 409)
        if outcome is not None:
            retried = [r for group in outcome for r in group.retried]
            messages.success(
                request,
                f"Retried {len(retried)} case(s): "
                + "; ".join(f"#{r.case_id} {r.summary}" for r in retried)
                + ". Each closes once its replayed messages are applied.",
            )
            return redirect(_url("mapping_fixed", connection, object_type))
    cases = mapping_cases_check(mapping_set=published) if published is not None else []
    context = {
        "connection": connection,
        "object_type": object_type,
        **_head(versions),
        "cases": cases,
        "fixed": [c for c in cases if c.fixes],
        "to_retry": [c for c in cases if c.fixes and not c.retried],
        "refusal": refusal,
    }
    return render(request, "console/mapping_fixed.html", context, status=status)


# -- versions, diff, rollback ------------------------------------------------------------------


@require_GET
@admin_required
def mapping_versions_page(
    request: HttpRequest, connection_id: int, object_type: str
) -> HttpResponse:
    connection, versions = _object(connection_id, object_type)
    before = request.GET.get("before", "")
    events = mapping_history(
        connection=connection,
        object_type=object_type,
        before=int(before) if before.isdigit() else None,
        limit=HISTORY_PAGE,
    )
    context = {
        "connection": connection,
        "object_type": object_type,
        "versions": versions,
        "events": events,
        "older": events[-1].pk if len(events) == HISTORY_PAGE else None,
        "unpublished": _of(versions, *UNPUBLISHED),
        "four_eyes": four_eyes(),
        **_head(versions),
    }
    return render(request, "console/mapping_versions.html", context)


@require_GET
@admin_required
def mapping_diff(request: HttpRequest, connection_id: int, object_type: str) -> HttpResponse:
    """What changes from version `a` to version `b` (by default the published version to the
    draft, or the one before the published to it)."""
    connection, versions = _object(connection_id, object_type)
    by_number = {str(v.version): v for v in versions}
    newest = _of(versions, *UNPUBLISHED) or _of(versions, Status.PUBLISHED)
    published = _of(versions, Status.PUBLISHED)
    default_a = published if newest is not published else None
    if default_a is None and newest is not None:
        default_a = next((v for v in versions if v.version < newest.version), None)
    a = by_number.get(request.GET.get("a", "")) or default_a
    b = by_number.get(request.GET.get("b", "")) or newest
    context = {
        "connection": connection,
        "object_type": object_type,
        "versions": versions,
        "a": a,
        "b": b,
        **_head(versions),
        "diff": mapping_versions_diff(a, b) if a is not None and b is not None else None,
    }
    return render(request, "console/mapping_diff.html", context)


@require_POST
@admin_required
def mapping_rollback(
    request: HttpRequest, connection_id: int, object_type: str, version: int
) -> HttpResponse:
    def act(connection: Connection, versions: list[MappingSet]) -> str:
        target = mapping_version(connection=connection, object_type=object_type, version=version)
        done = mapping_set_rollback(mapping_set=target, actor=request.user)
        if done.status == Status.PENDING:
            return (
                f"v{done.version}, a copy of v{version}, waits for another admin's approval "
                "(four eyes)."
            )
        return (
            f"Rolled back: v{done.version}, a copy of v{version} with its value maps, is published."
        )

    def to(connection: Connection) -> str:
        return _url("mapping_versions", connection, object_type)

    return _action(request, connection_id, object_type, act, to=to)


OBJECT = "mappings/<int:connection_id>/<str:object_type>/"
urlpatterns = [
    path("mappings/", mapping_index, name="mappings"),
    path("mappings/settings/", mapping_settings, name="mapping_settings"),
    path(OBJECT, mapping_editor, name="mapping"),
    path(f"{OBJECT}draft/", draft_start, name="mapping_draft"),
    path(f"{OBJECT}draft/discard/", draft_discard, name="mapping_discard"),
    path(f"{OBJECT}draft/settings/", draft_settings, name="mapping_draft_settings"),
    path(f"{OBJECT}fields/", field_save, name="mapping_field_add"),
    path(f"{OBJECT}fields/<int:field_id>/", field_save, name="mapping_field"),
    path(f"{OBJECT}fields/<int:field_id>/remove/", field_remove, name="mapping_field_remove"),
    path(f"{OBJECT}value-maps/", value_map_new, name="mapping_value_map_new"),
    path(f"{OBJECT}value-maps/<str:name>/entries/", entry_save, name="mapping_entry"),
    path(f"{OBJECT}value-maps/<str:name>/delete/", entry_delete, name="mapping_entry_delete"),
    path(f"{OBJECT}value-maps/<str:name>/default/", default_save, name="mapping_default"),
    path(f"{OBJECT}value-maps/<str:name>/import/", entries_import, name="mapping_import"),
    path(f"{OBJECT}value-maps/<str:name>/export/", entries_export, name="mapping_export"),
    path(f"{OBJECT}preview/", mapping_preview, name="mapping_preview"),
    path(f"{OBJECT}publish/", mapping_publish, name="mapping_publish"),
    path(f"{OBJECT}fixed/", mapping_fixed, name="mapping_fixed"),
    path(f"{OBJECT}versions/", mapping_versions_page, name="mapping_versions"),
    path(f"{OBJECT}diff/", mapping_diff, name="mapping_diff"),
    path(f"{OBJECT}v<int:version>/approve/", mapping_approve, name="mapping_approve"),
    path(f"{OBJECT}v<int:version>/reject/", mapping_reject, name="mapping_reject"),
    path(f"{OBJECT}v<int:version>/rollback/", mapping_rollback, name="mapping_rollback"),
]
