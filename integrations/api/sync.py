"""API for the sync engine's state: outbox, inbound messages, attempts; and replay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from integrations import models as m
from integrations import selectors
from integrations.selectors import inbound_held, outbox_parked
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
        if bool(attrs.get("ids")) == bool(attrs.get("exception_case")):
            raise serializers.ValidationError(
                "Give either the ids to replay or an exception_case, not both and not neither."
            )
        return attrs


class ReplayedSerializer(serializers.Serializer[Any]):
    replayed = serializers.ListField(child=serializers.DictField(child=serializers.IntegerField()))


REPLAYED = {
    202: OpenApiResponse(ReplayedSerializer, description="Pairs of original and replay ids"),
    400: OpenApiResponse(description="Nothing to replay, and why"),
}


class CanReplay(BasePermission):
    """Replaying changes what is sent: it needs `change_<model>` on the message model (reading
    needs `view_`, as everywhere)."""

    message = "You do not have permission to replay messages."

    def has_permission(self, request: Request, view: Any) -> bool:
        model = view.get_queryset().model
        return bool(
            request.user
            and request.user.has_perm(f"{model._meta.app_label}.change_{model._meta.model_name}")
        )


def _replayed(replays: Sequence[m.OutboxMessage | m.InboundMessage]) -> Response:
    return Response(
        {"replayed": [{"original": r.replay_of_id, "replay": r.pk} for r in replays]},
        status=status.HTTP_202_ACCEPTED,
    )


def _nothing(reason: str) -> Response:
    return Response({"detail": reason}, status=status.HTTP_400_BAD_REQUEST)


class OutboxMessageViewSet(viewsets.ReadOnlyModelViewSet[m.OutboxMessage]):
    """Every effect Concord owes an external system. Parked ones can be replayed."""

    serializer_class = OutboxMessageSerializer
    filterset_fields = ["connection", "process", "step", "state", "exception_case", "object_id"]
    ordering_fields = ["id", "created_at", "next_attempt_at", "attempts"]

    def get_queryset(self) -> QuerySet[m.OutboxMessage]:
        return selectors.outbox_message_list()

    @extend_schema(request=None, responses=REPLAYED, operation_id="outbox_replay_one")
    @action(detail=True, methods=["post"], permission_classes=[IsAuthenticated, CanReplay])
    def replay(self, request: Request, pk: str | None = None) -> Response:
        row = self.get_object()
        if row.state != m.OutboxMessage.State.PARKED:
            return Response(
                {"detail": f"Only parked messages can be replayed; #{row.pk} is {row.state}."},
                status=status.HTTP_409_CONFLICT,
            )
        return _replayed(outbox_replay(messages=[row]))

    @extend_schema(request=ReplayRequest, responses=REPLAYED, operation_id="outbox_replay_many")
    @action(
        detail=False,
        methods=["post"],
        url_path="replay",
        url_name="replay-many",
        permission_classes=[IsAuthenticated, CanReplay],
    )
    def replay_many(self, request: Request) -> Response:
        body = ReplayRequest(data=request.data)
        body.is_valid(raise_exception=True)
        ids, case_id = body.validated_data.get("ids"), body.validated_data.get("exception_case")
        rows = outbox_parked(ids=ids, exception_case_id=case_id, limit=REPLAY_LIMIT)
        if not rows:
            return _nothing(
                f"None of the outbox rows {ids} is parked: only parked rows are replayed."
                if ids
                else f"Exception case {case_id} holds no parked outbox rows."
            )
        return _replayed(outbox_replay(messages=rows))


class InboundMessageViewSet(viewsets.ReadOnlyModelViewSet[m.InboundMessage]):
    """Raw changes received from connected systems, as received. Any can be replayed."""

    serializer_class = InboundMessageSerializer
    filterset_fields = ["connection", "source", "object_type", "external_id", "state"]
    ordering_fields = ["id", "received_at", "source_version"]

    def get_queryset(self) -> QuerySet[m.InboundMessage]:
        return selectors.inbound_message_list()

    @extend_schema(request=None, responses=REPLAYED, operation_id="inbound_replay_one")
    @action(detail=True, methods=["post"], permission_classes=[IsAuthenticated, CanReplay])
    def replay(self, request: Request, pk: str | None = None) -> Response:
        return _replayed(inbound_replay(messages=[self.get_object()]))

    @extend_schema(request=ReplayRequest, responses=REPLAYED, operation_id="inbound_replay_many")
    @action(
        detail=False,
        methods=["post"],
        url_path="replay",
        url_name="replay-many",
        permission_classes=[IsAuthenticated, CanReplay],
    )
    def replay_many(self, request: Request) -> Response:
        body = ReplayRequest(data=request.data)
        body.is_valid(raise_exception=True)
        ids, case_id = body.validated_data.get("ids"), body.validated_data.get("exception_case")
        rows = inbound_held(ids=ids, exception_case_id=case_id, limit=REPLAY_LIMIT)
        if not rows:
            return _nothing(
                f"No inbound message has any of the ids {ids}."
                if ids
                else f"Exception case {case_id} holds no inbound messages."
            )
        return _replayed(inbound_replay(messages=rows))


class SyncAttemptViewSet(viewsets.ReadOnlyModelViewSet[m.SyncAttempt]):
    """Every call made to an external system: latency, status, outcome."""

    serializer_class = SyncAttemptSerializer
    filterset_fields = ["connection", "operation", "outcome", "status_code"]
    ordering_fields = ["started_at", "latency_ms"]

    def get_queryset(self) -> QuerySet[m.SyncAttempt]:
        return selectors.sync_attempt_list()
