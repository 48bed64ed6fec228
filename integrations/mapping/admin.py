"""Admin for mapping configuration: MappingSet versions with their fields, and value maps.

A draft is edited freely; publishing goes through `mapping_set_request_publish` (the console's
checks, four eyes when it is on; then `mapping_set_publish` retires the previous version and
reloads workers). Published and retired versions are read-only: to change one,
use "New draft from selected", edit, preview, publish. The change page previews the version on the
latest stored inbound payloads of its connection and object.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from integrations.mapping.apply import CompiledMapping
from integrations.mapping.selectors import mapping_cache_bump, mapping_set_compile
from integrations.mapping.services import (
    mapping_preview,
    mapping_set_create_draft,
    mapping_set_problems,
    value_map_create,
    value_map_set_entries,
)
from integrations.mapping.versions import four_eyes, mapping_set_request_publish
from integrations.models import (
    FieldMapping,
    InboundMessage,
    MappingSet,
    ValueMap,
    ValueMapEntry,
)

PREVIEW_PAYLOADS = 5  # enough to spot a pattern; each is mapped on every page view


def _editable(obj: MappingSet | None) -> bool:
    return obj is None or obj.status == MappingSet.Status.DRAFT


_COMPILED = "_admin_compiled_mapping"


def _compiled(obj: MappingSet) -> CompiledMapping:
    """The version compiled once per page: its problems and its preview both read it."""
    compiled: CompiledMapping | None = obj.__dict__.get(_COMPILED)
    if compiled is None:
        compiled = obj.__dict__[_COMPILED] = mapping_set_compile(obj)
    return compiled


class FieldMappingInline(admin.TabularInline[FieldMapping, MappingSet]):
    model = FieldMapping
    extra = 0
    fields = [
        "position",
        "canonical_field",
        "vendor_path",
        "direction",
        "transform",
        "options",
        "required",
    ]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _editable(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _editable(obj) and super().has_delete_permission(request, obj)


class MappingSetForm(forms.ModelForm[MappingSet]):
    class Meta:
        model = MappingSet
        fields = [
            "connection",
            "object_type",
            "canonical_model",
            "external_id_path",
            "version_path",
            "notes",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk is None and data.get("connection") and data.get("object_type"):
            exists = MappingSet.objects.filter(
                connection=data["connection"], object_type=data["object_type"]
            ).exists()
            if exists:
                raise ValidationError(
                    "This object already has versions: select one in the list and use "
                    "“New draft from selected”."
                )
        return data


@admin.register(MappingSet)
class MappingSetAdmin(admin.ModelAdmin[MappingSet]):
    form = MappingSetForm
    inlines = [FieldMappingInline]
    list_display = [
        "object_type",
        "canonical_model",
        "connection",
        "version",
        "status",
        "published_at",
        "published_by",
    ]
    list_filter = ["status", "connection", "canonical_model"]
    search_fields = ["object_type", "canonical_model"]
    list_select_related = ["connection", "published_by"]
    readonly_fields = ["version", "status", "published_at", "published_by", "problems", "preview"]
    actions = ["publish_selected", "new_draft_from_selected"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _editable(obj) and super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: MappingSet, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created = mapping_set_create_draft(
            connection=form.cleaned_data["connection"],
            object_type=form.cleaned_data["object_type"],
            canonical_model=form.cleaned_data["canonical_model"],
            external_id_path=form.cleaned_data["external_id_path"],
            version_path=form.cleaned_data["version_path"],
            notes=form.cleaned_data["notes"],
            actor=request.user,
        )
        obj.pk, obj.version, obj.status = created.pk, created.version, created.status

    @admin.display(description="Problems that block publishing")
    def problems(self, obj: MappingSet) -> SafeString | str:
        if obj.pk is None or obj.status != MappingSet.Status.DRAFT:
            return "—"
        found = mapping_set_problems(obj, compiled=_compiled(obj))
        if not found:
            return "None: ready to publish."
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((p,) for p in found))
        )

    @admin.display(description="Preview on stored payloads")
    def preview(self, obj: MappingSet) -> SafeString | str:
        if obj.pk is None:
            return "—"
        payloads = list(
            InboundMessage.objects.filter(
                connection_id=obj.connection_id, object_type=obj.object_type
            ).values_list("payload", flat=True)[:PREVIEW_PAYLOADS]
        )
        if not payloads:
            return "No stored inbound payloads for this connection and object yet."
        rows = []
        for record in mapping_preview(mapping_set=obj, payloads=payloads, compiled=_compiled(obj)):
            fields = "; ".join(f"{k}={v!r}" for k, v in record.fields.items())
            errors = "; ".join(str(e) for e in record.errors) or "none"
            rows.append((record.external_id or "?", record.source_version, fields, errors))
        return format_html(
            "<table><tr><th>external id</th><th>source version</th><th>fields</th>"
            "<th>errors</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.action(description="Publish selected drafts", permissions=["change"])
    def publish_selected(self, request: HttpRequest, queryset: QuerySet[MappingSet]) -> None:
        for mapping_set in queryset.select_related("connection"):
            try:
                # The console's checks and, when it is on, four eyes (integrations/mapping/
                # versions.py): the admin is no way around a second admin's approval.
                done = mapping_set_request_publish(mapping_set=mapping_set, actor=request.user)
            except ValidationError as exc:
                self.message_user(
                    request,
                    f"{mapping_set} not published: {'; '.join(exc.messages)}",
                    messages.ERROR,
                )
            else:
                waits = done.status == MappingSet.Status.PENDING
                text = "waits for another admin's approval" if waits else "published"
                self.message_user(request, f"{mapping_set} {text}.", messages.SUCCESS)

    @admin.action(description="New draft from selected", permissions=["add"])
    def new_draft_from_selected(self, request: HttpRequest, queryset: QuerySet[MappingSet]) -> None:
        for mapping_set in queryset.select_related("connection"):
            try:
                draft = mapping_set_create_draft(
                    connection=mapping_set.connection,
                    object_type=mapping_set.object_type,
                    canonical_model=mapping_set.canonical_model,
                    from_version=mapping_set.version,
                    actor=request.user,
                )
            except ValidationError as exc:
                self.message_user(request, "; ".join(exc.messages), messages.ERROR)
            else:
                self.message_user(request, f"Draft {draft} created.", messages.SUCCESS)


class ValueMapEntryInline(admin.TabularInline[ValueMapEntry, ValueMap]):
    model = ValueMapEntry
    extra = 1
    fields = ["vendor_value", "canonical_value"]


@admin.register(ValueMap)
class ValueMapAdmin(admin.ModelAdmin[ValueMap]):
    """Entries and the default are written by the value map services (audited, and workers
    reload after the commit), not by the inline formset."""

    inlines = [ValueMapEntryInline]
    list_display = ["name", "description", "default"]
    search_fields = ["name", "description", "entries__vendor_value"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Under four eyes a value map changes only with a mapping version another admin
        # approves (the console's editor): editing it here would apply at once.
        return super().has_change_permission(request, obj) and not four_eyes()

    def save_model(self, request: HttpRequest, obj: ValueMap, form: Any, change: bool) -> None:
        if not change:
            return  # created with its entries in save_related
        fields = [name for name in form.changed_data if name != "default"]
        if fields:
            obj.save(update_fields=fields)
        if "name" in fields:
            # Mappings name the maps they use: workers must reload them.
            transaction.on_commit(mapping_cache_bump)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        value_map: ValueMap = form.instance
        entries = _entries(formsets)
        default = form.cleaned_data.get("default", value_map.default)
        if change:
            if entries is None:  # the entries were not on the page: leave them as they are
                entries = dict(value_map.entries.values_list("vendor_value", "canonical_value"))
            value_map_set_entries(
                value_map=value_map, entries=entries, default=default, actor=request.user
            )
            return
        created = value_map_create(
            name=form.cleaned_data["name"],
            entries=entries or {},
            default=default,
            description=form.cleaned_data.get("description", ""),
            actor=request.user,
        )
        value_map.pk = created.pk

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> list[dict[str, Any]]:
        # The formsets were not saved (the service wrote the entries), so they have nothing to
        # describe; the audit event has the entries before and after.
        message = super().construct_change_message(request, form, [], add)
        if not add and any(formset.has_changed() for formset in formsets):
            message.append({"changed": {"fields": ["entries"]}})
        return message


def _entries(formsets: Iterable[BaseInlineFormSet[Any, Any, Any]]) -> dict[str, str] | None:
    """vendor value -> canonical value as submitted, or None when the page had no entries."""
    formset = next((f for f in formsets if f.model is ValueMapEntry), None)
    if formset is None:
        return None
    entries: dict[str, str] = {}
    for entry_form in formset.forms:
        data = entry_form.cleaned_data
        if data.get("DELETE"):
            continue
        # A read-only row (view permission only) submits nothing: keep what it shows.
        entry = entry_form.instance
        vendor_value = data.get("vendor_value", entry.vendor_value)
        if vendor_value:  # an untouched blank row has none
            entries[vendor_value] = data.get("canonical_value", entry.canonical_value)
    return entries
