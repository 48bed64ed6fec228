from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from integrations import models as m
from integrations.api.filters import RECORD_FILTERS
from integrations.services.config_rows import (
    config_row_create,
    config_row_delete,
    config_row_update,
)
from integrations.services.connections import (
    connection_create,
    connection_credentials_check,
    connection_update,
)
from integrations.sync.inbound import inbound_replay
from integrations.sync.outbox import outbox_replay
from integrations.sync.records import record_create, record_delete, record_update

# Admins type URLs without a scheme; https is the right guess (and Django 6's default).
URL_FORMFIELD: dict[type[models.Field[Any, Any]], dict[str, Any]] = {
    models.URLField: {"assume_scheme": "https"}
}
SYNC_FIELDS = ("source_system", "source_version", "field_sources", "created_at", "updated_at")


class ServiceWrittenAdmin(admin.ModelAdmin[Any]):
    """An admin whose saves and deletes go through an audited service, as the API's do. The form
    checks what a person typed; a subclass names the service."""

    def create(self, *, model: type[Any], data: dict[str, Any], actor: Any) -> Any:
        raise NotImplementedError

    def update(self, *, obj: Any, data: dict[str, Any], actor: Any) -> None:
        raise NotImplementedError

    def delete(self, *, obj: Any, actor: Any) -> None:
        raise NotImplementedError

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        names = {f.name for f in obj._meta.concrete_fields}
        if change:
            edited = {n: form.cleaned_data[n] for n in form.changed_data if n in names}
            self.update(obj=obj, data=edited, actor=request.user)
        else:
            data = {n: form.cleaned_data[n] for n in form.fields if n in names}
            obj.pk = self.create(model=type(obj), data=data, actor=request.user).pk

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self.delete(obj=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():
            for obj in queryset:
                self.delete(obj=obj, actor=request.user)


class RecordAdmin(ServiceWrittenAdmin):
    """A canonical record's admin: the one write path (validated, stamped as the person's,
    audited)."""

    def create(self, *, model: type[Any], data: dict[str, Any], actor: Any) -> Any:
        return record_create(model=model, data=data, actor=actor)

    def update(self, *, obj: Any, data: dict[str, Any], actor: Any) -> None:
        record_update(record=obj, data=data, actor=actor)

    def delete(self, *, obj: Any, actor: Any) -> None:
        record_delete(record=obj, actor=actor)


class ConfigRowAdmin(ServiceWrittenAdmin):
    """A configuration row's admin: validated and audited (integrations/services/config_rows)."""

    def create(self, *, model: type[Any], data: dict[str, Any], actor: Any) -> Any:
        return config_row_create(model=model, data=data, actor=actor)

    def update(self, *, obj: Any, data: dict[str, Any], actor: Any) -> None:
        config_row_update(row=obj, data=data, actor=actor)

    def delete(self, *, obj: Any, actor: Any) -> None:
        config_row_delete(row=obj, actor=actor)


def _record_admin(model: type[m.CanonicalRecord]) -> type[admin.ModelAdmin[Any]]:
    concrete = [f.name for f in model._meta.concrete_fields if f.name not in SYNC_FIELDS]
    simple_filters = [
        name
        for name in RECORD_FILTERS[model]
        if not model._meta.get_field(name).is_relation
        and name not in {"name", "email", "number", "code"}
    ]
    attrs = {
        "list_display": ["__str__", *concrete[1:6], "source_system", "updated_at"],
        "list_filter": simple_filters[:4],
        "readonly_fields": SYNC_FIELDS,
        "search_fields": [f for f in ("name", "code", "number", "email") if f in concrete],
        "list_select_related": True,
        "formfield_overrides": URL_FORMFIELD,
        "show_full_result_count": False,
        "raw_id_fields": [
            f.name for f in model._meta.concrete_fields if f.is_relation and f.name != "id"
        ],
    }
    return type(f"{model.__name__}Admin", (RecordAdmin,), attrs)


for _model in RECORD_FILTERS:
    admin.site.register(_model, _record_admin(_model))


class ConnectionForm(forms.ModelForm[m.Connection]):
    # Declared rather than left to the admin's URL_FORMFIELD: the form class builds its model
    # fields when it is defined, where the admin's overrides do not reach.
    base_url = forms.URLField(max_length=500, assume_scheme="https")
    new_credentials = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "autocomplete": "off"}),
        help_text=(
            'JSON object of secrets to add or replace, e.g. {"client_secret": "..."}; a null '
            "value removes a key. Stored values are encrypted and never shown again. A new base "
            "URL or token URL host needs every stored key given again (or null) here."
        ),
    )

    class Meta:
        model = m.Connection
        fields = [
            "name",
            "role",
            "vendor",
            "base_url",
            "rate_limit_per_minute",
            "max_concurrency",
            "enabled",
        ]

    def clean_new_credentials(self) -> dict[str, str | None]:
        raw = self.cleaned_data.get("new_credentials") or ""
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} at line {exc.lineno}.") from exc
        if not isinstance(value, dict) or not all(
            isinstance(v, str) or v is None for v in value.values()
        ):
            raise forms.ValidationError("Give a JSON object of string (or null) values.")
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.instance.pk is None or "base_url" not in cleaned:
            return cleaned
        # The service refuses a change that sends the stored credentials to a new origin
        # without them entered again; asked here too, so the person sees a form error.
        try:
            connection_credentials_check(
                connection=self.instance,
                base_url=cleaned["base_url"],
                credentials=cleaned.get("new_credentials") or {},
            )
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                self.add_error("new_credentials" if field == "credentials" else field, messages)
        return cleaned


@admin.register(m.Connection)
class ConnectionAdmin(admin.ModelAdmin[m.Connection]):
    form = ConnectionForm
    list_display = ["name", "role", "vendor", "base_url", "enabled", "credential_keys"]
    list_filter = ["role", "vendor", "enabled"]
    readonly_fields = ["credential_keys", "sent_to", "created_at", "updated_at"]
    search_fields = ["name"]

    def save_model(self, request: HttpRequest, obj: m.Connection, form: Any, change: bool) -> None:
        fields = {name: form.cleaned_data[name] for name in ConnectionForm.Meta.fields}
        credentials = form.cleaned_data.get("new_credentials") or {}
        if change:
            connection_update(connection=obj, credentials=credentials, actor=request.user, **fields)
        else:
            created = connection_create(
                credentials={k: v for k, v in credentials.items() if v is not None},
                actor=request.user,
                **fields,
            )
            obj.pk = created.pk

    @admin.display(description="Credentials may be sent to")
    def sent_to(self, obj: m.Connection) -> str:
        return ", ".join(obj.credential_origins or ()) if obj.credentials else "-"


@admin.register(m.CrossReference)
class CrossReferenceAdmin(ConfigRowAdmin):
    list_display = ["content_type", "object_id", "connection", "external_id", "last_synced_at"]
    list_filter = ["connection", "content_type"]
    search_fields = ["external_id"]
    list_select_related = ["content_type", "connection"]


@admin.register(m.OwnershipRule)
class OwnershipRuleAdmin(ConfigRowAdmin):
    list_display = ["object_type", "field", "owner_role", "note"]
    list_filter = ["owner_role", "object_type"]


@admin.register(m.Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin[m.Heartbeat]):
    list_display = ["component", "hostname", "seen_at"]
    readonly_fields = ["component", "hostname", "seen_at"]


class _ReadOnly(admin.ModelAdmin[Any]):
    """Rows written by the system (the sync engine, the audit trail): shown, never edited by
    hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(m.AuditEvent)
class AuditEventAdmin(_ReadOnly):
    list_display = ["at", "actor_label", "action", "object_type", "object_id", "object_repr"]
    list_filter = ["action", "object_type"]
    search_fields = ["object_id", "object_repr", "actor_label"]
    readonly_fields = [f.name for f in m.AuditEvent._meta.fields]


@admin.register(m.RoutingRule)
class RoutingRuleAdmin(ConfigRowAdmin):
    list_display = ["role", "legal_entity", "connection"]
    list_filter = ["role"]


@admin.register(m.OutboxMessage)
class OutboxMessageAdmin(_ReadOnly):
    list_display = ["id", "connection", "process", "step", "state", "attempts", "next_attempt_at"]
    list_filter = ["state", "process", "connection"]
    search_fields = ["idempotency_key", "last_error"]
    list_select_related = ["connection"]
    show_full_result_count = False
    actions = ["replay"]

    @admin.action(description="Replay selected parked messages", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: Any) -> None:
        parked = list(queryset.filter(state=m.OutboxMessage.State.PARKED))
        replays = outbox_replay(messages=parked)
        self.message_user(request, f"{len(replays)} parked message(s) queued again.")

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("integrations.change_outboxmessage")


@admin.register(m.InboundMessage)
class InboundMessageAdmin(_ReadOnly):
    list_display = ["id", "connection", "source", "object_type", "external_id", "state"]
    list_filter = ["state", "source", "connection", "object_type"]
    search_fields = ["external_id", "dedupe_key", "error"]
    list_select_related = ["connection"]
    show_full_result_count = False
    actions = ["replay"]

    @admin.action(description="Replay selected messages", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: Any) -> None:
        replays = inbound_replay(messages=list(queryset))
        self.message_user(request, f"{len(replays)} message(s) queued for processing again.")

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("integrations.change_inboundmessage")


@admin.register(m.SyncAttempt)
class SyncAttemptAdmin(_ReadOnly):
    list_display = ["started_at", "connection", "operation", "outcome", "status_code", "latency_ms"]
    list_filter = ["outcome", "connection", "operation"]
    show_full_result_count = False


@admin.register(m.ConnectionHealth)
class ConnectionHealthAdmin(_ReadOnly):
    list_display = ["connection", "circuit_state", "consecutive_failures", "last_success_at"]


@admin.register(m.PollCursor)
class PollCursorAdmin(_ReadOnly):
    list_display = ["connection", "object_type", "position", "last_polled_at", "last_success_at"]


# The mapping admin lives with the mapping code.
from integrations.mapping import admin as _mapping_admin  # noqa: F401,E402
