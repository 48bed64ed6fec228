"""/api/v1/mappings/: the mapping versions the console edits (integrations/console/mappings.py),
for scripts: list and read versions (rows, value maps as the version has them, its checks),
compare two, preview one against the latest payloads and the open cases it would fix, and
publish (or, under four eyes, ask for approval), approve, reject and roll back, through the same
services and checks as the pages. Integration admins only, as the console (403 for anyone else).
Drafts are edited in the console."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations.console.access import CONSOLE_PERMISSION
from integrations.mapping.preview import mapping_preview_run
from integrations.mapping.review import SAMPLES_DEFAULT, SAMPLES_MAX, mapping_set_review
from integrations.mapping.selectors import field_specs
from integrations.mapping.versions import (
    draft_value_maps,
    mapping_set_approve,
    mapping_set_reject,
    mapping_set_request_publish,
    mapping_set_rollback,
    mapping_versions_diff,
)
from integrations.models import MappingSet


class IntegrationAdmin(BasePermission):
    message = "Mappings are for integration admins."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user and request.user.has_perm(CONSOLE_PERMISSION))


class MappingSetSerializer(serializers.ModelSerializer[MappingSet]):
    connection_name = serializers.CharField(source="connection.name", read_only=True)
    # Text, not an enum of its own in the schema (one "status" enum name per schema).
    status = serializers.CharField(
        read_only=True, help_text="draft, pending (approval), published or retired"
    )
    submitted_by = serializers.CharField(
        source="submitted_by.username", read_only=True, allow_null=True, default=None
    )
    published_by = serializers.CharField(
        source="published_by.username", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = MappingSet
        fields = [
            "id",
            "connection",
            "connection_name",
            "object_type",
            "canonical_model",
            "version",
            "status",
            "based_on",
            "external_id_path",
            "version_path",
            "notes",
            "created_at",
            "submitted_by",
            "submitted_at",
            "published_by",
            "published_at",
        ]
        read_only_fields = fields


class ValueMapSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    entries = serializers.DictField(child=serializers.CharField())
    default = serializers.CharField(allow_null=True)


class MappingDetailSerializer(MappingSetSerializer):
    """A version with its rows, the value maps as it has them, and its checks."""

    rows = serializers.SerializerMethodField()
    value_maps = serializers.SerializerMethodField()
    review = serializers.SerializerMethodField()

    class Meta(MappingSetSerializer.Meta):
        fields = [*MappingSetSerializer.Meta.fields, "rows", "value_maps", "review"]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_rows(self, instance: MappingSet) -> list[dict[str, Any]]:
        return [
            {
                "canonical_field": spec.canonical_field,
                "vendor_path": spec.vendor_path,
                "direction": spec.direction,
                "transform": spec.transform,
                "options": dict(spec.options),
                "required": spec.required,
            }
            for spec in field_specs(instance.fields.all())
        ]

    @extend_schema_field(ValueMapSerializer(many=True))
    def get_value_maps(self, instance: MappingSet) -> list[dict[str, Any]]:
        return [
            {"name": name, "entries": dict(table.entries), "default": table.default}
            for name, table in sorted(draft_value_maps(instance).items())
        ]

    @extend_schema_field(serializers.DictField(child=serializers.ListField()))
    def get_review(self, instance: MappingSet) -> dict[str, list[str]]:
        review = mapping_set_review(instance)
        return {"errors": review.errors, "warnings": review.warnings}


class DiffSerializer(serializers.Serializer[Any]):
    settings = serializers.ListField(child=serializers.ListField())
    rows = serializers.ListField(child=serializers.DictField())
    value_maps = serializers.ListField(child=serializers.DictField())


class PreviewCaseSerializer(serializers.Serializer[Any]):
    case = serializers.IntegerField()
    held = serializers.IntegerField()
    read = serializers.IntegerField()
    fixed = serializers.BooleanField()
    still = serializers.ListField(child=serializers.CharField())


class PreviewSerializer(serializers.Serializer[Any]):
    version = serializers.IntegerField()
    baseline = serializers.IntegerField(allow_null=True)
    payloads = serializers.DictField(child=serializers.IntegerField())
    changed_records = serializers.ListField(child=serializers.DictField())
    cases = PreviewCaseSerializer(many=True)
    fixes_cases = serializers.IntegerField()
    fixes_records = serializers.IntegerField()


class RejectSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=500)


def _refused(error: ValidationError) -> Response:
    return Response({"detail": error.messages}, status=status.HTTP_400_BAD_REQUEST)


class MappingSetViewSet(viewsets.ReadOnlyModelViewSet[MappingSet]):
    """Mapping versions (drafts, pending approval, published, retired), newest first; filter by
    connection, object_type and status."""

    permission_classes = [IntegrationAdmin]
    serializer_class = MappingSetSerializer
    filterset_fields = ["connection", "object_type", "status"]
    ordering_fields = ["version", "created_at", "published_at"]

    def get_queryset(self) -> QuerySet[MappingSet]:
        return MappingSet.objects.select_related(
            "connection", "submitted_by", "published_by"
        ).order_by("connection", "object_type", "-version")

    def get_serializer_class(self) -> Any:
        return MappingDetailSerializer if self.action == "retrieve" else MappingSetSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("against", OpenApiTypes.INT, description="The other version's id.")
        ],
        responses=DiffSerializer,
    )
    @action(detail=True, methods=["get"])
    def diff(self, request: Request, pk: str | None = None) -> Response:
        """What changes from version `against` to this one."""
        version = self.get_object()
        other = (
            self.get_queryset()
            .filter(
                pk=request.query_params.get("against") or 0,
                connection_id=version.connection_id,
                object_type=version.object_type,
            )
            .first()
        )
        if other is None:
            return Response(
                {"detail": "Name another version of the same object: ?against=<id>."},
                status=status.HTTP_400_BAD_REQUEST,
            )
        diff = mapping_versions_diff(other, version)
        return Response(
            {
                "settings": [list(change) for change in diff.settings],
                "rows": [
                    {"row": c.key, "change": c.kind, "attributes": [list(a) for a in c.changes]}
                    for c in diff.fields
                ],
                "value_maps": [
                    {
                        "name": m.name,
                        "change": m.kind,
                        "added": dict(m.added),
                        "removed": dict(m.removed),
                        "changed": {k: [old, new] for k, old, new in m.changed},
                        "default": list(m.default) if m.default else None,
                    }
                    for m in diff.value_maps
                ],
            }
        )

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "last",
                OpenApiTypes.INT,
                description=f"Latest payloads to run it against (1 to {SAMPLES_MAX}).",
            )
        ],
        responses=PreviewSerializer,
    )
    @action(detail=True, methods=["get"])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        """Run this version against the latest payloads of its object and the open mapping
        cases of its connection and object, beside the published version. Nothing is written."""
        version = self.get_object()
        try:
            last = min(max(int(request.query_params.get("last", SAMPLES_DEFAULT)), 1), SAMPLES_MAX)
        except ValueError:
            last = SAMPLES_DEFAULT
        preview = mapping_preview_run(mapping_set=version, last=last)
        return Response(
            {
                "version": version.version,
                "baseline": preview.baseline.version if preview.baseline else None,
                "payloads": preview.counts,
                "changed_records": [
                    {
                        "record": r.sample.label,
                        "outcome": r.outcome,
                        "changes": {name: [str(a), str(b)] for name, a, b in r.changes},
                    }
                    for r in preview.changed_records
                ],
                "cases": [
                    {
                        "case": c.case.pk,
                        "held": c.held,
                        "read": c.mapped,
                        "fixed": c.fixes,
                        "still": c.reasons if not c.fixes else [],
                    }
                    for c in preview.cases
                ],
                "fixes_cases": len(preview.fixed_cases),
                "fixes_records": preview.fixed_records,
            }
        )

    def _done(self, version: MappingSet) -> Response:
        return Response(MappingSetSerializer(version).data)

    @extend_schema(request=None, responses=MappingSetSerializer)
    @action(detail=True, methods=["post"])
    def publish(self, request: Request, pk: str | None = None) -> Response:
        """Publish this draft after the console's checks; under four eyes it waits for another
        admin's approval (status "pending")."""
        try:
            return self._done(
                mapping_set_request_publish(mapping_set=self.get_object(), actor=request.user)
            )
        except ValidationError as error:
            return _refused(error)

    @extend_schema(request=None, responses=MappingSetSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        """Approve a version another admin published (four eyes): it is published now."""
        try:
            approved = mapping_set_approve(mapping_set=self.get_object(), actor=request.user)
            return self._done(approved)
        except ValidationError as error:
            return _refused(error)

    @extend_schema(request=RejectSerializer, responses=MappingSetSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        """Send a version pending approval back to draft, with the reason."""
        body = RejectSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            return self._done(
                mapping_set_reject(
                    mapping_set=self.get_object(),
                    actor=request.user,
                    reason=body.validated_data["reason"],
                )
            )
        except ValidationError as error:
            return _refused(error)

    @extend_schema(request=None, responses=MappingSetSerializer)
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        """Publish a copy of this retired version, with its value maps, as a new version."""
        try:
            copy = mapping_set_rollback(mapping_set=self.get_object(), actor=request.user)
            return self._done(copy)
        except ValidationError as error:
            return _refused(error)
