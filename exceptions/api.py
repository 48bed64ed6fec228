"""The exception queues in the REST API (/api/v1/cases/, /api/v1/queues/): the same selectors,
actions, access rule and audit as the pages.

    GET  /api/v1/queues/                        the queues you see, with open/due soon/breached
    GET  /api/v1/cases/                         your queues' cases: filters, sort, cursor
    GET  /api/v1/cases/mine/                    open cases assigned to you
    GET  /api/v1/cases/sla/                     per queue: due soon and breached
    GET  /api/v1/cases/<id>/                    one case with what it holds, its group, trail
    POST /api/v1/cases/<id>/assign/             {"assignee": 7, "revision": 3}
    POST /api/v1/cases/<id>/reassign/           {"assignee": 7, "revision": 3}
    POST /api/v1/cases/<id>/take/               {"revision": 3}
    POST /api/v1/cases/<id>/unassign/           {"revision": 3}
    POST /api/v1/cases/<id>/comment/            {"text": "..."}
    POST /api/v1/cases/<id>/waive/              {"reason": "...", "revision": 3}
    POST /api/v1/cases/<id>/resolve/            {"note": "...", "revision": 3}
    POST /api/v1/cases/<id>/retry/              {"revision": 3}
    POST /api/v1/cases/<id>/retry-group/        {"revisions": {"12": 3, "15": 1}}
    POST /api/v1/cases/bulk/                    {"action": "retry", "revisions": {...}, ...}

`revision` is the case's revision as you read it (every case carries it): when someone acted
since, the action is refused with 409 and who did what. Refusals: 400 (the request lacks what
the action needs), 403 (not a queue you work in), 404 (no such case), 409 (someone acted first,
or the case is not in a state for it), each with a `detail` in words.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from exceptions import actions, selectors
from exceptions.access import case_access
from exceptions.errors import (
    CaseActionError,
    CaseConflict,
    CaseForbidden,
    CaseNotFound,
    CaseRefused,
)
from exceptions.models import CaseComment, CaseEvent, ExceptionCase

STATUS_OF: dict[type[CaseActionError], int] = {
    CaseNotFound: status.HTTP_404_NOT_FOUND,
    CaseForbidden: status.HTTP_403_FORBIDDEN,
    CaseConflict: status.HTTP_409_CONFLICT,
    CaseRefused: status.HTTP_400_BAD_REQUEST,
}


class WorksInAQueue(BasePermission):
    """A signed-in user who works in at least one queue (integration admins: all of them)."""

    message = "You work in no exception queue; ask an integration admin to add you to one."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return not case_access(request.user).none


# --- Serializers ----------------------------------------------------------------------------------


class CaseSerializer(serializers.ModelSerializer[ExceptionCase]):
    assignee_name = serializers.CharField(source="assignee.username", default=None)
    sla_state = serializers.SerializerMethodField()

    class Meta:
        model = ExceptionCase
        fields = [
            "id",
            "revision",
            "queue",
            "status",
            "case_type",
            "process",
            "step",
            "priority",
            "message",
            "vendor_message",
            "subject",
            "record_count",
            "hours_blocked",
            "amounts",
            "amount_blocked",
            "currency",
            "occurrences",
            "first_seen_at",
            "last_seen_at",
            "sla_due_at",
            "sla_state",
            "assignee",
            "assignee_name",
            "legal_entity",
            "region",
            "project",
            "customer",
            "connection",
            "resolved_at",
            "resolution_note",
        ]
        read_only_fields = fields

    def get_sla_state(self, case: ExceptionCase) -> str | None:
        """ok, due_soon, breached (open cases with a deadline); null otherwise."""
        if case.status != ExceptionCase.Status.OPEN or case.sla_due_at is None:
            return None
        windows: dict[int, Any] = self.context.get("sla_windows") or {}
        now = self.context["now"]
        if case.sla_due_at < now:
            return "breached"
        window = windows.get(case.priority)
        if window is not None and case.sla_due_at < now + window:
            return "due_soon"
        return "ok"


class CommentSerializer(serializers.ModelSerializer[CaseComment]):
    author = serializers.CharField(source="author.username")

    class Meta:
        model = CaseComment
        fields = ["id", "author", "at", "text"]


class EventSerializer(serializers.ModelSerializer[CaseEvent]):
    class Meta:
        model = CaseEvent
        fields = ["id", "at", "actor", "actor_label", "action", "revision", "before", "after"]


class VendorRecordSerializer(serializers.Serializer[Any]):
    connection_id = serializers.IntegerField()
    connection = serializers.CharField()
    vendor = serializers.CharField()
    external_id = serializers.CharField()
    url = serializers.CharField(allow_null=True)


class HeldRecordSerializer(serializers.Serializer[Any]):
    record_type = serializers.CharField(source="record.record_type")
    record_id = serializers.IntegerField(source="record.record_id")
    label = serializers.CharField(source="record.label")  # type: ignore[assignment]
    amount = serializers.DecimalField(source="record.amount", max_digits=14, decimal_places=2)
    currency = serializers.CharField(source="record.currency")
    hours = serializers.DecimalField(source="record.hours", max_digits=10, decimal_places=2)
    url = serializers.CharField(allow_null=True)
    vendor = VendorRecordSerializer(many=True)


class AttemptSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    operation = serializers.CharField()
    started_at = serializers.DateTimeField()
    latency_ms = serializers.IntegerField()
    status_code = serializers.IntegerField(allow_null=True)
    outcome = serializers.CharField()
    error = serializers.CharField()
    vendor_response = serializers.CharField()


class OutboxRowSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    state = serializers.CharField()
    operation = serializers.CharField()
    record_type = serializers.CharField(source="content_type.model")
    object_id = serializers.IntegerField()
    payload = serializers.JSONField()
    last_error = serializers.CharField()
    attempts = AttemptSerializer(source="sync_attempts.all", many=True)


class InboundRowSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    connection = serializers.IntegerField(source="connection_id")
    object_type = serializers.CharField()
    external_id = serializers.CharField()
    state = serializers.CharField()
    error = serializers.CharField()
    received_at = serializers.DateTimeField()
    payload = serializers.JSONField()


class KindSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    fix_form = serializers.CharField()
    fix_permission = serializers.CharField()
    auto_close = serializers.BooleanField()


class CaseDetailSerializer(serializers.Serializer[Any]):
    case = CaseSerializer()
    kind = KindSerializer(allow_null=True)
    can_retry = serializers.BooleanField()
    records = HeldRecordSerializer(many=True)
    more_records = serializers.IntegerField()
    inbound = InboundRowSerializer(many=True)
    outbox = OutboxRowSerializer(many=True)
    # The open cases of its root-cause group, itself first: POST their revisions to
    # retry-group.
    group = CaseSerializer(many=True)
    comments = CommentSerializer(many=True)
    events = EventSerializer(many=True)


class CurrencyTotalSerializer(serializers.Serializer[Any]):
    currency = serializers.CharField()
    cases = serializers.IntegerField()
    amount = serializers.DecimalField(max_digits=16, decimal_places=2)


class TotalsSerializer(serializers.Serializer[Any]):
    cases = serializers.IntegerField()
    by_currency = CurrencyTotalSerializer(many=True)
    mixed_left_out = serializers.IntegerField()


class CasePageSerializer(serializers.Serializer[Any]):
    results = CaseSerializer(many=True)
    next = serializers.CharField(allow_null=True)
    # On the first page only (no cursor): counts and amount blocked per currency.
    totals = TotalsSerializer(allow_null=True)


class QueueSerializer(serializers.Serializer[Any]):
    code = serializers.CharField()
    name = serializers.CharField()
    open = serializers.IntegerField()
    due_soon = serializers.IntegerField()
    breached = serializers.IntegerField()
    mine = serializers.BooleanField()


class QueueSlaSerializer(serializers.Serializer[Any]):
    queue = QueueSerializer()
    due_soon = CaseSerializer(many=True)
    breached = CaseSerializer(many=True)


class RevisionRequest(serializers.Serializer[Any]):
    revision = serializers.IntegerField(
        min_value=0, help_text="The case's revision as you read it."
    )


class AssignRequest(RevisionRequest):
    assignee = serializers.IntegerField(help_text="The user id of a member of the case's queue.")


class WaiveRequest(RevisionRequest):
    reason = serializers.CharField(max_length=10_000, allow_blank=True)


class ResolveRequest(RevisionRequest):
    note = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")


class CommentRequest(serializers.Serializer[Any]):
    text = serializers.CharField(max_length=actions.COMMENT_MAX, allow_blank=True)


def _revisions(value: dict[str, int]) -> dict[int, int]:
    try:
        return {int(case_id): int(revision) for case_id, revision in value.items()}
    except (TypeError, ValueError):
        raise serializers.ValidationError(
            'Map each case id to the revision you read, e.g. {"12": 3}.'
        ) from None


class GroupRetryRequest(serializers.Serializer[Any]):
    revisions = serializers.DictField(
        child=serializers.IntegerField(min_value=0),
        allow_empty=False,
        help_text="Each case of the group you saw (its id) and the revision you read.",
    )

    def validate_revisions(self, value: dict[str, int]) -> dict[int, int]:
        return _revisions(value)


class BulkRequest(GroupRetryRequest):
    action = serializers.ChoiceField(choices=actions.BULK_ACTIONS)
    assignee = serializers.IntegerField(required=False, allow_null=True, default=None)
    text = serializers.CharField(
        max_length=10_000, required=False, allow_blank=True, default="",
        help_text="A waiver's reason (mandatory) or a resolution's note.",
    )  # fmt: skip


class RetryOutcomeSerializer(serializers.Serializer[Any]):
    case_id = serializers.IntegerField()
    count = serializers.IntegerField()
    summary = serializers.CharField()
    revision = serializers.IntegerField()
    status = serializers.CharField()


class GroupRetrySerializer(serializers.Serializer[Any]):
    retried = RetryOutcomeSerializer(many=True)
    nothing_to_retry = serializers.ListField(child=serializers.IntegerField())
    not_seen = serializers.ListField(child=serializers.IntegerField())


class BulkResultSerializer(serializers.Serializer[Any]):
    cases = CaseSerializer(many=True)
    retried = RetryOutcomeSerializer(many=True)


REFUSALS = {
    400: OpenApiResponse(description="The request lacks what the action needs (detail says)."),
    403: OpenApiResponse(description="The case is in a queue you do not work in."),
    404: OpenApiResponse(description="There is no such case."),
    409: OpenApiResponse(
        description="Someone acted on the case since you read it (detail says who and when), "
        "or it is not in a state for this action; nothing was done."
    ),
}

FILTERS = [
    OpenApiParameter("queue", str, many=True, description="Queue codes (default: all yours)."),
    OpenApiParameter("status", str, enum=ExceptionCase.Status.values, description="Default open."),
    OpenApiParameter("process", str),
    OpenApiParameter("case_type", str, many=True),
    OpenApiParameter("legal_entity", int),
    OpenApiParameter("region", str),
    OpenApiParameter("assignee", str, description='A user id, "me" or "none".'),
    OpenApiParameter("sla", str, enum=[code for code, _ in selectors.SLA_STATES]),
    OpenApiParameter("amount_min", OpenApiTypes.DECIMAL),
    OpenApiParameter("amount_max", OpenApiTypes.DECIMAL),
    OpenApiParameter(
        "q",
        str,
        description="An invoice number, project code, customer name, contract number, vendor "
        "id (e.g. an opportunity) or time entry id (TE-123).",
    ),
]
PAGING = [
    OpenApiParameter("sort", str, enum=list(selectors.SORTS), description="Default sla."),
    OpenApiParameter("cursor", str, description="The `next` link's cursor."),
    OpenApiParameter("limit", int, description=f"Default 50, at most {selectors.PAGE_MAX}."),
]


def _refused(error: CaseActionError) -> Response:
    return Response({"detail": str(error)}, status=STATUS_OF.get(type(error), 400))


class CaseViewSet(viewsets.ViewSet):
    """Exception cases of the queues you work in (integration admins: all)."""

    permission_classes = [IsAuthenticated, WorksInAQueue]
    lookup_value_regex = r"\d+"

    def _context(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "now": timezone.now(),
            "sla_windows": selectors.sla_windows(),
        }

    def _act(self, call: Callable[[], Any], render: Callable[[Any], Any], code: int) -> Response:
        try:
            result = call()
        except CaseActionError as error:
            return _refused(error)
        return Response(render(result), status=code)

    def _case(self, case: ExceptionCase) -> Any:
        return CaseSerializer(case, context=self._context()).data

    def _body(self, serializer: type[serializers.Serializer[Any]]) -> dict[str, Any]:
        body = serializer(data=self.request.data)
        body.is_valid(raise_exception=True)
        return dict(body.validated_data)

    def _page(self, page: selectors.CasePage, totals: selectors.Totals | None) -> Response:
        url = None
        if page.next_cursor:
            url = replace_query_param(self.request.build_absolute_uri(), "cursor", page.next_cursor)
        data = {"results": page.cases, "next": url, "totals": totals}
        return Response(CasePageSerializer(data, context=self._context()).data)

    @extend_schema(parameters=[*FILTERS, *PAGING], responses={200: CasePageSerializer, **REFUSALS})
    def list(self, request: Request) -> Response:
        params = request.query_params
        filters: dict[str, Any] = {
            k: (v if k in ("queue", "case_type") else v[-1])
            for k, v in params.lists()
            if k not in ("sort", "cursor", "limit")
        }
        try:
            cases = selectors.case_queryset(user=request.user, filters=filters)
            page = selectors.case_page(
                cases=cases,
                sort=params.get("sort", selectors.DEFAULT_SORT),
                cursor=params.get("cursor"),
                limit=_limit(params.get("limit")),
            )
            totals = None if params.get("cursor") else selectors.case_totals(cases=cases)
        except CaseActionError as error:
            return _refused(error)
        return self._page(page, totals)

    @extend_schema(parameters=PAGING, responses={200: CasePageSerializer, **REFUSALS})
    @action(detail=False, methods=["get"])
    def mine(self, request: Request) -> Response:
        """Open cases assigned to you, soonest due first."""
        params = request.query_params
        try:
            page = selectors.case_my_work(
                user=request.user,
                sort=params.get("sort", selectors.DEFAULT_SORT),
                cursor=params.get("cursor"),
                limit=_limit(params.get("limit")),
            )
        except CaseActionError as error:
            return _refused(error)
        return self._page(page, None)

    @extend_schema(
        parameters=[OpenApiParameter("queue", str, description="One queue's code.")],
        responses={200: QueueSlaSerializer(many=True)},
    )
    @action(detail=False, methods=["get"])
    def sla(self, request: Request) -> Response:
        """Per queue: the open cases due soon and those past their SLA (first 20 of each)."""
        overview = selectors.queue_sla_overview(
            user=request.user, queue=request.query_params.get("queue")
        )
        return Response(QueueSlaSerializer(overview, many=True, context=self._context()).data)

    @extend_schema(responses={200: CaseDetailSerializer, **REFUSALS})
    def retrieve(self, request: Request, pk: str) -> Response:
        try:
            detail = selectors.case_detail(user=request.user, case_id=int(pk))
        except CaseActionError as error:
            return _refused(error)
        return Response(CaseDetailSerializer(detail, context=self._context()).data)

    @extend_schema(request=AssignRequest, responses={200: CaseSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def assign(self, request: Request, pk: str) -> Response:
        body = self._body(AssignRequest)
        return self._act(
            lambda: actions.case_assign(
                actor=request.user,
                case_id=int(pk),
                assignee_id=body["assignee"],
                revision=body["revision"],
            ),
            self._case,
            status.HTTP_200_OK,
        )

    @extend_schema(request=AssignRequest, responses={200: CaseSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def reassign(self, request: Request, pk: str) -> Response:
        body = self._body(AssignRequest)
        return self._act(
            lambda: actions.case_reassign(
                actor=request.user,
                case_id=int(pk),
                assignee_id=body["assignee"],
                revision=body["revision"],
            ),
            self._case,
            status.HTTP_200_OK,
        )

    @extend_schema(request=RevisionRequest, responses={200: CaseSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def take(self, request: Request, pk: str) -> Response:
        body = self._body(RevisionRequest)
        return self._act(
            lambda: actions.case_take(
                actor=request.user, case_id=int(pk), revision=body["revision"]
            ),
            self._case,
            status.HTTP_200_OK,
        )

    @extend_schema(request=RevisionRequest, responses={200: CaseSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def unassign(self, request: Request, pk: str) -> Response:
        body = self._body(RevisionRequest)
        return self._act(
            lambda: actions.case_unassign(
                actor=request.user, case_id=int(pk), revision=body["revision"]
            ),
            self._case,
            status.HTTP_200_OK,
        )

    @extend_schema(request=CommentRequest, responses={201: CommentSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def comment(self, request: Request, pk: str) -> Response:
        body = self._body(CommentRequest)
        return self._act(
            lambda: actions.case_comment(actor=request.user, case_id=int(pk), text=body["text"]),
            lambda comment: CommentSerializer(comment).data,
            status.HTTP_201_CREATED,
        )

    @extend_schema(request=WaiveRequest, responses={200: CaseSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def waive(self, request: Request, pk: str) -> Response:
        body = self._body(WaiveRequest)
        return self._act(
            lambda: actions.case_waive(
                actor=request.user,
                case_id=int(pk),
                revision=body["revision"],
                reason=body["reason"],
            ),
            self._case,
            status.HTTP_200_OK,
        )

    @extend_schema(request=ResolveRequest, responses={200: CaseSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def resolve(self, request: Request, pk: str) -> Response:
        body = self._body(ResolveRequest)
        return self._act(
            lambda: actions.case_resolve_by_hand(
                actor=request.user, case_id=int(pk), revision=body["revision"], note=body["note"]
            ),
            self._case,
            status.HTTP_200_OK,
        )

    @extend_schema(request=RevisionRequest, responses={202: RetryOutcomeSerializer, **REFUSALS})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        body = self._body(RevisionRequest)
        return self._act(
            lambda: actions.case_retry(
                actor=request.user, case_id=int(pk), revision=body["revision"]
            ),
            lambda outcome: RetryOutcomeSerializer(outcome).data,
            status.HTTP_202_ACCEPTED,
        )

    @extend_schema(request=GroupRetryRequest, responses={202: GroupRetrySerializer, **REFUSALS})
    @action(detail=True, methods=["post"], url_path="retry-group", url_name="retry-group")
    def retry_group(self, request: Request, pk: str) -> Response:
        body = self._body(GroupRetryRequest)
        return self._act(
            lambda: actions.case_retry_group(
                actor=request.user, case_id=int(pk), revisions=body["revisions"]
            ),
            lambda outcome: GroupRetrySerializer(outcome).data,
            status.HTTP_202_ACCEPTED,
        )

    @extend_schema(request=BulkRequest, responses={200: BulkResultSerializer, **REFUSALS})
    @action(detail=False, methods=["post"])
    def bulk(self, request: Request) -> Response:
        """One action on several cases, all or nothing."""
        body = self._body(BulkRequest)

        def render(done: list[Any]) -> Any:
            cases = [d for d in done if isinstance(d, ExceptionCase)]
            retried = [d for d in done if isinstance(d, actions.RetryOutcome)]
            return BulkResultSerializer(
                {"cases": cases, "retried": retried}, context=self._context()
            ).data

        return self._act(
            lambda: actions.case_bulk(
                actor=request.user,
                action=body["action"],
                revisions=body["revisions"],
                assignee_id=body["assignee"],
                text=body["text"],
            ),
            render,
            status.HTTP_200_OK,
        )


class QueueViewSet(viewsets.ViewSet):
    """The exception queues you see, with their open, due-soon and breached counts."""

    permission_classes = [IsAuthenticated, WorksInAQueue]

    @extend_schema(responses={200: QueueSerializer(many=True)})
    def list(self, request: Request) -> Response:
        return Response(QueueSerializer(selectors.queue_list(user=request.user), many=True).data)


def _limit(value: str | None) -> int:
    try:
        return int(value) if value else selectors.PAGE_SIZE
    except ValueError:
        raise CaseRefused(f"limit is a number of cases; not {value!r}.") from None


router = SimpleRouter()
router.register("cases", CaseViewSet, basename="case")
router.register("queues", QueueViewSet, basename="workqueue")
urlpatterns = router.urls
