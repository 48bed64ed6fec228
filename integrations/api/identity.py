"""API for identity resolution: merge two canonical records found to be one, list the merges,
and take one back. Each is one call of an audited service (integrations.sync.identity); the
permission is the one the possible-duplicate case's queue holds: `change_<model>`."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations import models as m
from integrations.api.auth import HasRole
from integrations.sync.errors import MergeRefused
from integrations.sync.identity import record_merge, record_unmerge

# URL segment -> the canonical model whose records can be merged there. Customers are the one
# object shared by several systems today (see the vendors' default mappings).
MERGEABLE: dict[str, type[m.CanonicalRecord]] = {"customers": m.Customer}


class RecordMergeSerializer(serializers.ModelSerializer[m.RecordMerge]):
    class Meta:
        model = m.RecordMerge
        fields = [
            "id",
            "object_type",
            "winner_id",
            "loser_id",
            "loser_repr",
            "moved",
            "exception_case",
            "note",
            "merged_at",
            "merged_by",
            "merged_by_label",
            "unmerged_at",
            "unmerged_by",
        ]
        read_only_fields = fields


class MergeRequest(serializers.Serializer[Any]):
    merged = serializers.IntegerField(
        help_text="The id of the record merged into this one: it is removed, and what pointed "
        "at it (cross-references, projects, invoices, cases) points at this one."
    )
    exception_case = serializers.IntegerField(
        required=False, help_text="The possible-duplicate case this merge resolves."
    )
    note = serializers.CharField(required=False, allow_blank=True, max_length=400)


REFUSED = OpenApiResponse(
    description="The records cannot be merged (or the merge taken back), and why"
)


def _refused(exc: MergeRefused) -> Response:
    return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)


class CanChangeRecords(BasePermission):
    """Merging edits records: `change_<model>` (who edits customers: Sales ops, Finance)."""

    message = "You do not have permission to merge these records."

    def has_permission(self, request: Request, view: Any) -> bool:
        model = view.model
        return bool(
            request.user
            and request.user.has_perm(f"{model._meta.app_label}.change_{model._meta.model_name}")
        )


class RecordMergeView(APIView):
    """Merge another record into this one."""

    model: type[m.CanonicalRecord] = m.Customer
    permission_classes = [IsAuthenticated, CanChangeRecords]

    @extend_schema(
        request=MergeRequest,
        responses={201: RecordMergeSerializer, 400: REFUSED},
        operation_id="customer_merge",
    )
    def post(self, request: Request, pk: int) -> Response:
        body = MergeRequest(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            merge = record_merge(
                object_type=str(self.model._meta.model_name),
                winner_id=pk,
                loser_id=body.validated_data["merged"],
                actor=request.user,
                case_id=body.validated_data.get("exception_case"),
                note=body.validated_data.get("note", ""),
            )
        except MergeRefused as exc:
            return _refused(exc)
        return Response(RecordMergeSerializer(merge).data, status=status.HTTP_201_CREATED)


class RecordMergeViewSet(viewsets.ReadOnlyModelViewSet[m.RecordMerge]):
    """Merges of canonical records, newest first, of the record types the user may read.
    Filter by object_type and winner_id; a merge is taken back with `unmerge`."""

    serializer_class = RecordMergeSerializer
    # Who may read a merge is who may read its record type (get_queryset), not a permission of
    # the merge table that no role holds; a user with no role is refused outright.
    permission_classes = [HasRole]
    filterset_fields = ["object_type", "winner_id", "loser_id"]
    ordering_fields = ["merged_at", "id"]

    def get_queryset(self) -> QuerySet[m.RecordMerge]:
        user = self.request.user
        readable = [
            name
            for name in {str(model._meta.model_name) for model in MERGEABLE.values()}
            if user.has_perm(f"integrations.view_{name}")
        ]
        return m.RecordMerge.objects.filter(Q(object_type__in=readable))

    @extend_schema(
        request=None, responses={200: RecordMergeSerializer, 400: REFUSED}, operation_id="unmerge"
    )
    @action(detail=True, methods=["post"])
    def unmerge(self, request: Request, pk: str | None = None) -> Response:
        merge = self.get_object()
        if not request.user.has_perm(f"integrations.change_{merge.object_type}"):
            return Response(
                {"detail": "You do not have permission to take this merge back."},
                status=status.HTTP_403_FORBIDDEN,
            )
        try:
            merge = record_unmerge(merge_id=merge.pk, actor=request.user)
        except MergeRefused as exc:
            return _refused(exc)
        return Response(RecordMergeSerializer(merge).data)
