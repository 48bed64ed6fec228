"""Workflow runs (integrations/models/workflows.py): opening one per business object, moving it
step by step, holding it on a case, resuming it where it stopped.

A process is an ordered list of steps, each an idempotent function of the run (`StepFn`): it
looks at what exists already (a cross-reference, a delivered outbox row) and either finishes
(DONE, or SKIPPED when nothing was needed), or writes outbox rows and waits for their delivery
(WAITING: the process's after-delivery handler calls `run_advance` again), or names the case
that holds it up (BLOCKED). `run_advance` runs the steps from the first one not finished, so
calling it again, for a trigger delivered twice or a case retried, never repeats a finished
step and never sends a write twice (the outbox keys it by process, step, record and version).

Every change of a run is made with its row locked (`run_lock`), so a delivery and a retry of
the same run apply one after the other. A person's action on a run (`run_retry`) is audited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from exceptions.models import BlockedRecord, ExceptionCase
from exceptions.services import Actor
from integrations.models import (
    AuditEvent,
    LegalEntity,
    RunState,
    StepState,
    WorkflowRun,
    WorkflowStep,
)
from integrations.services.audit import audit_record
from integrations.sync.bulk import copy_insert, update_rows

# How a case names the run it holds (its BlockedRecord's record_type).
RUN_RECORD = "workflowrun"


class Progress(StrEnum):
    """What one try of a step came to."""

    DONE = "done"
    SKIPPED = "skipped"  # nothing to do: what it makes exists already
    WAITING = "waiting"  # its writes are in the outbox; their delivery calls run_advance
    BLOCKED = "blocked"  # a case holds it up


@dataclass
class StepResult:
    progress: Progress
    # {system role: {what: id}}: the ids this step produced (or found) in each system.
    ids: dict[str, dict[str, str]] = field(default_factory=dict)
    detail: str = ""
    case: ExceptionCase | None = None

    @classmethod
    def done(cls, detail: str = "", **ids: dict[str, str]) -> StepResult:
        return cls(Progress.DONE, dict(ids), detail)

    @classmethod
    def skipped(cls, detail: str, **ids: dict[str, str]) -> StepResult:
        return cls(Progress.SKIPPED, dict(ids), detail)

    @classmethod
    def waiting(cls, detail: str) -> StepResult:
        return cls(Progress.WAITING, {}, detail)

    @classmethod
    def blocked(cls, case: ExceptionCase, detail: str) -> StepResult:
        return cls(Progress.BLOCKED, {}, detail, case)


StepFn = Callable[[WorkflowRun], StepResult]


@dataclass(frozen=True)
class Process:
    """A business process as runs carry it out: its name and its steps in order."""

    name: str
    steps: tuple[tuple[str, StepFn], ...]

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.steps)


# --- Opening and locking ------------------------------------------------------------------------


def run_open(
    *,
    process: Process,
    subject_key: str,
    label: str,
    input: Mapping[str, Any],
    legal_entity: LegalEntity | None = None,
    region: str = "",
) -> tuple[WorkflowRun, bool]:
    """The run of `process` for `subject_key`, locked; created with its steps (all pending)
    when there is none. Returns (run, created). Call inside a transaction."""
    existing = run_lock_by_subject(process=process.name, subject_key=subject_key)
    if existing is not None:
        return existing, False
    now = timezone.now()
    try:
        with transaction.atomic():
            run = WorkflowRun.objects.create(
                process=process.name,
                subject_key=subject_key,
                label=label[:200],
                input=dict(input),
                legal_entity=legal_entity,
                region=region,
                started_at=now,
                current_step=process.step_names[0],
            )
            WorkflowStep.objects.bulk_create(
                WorkflowStep(run=run, position=n, name=name)
                for n, name in enumerate(process.step_names)
            )
    except IntegrityError:
        # Opened by another worker meanwhile (the same trigger delivered twice at once).
        found = run_lock_by_subject(process=process.name, subject_key=subject_key)
        if found is None:
            raise
        return found, False
    return run, True


@dataclass(frozen=True)
class Opening:
    """A run to open (`runs_open`): its subject's key, label, input, legal entity, region, and
    the canonical record it is about when that exists already (`run_subject_set`)."""

    subject_key: str
    label: str
    input: Mapping[str, Any]
    legal_entity: LegalEntity | None = None
    region: str = ""
    subject: models.Model | None = None


def runs_open(
    *, process: Process, openings: Sequence[Opening]
) -> list[tuple[WorkflowRun, dict[str, WorkflowStep]]]:
    """`run_open` for many subjects that have no run yet, in two statements: the runs, then
    their steps (all pending). Returns each run with its steps by name, for `run_advance`. A
    subject whose run another worker opened meanwhile raises IntegrityError: the caller's
    transaction (which must span this) is undone, and the subjects go one by one (`run_open`
    finds that run)."""
    now = timezone.now()
    runs = [
        WorkflowRun(
            process=process.name,
            subject_key=opening.subject_key,
            label=opening.label[:200],
            input=dict(opening.input),
            legal_entity=opening.legal_entity,
            region=opening.region,
            started_at=now,
            current_step=process.step_names[0],
            subject_type=(
                ContentType.objects.get_for_model(opening.subject)
                if opening.subject is not None
                else None
            ),
            subject_id=opening.subject.pk if opening.subject is not None else None,
        )
        for opening in openings
    ]
    # By COPY: a batch of 50 runs is 450 steps, and Django's INSERT of them cost more than
    # all the batch's other statements together.
    copy_insert(WorkflowRun, runs)
    steps = [
        WorkflowStep(run=run, position=n, name=name)
        for run in runs
        for n, name in enumerate(process.step_names)
    ]
    copy_insert(WorkflowStep, steps)
    width = len(process.step_names)
    return [
        (run, {step.name: step for step in steps[n * width : (n + 1) * width]})
        for n, run in enumerate(runs)
    ]


def run_lock_by_subject(*, process: str, subject_key: str) -> WorkflowRun | None:
    return (
        WorkflowRun.objects.select_for_update()
        .filter(process=process, subject_key=subject_key)
        .first()
    )


def run_lock(*, run_id: int) -> WorkflowRun | None:
    return WorkflowRun.objects.select_for_update().filter(pk=run_id).first()


def run_subject_set(*, run: WorkflowRun, record: models.Model) -> None:
    """The canonical record the run is about, once it exists (the project it provisioned)."""
    run.subject_type = ContentType.objects.get_for_model(record)
    run.subject_id = record.pk
    run.save(update_fields=["subject_type", "subject_id", "updated_at"])


# --- Moving on ----------------------------------------------------------------------------------


def run_advance(
    *, run: WorkflowRun, process: Process, steps: dict[str, WorkflowStep] | None = None
) -> WorkflowRun:
    """Run the steps of a locked run from the first one not finished, until one waits or is
    blocked, or the run is done. Each step's state, timings, tries and ids are written as it
    goes; the run's own state and current step follow. `steps`: the run's steps by name, when
    the caller has them (`runs_open`)."""
    if run.state == RunState.DONE:
        return run
    if steps is None:
        steps = {s.name: s for s in WorkflowStep.objects.filter(run=run).order_by("position")}
    if any(name not in steps for name in process.step_names):
        steps = _steps_complete(run, process, steps)
    run.attempts += 1
    for name, fn in process.steps:
        step = steps[name]
        if step.state in (StepState.DONE, StepState.SKIPPED):
            continue
        _step_begin(run, step)
        result = fn(run)
        _step_record(run, step, result)
        if result.progress in (Progress.WAITING, Progress.BLOCKED):
            _save(run)
            return run
    run.state = RunState.DONE
    run.current_step = ""
    run.exception_case = None
    run.finished_at = timezone.now()
    _save(run)
    return run


# The runs and steps changed inside `runs_saved_together`, by (model, id), written as it ends.
_unsaved: ContextVar[dict[tuple[type[models.Model], int], models.Model] | None] = ContextVar(
    "runs_unsaved", default=None
)
_RUN_FIELDS = (
    "label",
    "subject_type",
    "subject_id",
    "state",
    "current_step",
    "input",
    "context",
    "exception_case",
    "attempts",
    "legal_entity",
    "region",
    "step_started_at",
    "finished_at",
    "updated_at",
)
_STEP_FIELDS = (
    "state",
    "started_at",
    "finished_at",
    "attempts",
    "external_ids",
    "detail",
    "exception_case",
)


@contextmanager
def runs_saved_together() -> Iterator[None]:
    """Within it (and its caller's transaction), the runs and steps `run_advance` changes are
    kept and written as it ends: one statement for the runs and one for the steps of a batch of
    runs opened together, instead of three a run. Nothing inside may read them back from the
    database before the end, except through `run_ids` (which writes them first)."""
    if _unsaved.get() is not None:
        yield
        return
    token = _unsaved.set({})
    try:
        yield
        _saved_together()
    finally:
        _unsaved.reset(token)


_T = TypeVar("_T")
LookUps = dict[tuple[Any, ...], Any]


class LookedUpTogether:
    """What the steps of a batch of runs opened together look up, read once for all of them
    (a workflow's ``_look_up_together``) and offered to each step while the batch advances its
    runs (`sharing`); outside a batch, each step looks up for itself. One per workflow, so two
    workflows' keys never meet."""

    def __init__(self, name: str) -> None:
        self._var: ContextVar[LookUps | None] = ContextVar(name, default=None)

    @contextmanager
    def sharing(self, found: LookUps) -> Iterator[None]:
        token = self._var.set(found)
        try:
            yield
        finally:
            self._var.reset(token)

    def get(self, key: tuple[Any, ...], load: Callable[[], _T]) -> _T:
        """The batch's answer for `key` when it read one, else `load()` now."""
        shared = self._var.get()
        if shared is not None and key in shared:
            found: _T = shared[key]
            return found
        return load()

    @property
    def current(self) -> LookUps | None:
        """The batch's look-ups (a step that keeps them current as it writes), else None."""
        return self._var.get()


def _save(obj: WorkflowRun | WorkflowStep) -> None:
    unsaved = _unsaved.get()
    if unsaved is None:
        obj.save()
        return
    if isinstance(obj, WorkflowRun):
        obj.updated_at = timezone.now()
    unsaved[(type(obj), obj.pk)] = obj


def _saved_together() -> None:
    unsaved = _unsaved.get()
    if not unsaved:
        return
    kept = list(unsaved.values())
    unsaved.clear()
    update_rows(WorkflowRun, [o for o in kept if isinstance(o, WorkflowRun)], _RUN_FIELDS)
    update_rows(WorkflowStep, [o for o in kept if isinstance(o, WorkflowStep)], _STEP_FIELDS)


def _steps_complete(
    run: WorkflowRun, process: Process, steps: dict[str, WorkflowStep]
) -> dict[str, WorkflowStep]:
    """A run opened before a step was added to its process is given the steps it lacks, in
    their places (a run's positions are unique, so the others move out of the way first).
    Looked for with the steps run_advance reads anyway: no query of its own in the usual case."""
    missing = [name for name in process.step_names if name not in steps]
    existing = WorkflowStep.objects.filter(run=run)
    existing.update(position=models.F("position") + 1000)
    WorkflowStep.objects.bulk_create(
        WorkflowStep(run=run, position=2000 + n, name=name) for n, name in enumerate(missing)
    )
    for position, name in enumerate(process.step_names):
        existing.filter(name=name).update(position=position)
    return {s.name: s for s in WorkflowStep.objects.filter(run=run).order_by("position")}


def _step_begin(run: WorkflowRun, step: WorkflowStep) -> None:
    now = timezone.now()
    if run.current_step != step.name or run.step_started_at is None:
        run.current_step = step.name
        run.step_started_at = now
    if step.started_at is None:
        step.started_at = now
    step.attempts += 1


def _step_record(run: WorkflowRun, step: WorkflowStep, result: StepResult) -> None:
    now = timezone.now()
    for role, ids in result.ids.items():
        step.external_ids.setdefault(role, {}).update(ids)
    step.detail = result.detail[:2000]
    if result.progress in (Progress.DONE, Progress.SKIPPED):
        step.state = StepState.DONE if result.progress == Progress.DONE else StepState.SKIPPED
        step.finished_at = now
        step.exception_case = None
    elif result.progress == Progress.WAITING:
        step.state = StepState.RUNNING
        step.exception_case = None
        run.state = RunState.RUNNING
        run.exception_case = None
    else:
        step.state = StepState.BLOCKED
        step.exception_case = result.case
        run.state = RunState.BLOCKED
        run.exception_case = result.case
    _save(step)


def run_ids(run: WorkflowRun) -> dict[str, dict[str, str]]:
    """Every id the run's steps produced, by system role: {"erp": {"customer": ...}, ...}."""
    _saved_together()
    merged: dict[str, dict[str, str]] = {}
    for ids in (
        WorkflowStep.objects.filter(run=run)
        .order_by("position")
        .values_list("external_ids", flat=True)
    ):
        for role, found in (ids or {}).items():
            merged.setdefault(role, {}).update(found)
    return merged


# --- A person's hand ----------------------------------------------------------------------------


def run_retry(*, run_id: int, process: Process, actor: Actor) -> WorkflowRun | None:
    """A person runs a blocked (or waiting) run again from the step where it stopped. Audited
    with the step it stood at before and after. None when there is no such run."""
    with transaction.atomic():
        run = run_lock(run_id=run_id)
        if run is None:
            return None
        before = {"state": run.state, "current_step": run.current_step}
        run = run_advance(run=run, process=process)
        audit_record(
            actor=actor,
            action=AuditEvent.Action.UPDATE,
            instance=run,
            changes={
                key: [value, getattr(run, key)]
                for key, value in before.items()
                if value != getattr(run, key)
            }
            or {"retried": [before["current_step"], run.current_step]},
        )
        return run


def runs_held_by(*, case: ExceptionCase) -> list[int]:
    """The runs a case holds (its blocked records of type workflowrun), oldest first."""
    return sorted(
        BlockedRecord.objects.filter(case=case, record_type=RUN_RECORD).values_list(
            "record_id", flat=True
        )
    )
