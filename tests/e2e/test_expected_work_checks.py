"""Expected work that did not happen, with real processes: Celery beat sends its
``check-expected-work`` row (an integration admin shortened it to every 10 seconds on the
schedules page, which beat keeps), a real worker runs the checks, a run stuck at a step becomes
one case for integration admins, and the case closes by itself once the run has moved on."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from exceptions.models import BlockedRecord, ExceptionCase, Queue
from integrations.models import RunState, WorkflowRun
from integrations.roles import INTEGRATION_ADMIN
from integrations.services.schedules import schedule_update
from tests.factories import UserFactory
from tests.processes import beat_proc, process_env, running, wait_until, worker_proc
from tests.provisioning_runs import provisioning_runs

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROW = "check-expected-work"


def _every_ten_seconds() -> None:
    """The row as beat stores it from config/celery.py, changed by a person to 10 s (audited,
    so beat keeps it when it starts), last run an hour ago (due at beat's first tick)."""
    every_5_min, _ = IntervalSchedule.objects.get_or_create(every=300, period="seconds")
    task = PeriodicTask.objects.create(
        name=ROW, task="integrations.check_expected_work", interval=every_5_min
    )
    schedule_update(task=task, actor=UserFactory.create(role=INTEGRATION_ADMIN), interval_s=10)
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=timezone.now() - timedelta(hours=1))


def _stuck_case() -> ExceptionCase | None:
    return ExceptionCase.objects.filter(case_type="workflow_run_stuck").first()


def test_beat_and_a_worker_turn_a_stuck_run_into_a_case_that_closes_itself(
    tmp_path: Path,
) -> None:
    stuck = provisioning_runs(3, step="erp_dimension", since=timedelta(hours=2))
    _every_ten_seconds()
    env = process_env()
    worker = worker_proc(env, tmp_path / "worker.log", concurrency=1)
    beat = beat_proc(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    with running(worker, beat):
        try:
            case = wait_until(_stuck_case, timeout=90, what="the stuck-run case", interval=0.5)
        except AssertionError:
            pytest.fail(f"no case\n{worker.output()}\n{beat.output()}")
        assert case.status == ExceptionCase.Status.OPEN
        assert case.queue == Queue.INTEGRATION_ADMIN
        assert case.record_count == 3
        assert "Project dimension in the ERP" in case.message
        assert set(BlockedRecord.objects.filter(case=case).values_list("record_id", flat=True)) == {
            r.pk for r in stuck
        }

        WorkflowRun.objects.filter(pk__in=[r.pk for r in stuck]).update(
            state=RunState.DONE, current_step="", finished_at=timezone.now()
        )

        def resolved() -> bool:
            case.refresh_from_db()
            return case.status == ExceptionCase.Status.RESOLVED

        try:
            wait_until(resolved, timeout=60, what="the case closing itself", interval=0.5)
        except AssertionError:
            pytest.fail(f"case still open\n{worker.output()}\n{beat.output()}")
    assert "went past the step" in case.resolution_note
    assert ExceptionCase.objects.filter(case_type="workflow_run_stuck").count() == 1
