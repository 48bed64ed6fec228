"""Provisioning runs as the workflow leaves them (integrations/models/workflows.py), made in bulk
for the board's and the expected-work checks' tests: thousands in a second, each with its six
steps, the ones before its current step done."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from integrations.models import RunState, StepState, WorkflowRun, WorkflowStep
from integrations.workflows.provisioning import PROVISIONING

STEPS = PROVISIONING.step_names
_numbers = itertools.count(1)


def provisioning_runs(
    count: int,
    *,
    step: str,
    since: timedelta,
    state: str = RunState.RUNNING,
    detail: str = "Sent through the outbox.",
    now: datetime | None = None,
    **fields: Any,
) -> list[WorkflowRun]:
    """`count` runs at `step` since `since` ago (a done run finished then), in `state`; the
    current step holds `detail`. `fields` go to each run (region, legal_entity, context, ...)."""
    now = now or timezone.now()
    at = now - since
    done = state == RunState.DONE
    runs = WorkflowRun.objects.bulk_create(
        WorkflowRun(
            **{
                "process": "provisioning",
                "subject_key": f"opportunity:1:006{n:07d}",
                "label": f"Opportunity {n}",
                "state": state,
                "current_step": "" if done else step,
                "input": {"amount": "1000", "currency": "EUR"},
                "started_at": at - timedelta(minutes=30),
                "step_started_at": at,
                "finished_at": at if done else None,
                **fields,
            }
        )
        for n in (next(_numbers) for _ in range(count))
    )
    current = STEPS.index(step)
    steps = []
    for run in runs:
        for position, name in enumerate(STEPS):
            finished = done or position < current
            here = position == current and not done
            steps.append(
                WorkflowStep(
                    run=run,
                    position=position,
                    name=name,
                    state=StepState.DONE
                    if finished
                    else (_step_state(state) if here else StepState.PENDING),
                    started_at=at - timedelta(minutes=30 - position)
                    if finished
                    else (at if here else None),
                    finished_at=at - timedelta(minutes=29 - position) if finished else None,
                    attempts=1 if finished or here else 0,
                    detail=detail if here else ("Done." if finished else ""),
                    external_ids={"erp": {"customer": f"cust-{run.pk}"}}
                    if finished and name == "erp_customer"
                    else {},
                )
            )
    WorkflowStep.objects.bulk_create(steps)
    return runs


def _step_state(state: str) -> str:
    return StepState.BLOCKED if state == RunState.BLOCKED else StepState.RUNNING
