"""Configuration as files (/config/files/): download this installation's configuration (the
mappings, value maps, rules and connections, never a secret) as one JSON document, and upload
one exported elsewhere. An upload is always previewed first: a dry run lists, per section, what
is added, what changes (before -> after), what is removed or left alone, and what the services
would refuse, with nothing written; the button that applies it carries the hashes of the file
and of the changes shown, so what is applied is exactly what was previewed.

The uploaded file waits in the person's session between the preview and the apply (a
configuration is a few hundred kB at most; the session is in the database, so any web instance
answers the next request). Views parse, call integrations/workflows/config_files.py and render;
integration admins only (`admin_required`).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST

from exceptions.models import CaseRoute, SlaPolicy
from integrations.console.access import admin_required
from integrations.mapping.versions import four_eyes
from integrations.models import Connection, MappingSet, OwnershipRule, RoutingRule, ValueMap
from integrations.models.base import SystemRole
from integrations.workflows.config_files import (
    MAX_BYTES,
    SECTIONS,
    ConfigImport,
    config_document_text,
    config_export,
    config_import,
    config_imports,
    config_parse,
    document_sha256,
)
from integrations.workflows.errors import ConfigPreviewStale

SESSION_KEY = "concord_config_file"
KIND_WORDS = {
    "added": "Added",
    "changed": "Changed",
    "removed": "Removed",
    "left_alone": "Left alone",
}


class UploadForm(forms.Form):
    file = forms.FileField(
        label="Configuration file",
        help_text="A concord-config JSON file, as the download on this page writes it.",
    )

    def clean_file(self) -> dict[str, Any]:
        upload = self.cleaned_data["file"]
        if upload.size > MAX_BYTES:
            raise ValidationError(f"The file is larger than {MAX_BYTES // 1_000_000} MB.")
        return config_parse(upload.read())


class ApplyForm(forms.Form):
    sha256 = forms.CharField(max_length=64)
    diff_sha256 = forms.CharField(max_length=64)


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if value == "":
        return "(empty)"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _sections(result: ConfigImport) -> list[dict[str, Any]]:
    """The diff as the page lists it: per section, each item with its changes in words."""
    return [
        {
            "name": section.name,
            "title": section.title,
            "summary": section.summary(),
            "unchanged": section.unchanged,
            "items": [
                {
                    "kind": item.kind,
                    "kind_words": KIND_WORDS[item.kind],
                    "key": item.key,
                    "path": item.path,
                    "changes": [
                        (name, _show(before), _show(after)) for name, before, after in item.changes
                    ],
                    "note": item.note,
                    "outcome": item.outcome,
                    "refused": item.refused,
                }
                for kind in ("added", "changed", "removed", "left_alone")
                for item in section.of(kind)
            ],
        }
        for section in result.sections
    ]


def _imports() -> list[dict[str, Any]]:
    """The latest imports as the page lists them, from their audit events."""
    found = []
    for event in config_imports(limit=10):
        changes = event.changes or {}

        def after(name: str, changes: dict[str, Any] = changes) -> Any:
            pair = changes.get(name)
            return pair[1] if isinstance(pair, list) and len(pair) == 2 else None

        found.append(
            {
                "at": event.at,
                "actor": event.actor_label,
                "sha": str(after("configuration file") or "")[:12],
                "counts": ", ".join(
                    f"{after(kind) or 0} {kind}" for kind in ("added", "changed", "removed")
                ),
                "sections": "; ".join(
                    f"{title} {after(title)}" for _, title in SECTIONS if after(title)
                ),
            }
        )
    return found


def _totals(result: ConfigImport) -> str:
    counts = [f"{result.count(kind)} {KIND_WORDS[kind].lower()}" for kind in KIND_WORDS]
    return ", ".join([*counts, f"{result.unchanged} unchanged"])


def _page(request: HttpRequest, *, status: int = 200, **context: Any) -> HttpResponse:
    if "preview" in context:
        context["sections"] = _sections(context["preview"])
        context["totals"] = _totals(context["preview"])
    held = request.session.get(SESSION_KEY) or {}
    counts = [
        ("Connections", Connection.objects.count()),
        ("Value maps", ValueMap.objects.count()),
        ("Mappings (published)", MappingSet.objects.filter(status="published").count()),
        ("Ownership rules", OwnershipRule.objects.count()),
        ("Case routing rules", CaseRoute.objects.count()),
        ("SLA per priority", SlaPolicy.objects.count()),
        ("ERP routes", RoutingRule.objects.filter(role=SystemRole.ERP).count()),
    ]
    return render(
        request,
        "console/files.html",
        {
            "area": "files",
            "counts": counts,
            "form": context.pop("form", None) or UploadForm(),
            "held_name": held.get("name", ""),
            "four_eyes": four_eyes(),
            "imports": _imports(),
            **context,
        },
        status=status,
    )


@require_GET
@admin_required
def files_page(request: HttpRequest) -> HttpResponse:
    return _page(request)


@require_GET
@admin_required
def files_export(request: HttpRequest) -> HttpResponse:
    """The configuration as a file to download (the same document as /api/v1/config/export/)."""
    text = config_document_text(config_export())
    response = HttpResponse(text, content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="concord-config.json"'
    return response


@require_POST
@admin_required
def files_upload(request: HttpRequest) -> HttpResponse:
    """Keep the uploaded file for its preview (a file that is no configuration is refused here,
    in words)."""
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _page(request, status=400, form=form)
    document = form.cleaned_data["file"]
    upload = request.FILES.get("file")
    request.session[SESSION_KEY] = {
        "sha256": document_sha256(document),
        "text": json.dumps(document, ensure_ascii=False),
        "name": str(getattr(upload, "name", "") or "the file")[:200],
    }
    return redirect("console:files_preview")


def _held(request: HttpRequest) -> dict[str, Any] | None:
    held = request.session.get(SESSION_KEY)
    return held if isinstance(held, dict) and "text" in held else None


@require_GET
@admin_required
def files_preview(request: HttpRequest) -> HttpResponse:
    """The dry run of the file held: what it would change; nothing is written."""
    held = _held(request)
    if held is None:
        messages.info(request, "Upload a configuration file to preview it.")
        return redirect("console:files")
    return _preview(request, held)


def _preview(
    request: HttpRequest, held: dict[str, Any], *, status: int = 200, problems: Any = None
) -> HttpResponse:
    try:
        result = config_import(document=json.loads(held["text"]), actor=request.user, dry_run=True)
    except ValidationError as refused:
        return _page(request, status=400, problems=refused.messages, held_name=held["name"])
    return _page(
        request,
        status=status,
        preview=result,
        problems=problems,
        apply_form=ApplyForm(initial={"sha256": result.sha256, "diff_sha256": result.diff_sha256}),
    )


@require_POST
@admin_required
def files_apply(request: HttpRequest) -> HttpResponse:
    """Apply the file held, if it is the one previewed and the changes are those shown."""
    held = _held(request)
    form = ApplyForm(request.POST)
    if held is None or not form.is_valid():
        messages.error(request, "Nothing to apply: upload the file and preview it first.")
        return redirect("console:files")
    try:
        result = config_import(
            document=json.loads(held["text"]),
            actor=request.user,
            dry_run=False,
            sha256=form.cleaned_data["sha256"],
            diff_sha256=form.cleaned_data["diff_sha256"],
        )
    except ConfigPreviewStale as stale:
        return _preview(request, held, status=409, problems=stale.messages)
    except ValidationError as refused:
        return _page(request, status=400, problems=refused.messages, held_name=held["name"])
    if not result.applied:
        return _page(
            request,
            status=400,
            preview=result,
            problems=["Nothing was applied: " + "; ".join(result.refusals or ["no change"])],
        )
    del request.session[SESSION_KEY]
    outcomes = [
        f"{item.key}: {item.outcome}"
        for section in result.sections
        if section.name == "mappings"
        for item in section.items
        if item.outcome
    ]
    messages.success(
        request,
        f"{held['name']} applied: {result.count('added')} added, {result.count('changed')} "
        f"changed, {result.count('removed')} removed."
        + (f" Mappings: {'; '.join(outcomes)}." if outcomes else ""),
    )
    return redirect(reverse("console:files"))


urlpatterns = [
    path("files/", files_page, name="files"),
    path("files/export/", files_export, name="files_export"),
    path("files/upload/", files_upload, name="files_upload"),
    path("files/preview/", files_preview, name="files_preview"),
    path("files/apply/", files_apply, name="files_apply"),
]
