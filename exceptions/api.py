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
    GET  /api/v1/cases/<id>/fix/                the fix-in-place form: fields, values, may you
    POST /api/v1/cases/<id>/fix/                {"revision": 3, "values": {"tax_number": "..."}}

`revision` is the case's revision as you read it (every case carries it): when someone acted
since, the action is refused with 409 and who did what. Refusals: 400 (the request lacks what
the action needs), 403 (not a queue you work in), 404 (no such case), 409 (someone acted first,
or the case is not in a state for it), each with a `detail` in words.

Fix in place is the page's (/cases/<id>/fix/): GET says which form the catalogue names for the
case's type, what it works on, its fields (type, label, required, choices, current value) and
whether you may apply it and why not. POST validates `values` with the same form class
(exceptions/forms.py) and applies them with the same `fix_apply` (integrations/workflows/
fixes.py: the record through the write path, audited; the owning system through the outbox;
the case's "fixed" event; the retry). A field left out of `values` keeps the value GET shows.
What the form refuses comes back 400 with the page's words per field in `errors`. The forms
that are a way elsewhere (connection settings, the mapping, a replay) answer GET with the admin
page to fix the cause in and the retry to call after; there is nothing to POST to them (400).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, cast

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import Model
from django.urls import reverse
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
from exceptions.catalogue import CaseType
from exceptions.errors import (
    HTTP_STATUS,
    CaseActionError,
    CaseConflict,
    CaseForbidden,
    CaseRefused,
)
from exceptions.forms import FIX_FORMS, LINK_FORMS, FixForm, fix_admin_path
from exceptions.models import CaseComment, CaseEvent, ExceptionCase
from integrations.workflows.fixes import (
    FixActions,
    FixTarget,
    fix_actions,
    fix_apply,
    fix_case_get,
    fix_target,
)


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
        state = selectors.case_sla_state(
            case, now=self.context["now"], windows=self.context.get("sla_windows") or {}
        )
        return state if state not in ("", "none") else None


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
    more_outbox = serializers.IntegerField(
        help_text="Outbox rows on the case beyond the latest ones shown in `outbox`."
    )
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
    by_currency = CurrencyTotalSerializer(
        many=True, help_text="What the open cases of the set block, per currency."
    )
    mixed_left_out = serializers.IntegerField()
    capped = serializers.BooleanField(
        help_text="More closed cases match than are counted (10,000): `cases` is a floor."
    )
    closed = serializers.IntegerField(
        help_text="Closed cases counted in `cases`; they block no amount."
    )


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


# --- Fix in place -------------------------------------------------------------------------------

# What a fix form's field takes, by its Django form field (the first class that matches).
FIELD_TYPES: tuple[tuple[type[forms.Field], str], ...] = (
    (forms.ModelMultipleChoiceField, "multiple_choice"),
    (forms.MultipleChoiceField, "multiple_choice"),
    (forms.ChoiceField, "choice"),  # a record's (ModelChoiceField) too: its choices are its ids
    (forms.NullBooleanField, "boolean"),
    (forms.BooleanField, "boolean"),
    (forms.DateTimeField, "datetime"),
    (forms.DateField, "date"),
    (forms.DecimalField, "decimal"),
    (forms.FloatField, "number"),
    (forms.IntegerField, "integer"),
    (forms.EmailField, "email"),
    (forms.URLField, "url"),
    (forms.JSONField, "json"),
)
FIX_MODES = {
    "form": "POST the form's values here.",
    "link": "The cause is fixed elsewhere (admin_url) or by a retry (retry_url): nothing to POST.",
    "unavailable": "The form is not built yet, or the case names nothing it could fix.",
}


class FixChoiceSerializer(serializers.Serializer[Any]):
    value = serializers.JSONField(help_text="What to post for it (a record's id for a record).")
    label = serializers.CharField()  # type: ignore[assignment]


class FixFieldSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    # Plain strings in the schema, not an enum: an enum named after a field called "type" would
    # clash with any other serializer's (drf-spectacular warns, and `make test` fails on it).
    type = serializers.CharField(
        help_text="One of: " + ", ".join(sorted({t for _, t in FIELD_TYPES} | {"string", "text"}))
    )
    # A serializer's fields are popped off the class (DRF's metaclass): these names, which a
    # Field has as attributes too, are the answer's keys, as in HeldRecordSerializer.
    label = serializers.CharField()  # type: ignore[assignment]
    required = serializers.BooleanField()  # type: ignore[assignment]
    help_text = serializers.CharField()  # type: ignore[assignment]
    choices = FixChoiceSerializer(
        many=True, allow_null=True, help_text="The values it takes; null: any of its type."
    )
    initial = serializers.JSONField(
        allow_null=True,
        help_text="Its value now, as the page's form shows it and as you would post it: what "
        "it keeps when you leave it out of `values`.",
    )


class FixSerializer(serializers.Serializer[Any]):
    case = CaseSerializer()
    form = serializers.CharField(help_text="The catalogue's fix_form for the case's type.")
    title = serializers.CharField()
    mode = serializers.CharField(
        help_text=" ".join(f"{mode}: {words}" for mode, words in FIX_MODES.items())
    )
    target = serializers.CharField(
        allow_null=True, help_text='What the form works on: "the customer Umbrella GmbH".'
    )
    adds = serializers.BooleanField(
        help_text="The form adds a record (an exchange rate, a rate card) rather than editing one."
    )
    incoming = serializers.JSONField(
        allow_null=True,
        help_text="An ownership decision's: the values the system sent, by field.",
    )
    fields = FixFieldSerializer(many=True)  # type: ignore[assignment]
    can_apply = serializers.BooleanField()
    why_not = serializers.CharField(help_text='Why you cannot apply it, in words ("" if you can).')
    admin_url = serializers.CharField(
        allow_null=True, help_text="Where the cause is fixed, for a form that is a way elsewhere."
    )
    retry_url = serializers.CharField(
        allow_null=True,
        help_text="The case's retry (POST the revision), when it has work to re-run.",
    )


class FixRequest(RevisionRequest):
    values = serializers.DictField(
        required=False,
        default=dict,
        help_text="The form's fields by name (see GET); a field left out keeps its value now.",
    )


class FixResultSerializer(serializers.Serializer[Any]):
    summary = serializers.CharField(help_text="What was done, in words, as the page shows it.")
    changed = serializers.DictField(
        child=serializers.ListField(child=serializers.JSONField()),
        help_text="Each field changed: [before, after].",
    )
    case = CaseSerializer()


class FixInvalidSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()
    errors = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="What the form refused, per field (non_field_errors: the form as a whole), "
        "in the page's words.",
    )


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
    return Response({"detail": str(error)}, status=HTTP_STATUS.get(type(error), 400))


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
            totals = (
                None
                if params.get("cursor")
                else selectors.case_totals(
                    cases=cases,
                    status=filters.get("status") or selectors.OPEN,
                    user=request.user,
                    filters=filters,
                )
            )
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

    @extend_schema(
        methods=["GET"],
        summary="The case's fix-in-place form",
        responses={200: FixSerializer, 403: REFUSALS[403], 404: REFUSALS[404]},
    )
    @extend_schema(
        methods=["POST"],
        summary="Apply the case's fix in place",
        request=FixRequest,
        responses={
            200: FixResultSerializer,
            **REFUSALS,
            400: OpenApiResponse(
                FixInvalidSerializer,
                description="A value the form refuses (`errors` per field, the page's words), "
                "or a form that takes none (a way elsewhere, not built); nothing was changed.",
            ),
            403: OpenApiResponse(
                description="The case is in a queue you do not work in, or its fix needs a "
                "permission you do not have."
            ),
        },
    )
    @action(detail=True, methods=["get", "post"])
    def fix(self, request: Request, pk: str) -> Response:
        """The form the catalogue names for the case's type, as the page's fix in place:
        GET describes it, POST applies it."""
        try:
            case, kind, not_permitted = fix_case_get(actor=request.user, case_id=int(pk))
        except CaseActionError as error:
            return _refused(error)
        fix = _fix_form(request, case, kind)
        if request.method == "GET":
            return Response(
                FixSerializer(_fix_described(fix, not_permitted), context=self._context()).data
            )
        if not_permitted:
            return _refused(CaseForbidden(not_permitted))
        if case.status != ExceptionCase.Status.OPEN:
            # fix_apply's words for a case closed meanwhile.
            return _refused(
                CaseConflict(f"Case #{case.pk} is {case.status} already; nothing was changed.")
            )
        body = self._body(FixRequest)
        if fix.form is None:
            return _refused(CaseRefused(fix.unavailable))
        form = _fix_bound(fix.form, body["values"], body["revision"])
        if isinstance(form, Response):
            return form
        if not form.is_valid():
            return _invalid(form.errors, form)
        try:
            result = fix_apply(
                actor=request.user,
                case_id=case.pk,
                revision=form.cleaned_data["revision"],
                values=form.values(),
            )
        except ValidationError as invalid:
            # The write path's own refusal (the model's validation), as the page shows it.
            if hasattr(invalid, "error_dict"):
                return _invalid(invalid.message_dict, form)
            return _invalid({NON_FIELD_ERRORS: invalid.messages}, form)
        except CaseActionError as error:
            return _refused(error)
        data = {
            "summary": result.summary,
            "changed": {k: [_plain(b), _plain(a)] for k, (b, a) in result.changed.items()},
            "case": ExceptionCase.objects.select_related("assignee").get(pk=case.pk),
        }
        return Response(FixResultSerializer(data, context=self._context()).data)

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


# --- Fix in place: the form as data --------------------------------------------------------------


@dataclass(frozen=True)
class FixFormFound:
    """A case's fix form as the page builds it: what it works on and the form at the values
    now (None when there is nothing to post: `unavailable` says why, in words)."""

    case: ExceptionCase
    kind: CaseType
    title: str
    mode: str
    target: FixTarget | None
    form: FixForm | None
    unavailable: str
    admin_url: str | None = None
    retry_url: str | None = None


def _fix_form(request: Request, case: ExceptionCase, kind: CaseType) -> FixFormFound:
    title = kind.fix_form.replace("_", " ")
    if kind.fix_form in LINK_FORMS:
        found = fix_actions(case=case)
        admin_url = _admin_url(request, kind, found)
        retry_url = None
        if found.retry and case.status == ExceptionCase.Status.OPEN:
            retry_url = request.build_absolute_uri(reverse("case-retry", args=[case.pk]))
        return FixFormFound(
            case=case,
            kind=kind,
            title=title,
            mode="link",
            target=None,
            form=None,
            unavailable=f"There is nothing to post for a {title} case. "
            + _elsewhere(kind, admin_url, retry_url),
            admin_url=admin_url,
            retry_url=retry_url,
        )
    form_class = FIX_FORMS.get(kind.fix_form)
    target = fix_target(case=case) if form_class is not None else None
    if form_class is None or target is None:
        why = (
            f"The {title} form is not built yet (a later issue): fix the cause where it "
            "lives, then retry the case; nothing was changed."
            if form_class is None
            else f"Case #{case.pk} names nothing this form can fix: fix the cause where it "
            "lives, then retry the case; nothing was changed."
        )
        return FixFormFound(case, kind, title, "unavailable", target, None, why)
    form = form_class(initial=form_class.initial_of(target, case.revision), target=target)
    return FixFormFound(case, kind, title, "form", target, form, "")


def _admin_url(request: Request, kind: CaseType, found: FixActions) -> str | None:
    """The admin page the cause is fixed in (as the page links it)."""
    path = fix_admin_path(kind, found)
    return request.build_absolute_uri(path) if path else None


def _elsewhere(kind: CaseType, admin_url: str | None, retry_url: str | None) -> str:
    """Where the cause of a case whose form is a way elsewhere is fixed, and how it goes again."""
    if kind.fix_form == "connection_settings":
        where = (
            f"The cause is the connection's settings (address, tenant, credentials): fix them "
            f"at {admin_url}, then retry the case."
            if admin_url
            else "This case names no connection: fix the cause where it lives, then retry it."
        )
    elif kind.fix_form == "mapping_edit":
        where = (
            f"The cause is the mapping (or a value map): edit a draft at {admin_url} and "
            "publish it, then retry the case."
            if admin_url
            else "This case names no mapping: fix the cause where it lives, then retry it."
        )
    elif kind.fix_form == "reconciliation":
        where = (
            "A gap between the PSA, Concord's billing and the ERP: correct the record where it "
            "is wrong (the ERP invoice, the time or expense in the PSA); the next "
            "reconciliation closes the case, and retrying it reconciles now."
        )
    elif kind.fix_form == "outbox_replay":
        where = (
            "The system refused or never took these records for a passing reason: retry the "
            "case to send them again, each as a new outbox row with a fresh retry budget."
        )
    else:
        where = (
            "Once the record these messages refer to has been read into Concord, retry the "
            "case to read them again."
        )
    if retry_url:
        return f"{where} Retry: POST {retry_url} with the revision you read."
    return (
        f"{where} There is nothing Concord can re-run for this case: it closes by itself once "
        "the cause is fixed."
    )


def _fix_described(fix: FixFormFound, not_permitted: str) -> dict[str, Any]:
    case = fix.case
    why_not = ""
    if not_permitted:
        why_not = f"{not_permitted} The {case.get_queue_display()} queue fixes it."
    elif case.status != ExceptionCase.Status.OPEN:
        note = f": {case.resolution_note}" if case.resolution_note else "."
        why_not = (
            f"This case is {case.get_status_display().lower()}{note} There is nothing left "
            "to fix here."
        )
    elif fix.form is None:
        why_not = fix.unavailable
    target = fix.target
    return {
        "case": case,
        "form": fix.kind.fix_form,
        "title": fix.title,
        "mode": fix.mode,
        "target": target.label if target is not None else None,
        "adds": target is not None and target.record is None,
        "incoming": _plain(target.initial.get("incoming")) if target is not None else None,
        "fields": [_field(fix.form, name) for name in _names(fix.form)] if fix.form else [],
        "can_apply": not why_not,
        "why_not": why_not,
        "admin_url": fix.admin_url,
        "retry_url": fix.retry_url,
    }


def _names(form: FixForm) -> list[str]:
    """The form's fields a person fills in (the revision is the request's own)."""
    return [name for name in form.fields if name != "revision"]


def _field(form: FixForm, name: str) -> dict[str, Any]:
    bound = form[name]
    field = bound.field
    return {
        "name": name,
        "type": _field_type(field),
        "label": str(bound.label),
        "required": field.required,
        "help_text": str(field.help_text),
        "choices": _choices(field),
        "initial": _plain(bound.value()),
    }


def _field_type(field: forms.Field) -> str:
    for kind, name in FIELD_TYPES:
        if isinstance(field, kind):
            return name
    return "text" if isinstance(field.widget, forms.Textarea) else "string"


def _choices(field: forms.Field) -> list[dict[str, Any]] | None:
    if not isinstance(field, forms.ChoiceField):
        return None
    found = []
    for value, label in cast(Iterable[tuple[Any, Any]], field.choices):
        # A group of choices is (its name, its choices).
        pairs = label if isinstance(label, list | tuple) else [(value, label)]
        for each, words in pairs:
            each = getattr(each, "value", each)  # a record's choice wraps its id
            if each not in ("", None):  # the empty choice: `required` says whether it may be
                found.append({"value": _plain(each), "label": str(words)})
    return found


def _fix_bound(form: FixForm, values: Mapping[str, Any], revision: int) -> FixForm | Response:
    """The form bound to the values posted over its values now (a field left out keeps its
    value, as the page's form holds it); an unknown field is refused rather than ignored."""
    names = _names(form)
    unknown = sorted(set(values) - set(names))
    if unknown:
        return Response(
            {
                "detail": f"The form has no field {', '.join(unknown)}; its fields are "
                f"{', '.join(names)}. Nothing was changed.",
                "errors": {name: ["The form has no such field."] for name in unknown},
            },
            status=status.HTTP_400_BAD_REQUEST,
        )
    data = {name: _plain(form[name].value()) for name in names}
    data.update(values)
    data["revision"] = revision
    return type(form)(data, target=form.target)


def _invalid(errors: Mapping[str, Iterable[Any]], form: FixForm) -> Response:
    """400 with what the form (or the write path) refused, per field, in the page's words."""
    named: dict[str, list[str]] = {}
    for name, messages in errors.items():
        key = name if name in form.fields and name != NON_FIELD_ERRORS else "non_field_errors"
        named.setdefault(key, []).extend(str(m) for m in messages)
    said = "; ".join(
        f"{name.replace('_', ' ')}: {' '.join(messages)}"
        if name != "non_field_errors"
        else " ".join(messages)
        for name, messages in named.items()
    )
    return Response(
        {"detail": f"Nothing was changed. {said}", "errors": named},
        status=status.HTTP_400_BAD_REQUEST,
    )


def _plain(value: Any) -> Any:
    """A value as JSON carries it and as a form takes it back: a record as its id, a date as
    YYYY-MM-DD, an amount as its digits."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Model):
        return value.pk
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


router = SimpleRouter()
router.register("cases", CaseViewSet, basename="case")
router.register("queues", QueueViewSet, basename="workqueue")
urlpatterns = router.urls
