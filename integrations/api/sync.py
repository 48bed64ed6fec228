"""API for the sync engine's state: outbox, inbound messages, attempts; and replay."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from integrations import models as m
from integrations.sync.inbound import inbound_replay
from integrations.sync.outbox import outbox_replay

# A replay request names at most this many rows; a bigger group is replayed page by page.
REPLAY_LIMIT = 1000


class OutboxMessageSerializer(serializers.ModelSerializer[m.OutboxMessage]):
    record_type = serializers.CharField(source="content_type.model", read_only=True)

    class Meta:
        model = m.OutboxMessage
        fields = [
            "id",
            "connection",
            "process",
            "step",
            "operation",
            "record_type",
            "object_id",
            "record_version",
            "idempotency_key",
            "state",
            "attempts",
            "needs_lookup",
            "next_attempt_at",
            "claimed_by",
            "last_error",
            "error_class",
            "result",
            "context",
            "exception_case",
            "replay_of",
            "created_at",
            "updated_at",
            "done_at",
        ]


class InboundMessageSerializer(serializers.ModelSerializer[m.InboundMessage]):
    class Meta:
        model = m.InboundMessage
        fields = [
            "id",
            "connection",
            "source",
            "object_type",
            "external_id",
            "dedupe_key",
            "source_version",
            "state",
            "error",
            "received_at",
            "processed_at",
            "replay_of",
            "payload",
        ]


class SyncAttemptSerializer(serializers.ModelSerializer[m.SyncAttempt]):
    class Meta:
        model = m.SyncAttempt
        fields = [
            "id",
            "connection",
            "operation",
            "started_at",
            "latency_ms",
            "status_code",
            "outcome",
            "error",
            "vendor_response",
        ]


class ReplayRequest(serializers.Serializer[Any]):
    ids = serializers.ListField(
        child=serializers.IntegerField(), required=False, max_length=REPLAY_LIMIT
    )
    exception_case = serializers.IntegerField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("ids") and not attrs.get("exception_case"):
            raise serializers.ValidationError("Give the ids to replay, or an exception_case.")
        return attrs


class ReplayedSerializer(serializers.Serializer[Any]):
    replayed = serializers.ListField(child=serializers.DictField(child=serializers.IntegerField()))


REPLAYED = {
    202: OpenApiResponse(ReplayedSerializer, description="Pairs of original and replay ids")
}


class ReplayPermissionMixin:
    """Reading needs view_, replaying needs change_ on the message model."""

    def _require_change(self, request: Request, model: type[Any]) -> Response | None:
        perm = f"integrations.change_{model._meta.model_name}"
        if not request.user.has_perm(perm):
            return Response(
                {"detail": "You do not have permission to replay messages."},
                status=status.HTTP_403_FORBIDDEN,
            )
        return None


class OutboxMessageViewSet(ReplayPermissionMixin, viewsets.ReadOnlyModelViewSet[m.OutboxMessage]):
    """Every effect Concord owes an external system. Parked ones can be replayed."""

    serializer_class = OutboxMessageSerializer
    filterset_fields = ["connection", "process", "step", "state", "exception_case", "object_id"]
    ordering_fields = ["id", "created_at", "next_attempt_at", "attempts"]

    def get_queryset(self) -> QuerySet[m.OutboxMessage]:
        return m.OutboxMessage.objects.select_related("content_type").order_by("-id")

    @extend_schema(request=None, responses=REPLAYED, operation_id="outbox_replay_one")
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: str | None = None) -> Response:
        refused = self._require_change(request, m.OutboxMessage)
        if refused:
            return refused
        return self._replay(request, [self.get_object()])

    @extend_schema(request=ReplayRequest, responses=REPLAYED, operation_id="outbox_replay_many")
    @action(detail=False, methods=["post"], url_path="replay", url_name="replay-many")
    def replay_many(self, request: Request) -> Response:
        refused = self._require_change(request, m.OutboxMessage)
        if refused:
            return refused
        body = ReplayRequest(data=request.data)
        body.is_valid(raise_exception=True)
        rows = m.OutboxMessage.objects.filter(state=m.OutboxMessage.State.PARKED)
        if body.validated_data.get("ids"):
            rows = rows.filter(pk__in=body.validated_data["ids"])
        if body.validated_data.get("exception_case"):
            rows = rows.filter(exception_case_id=body.validated_data["exception_case"])
        return self._replay(request, list(rows.order_by("id")[:REPLAY_LIMIT]))

    def _replay(self, request: Request, rows: list[m.OutboxMessage]) -> Response:
        not_parked = [r.pk for r in rows if r.state != m.OutboxMessage.State.PARKED]
        if not_parked:
            return Response(
                {"detail": f"Only parked messages can be replayed; not parked: {not_parked}."},
                status=status.HTTP_409_CONFLICT,
            )
        replays = outbox_replay(messages=rows)
        return Response(
            {"replayed": [{"original": r.replay_of_id, "replay": r.pk} for r in replays]},
            status=status.HTTP_202_ACCEPTED,
        )


class InboundMessageViewSet(ReplayPermissionMixin, viewsets.ReadOnlyModelViewSet[m.InboundMessage]):
    """Raw changes received from connected systems, as received. Any can be replayed."""

    serializer_class = InboundMessageSerializer
    filterset_fields = ["connection", "source", "object_type", "external_id", "state"]
    ordering_fields = ["id", "received_at", "source_version"]
    queryset = m.InboundMessage.objects.order_by("-id")

    @extend_schema(request=None, responses=REPLAYED, operation_id="inbound_replay_one")
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: str | None = None) -> Response:
        refused = self._require_change(request, m.InboundMessage)
        if refused:
            return refused
        return self._replay([self.get_object()])

    @extend_schema(request=ReplayRequest, responses=REPLAYED, operation_id="inbound_replay_many")
    @action(detail=False, methods=["post"], url_path="replay", url_name="replay-many")
    def replay_many(self, request: Request) -> Response:
        refused = self._require_change(request, m.InboundMessage)
        if refused:
            return refused
        body = ReplayRequest(data=request.data)
        body.is_valid(raise_exception=True)
        ids = body.validated_data.get("ids") or []
        return self._replay(list(m.InboundMessage.objects.filter(pk__in=ids).order_by("id")))

    def _replay(self, rows: list[m.InboundMessage]) -> Response:
        replays = inbound_replay(messages=rows)
        return Response(
            {"replayed": [{"original": r.replay_of_id, "replay": r.pk} for r in replays]},
            status=status.HTTP_202_ACCEPTED,
        )


class SyncAttemptViewSet(viewsets.ReadOnlyModelViewSet[m.SyncAttempt]):
    """Every call made to an external system: latency, status, outcome."""

    serializer_class = SyncAttemptSerializer
    filterset_fields = ["connection", "operation", "outcome", "status_code"]
    ordering_fields = ["started_at", "latency_ms"]
    queryset = m.SyncAttempt.objects.order_by("-started_at", "-id")
