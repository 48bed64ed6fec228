"""/healthz answers from real probes: database, broker, worker heartbeat, beat tick."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from integrations.models import Heartbeat
from integrations.services.health import heartbeat_record

pytestmark = pytest.mark.django_db


def test_ok_when_every_component_reports() -> None:
    heartbeat_record(component="worker", hostname="w1")
    heartbeat_record(component="beat", hostname="b1")
    response = Client().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "worker", "beat"}
    assert body["checks"]["broker"]["transport"] == "redis"
    assert body["checks"]["worker"]["alive"] == ["w1"]


def test_degraded_with_503_when_the_worker_is_silent() -> None:
    heartbeat_record(component="beat", hostname="b1")
    Heartbeat.objects.create(
        component="worker", hostname="w1", seen_at=timezone.now() - timedelta(minutes=5)
    )
    response = Client().get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["worker"]["status"] == "down"
    assert "older than" in body["checks"]["worker"]["error"]
    assert body["checks"]["beat"]["status"] == "ok"


def test_degraded_when_beat_never_ticked() -> None:
    heartbeat_record(component="worker", hostname="w1")
    body = Client().get("/healthz").json()
    assert body["checks"]["beat"] == {"status": "down", "error": "no beat has ever reported"}


def test_degraded_when_the_broker_is_unreachable(settings) -> None:
    from config.celery import app

    heartbeat_record(component="worker", hostname="w1")
    heartbeat_record(component="beat", hostname="b1")
    # Port 9 (discard) has nothing listening on loopback here.
    app.conf.update(broker_url="redis://127.0.0.1:9/0")
    try:
        response = Client().get("/healthz")
    finally:
        app.conf.update(broker_url=settings.CELERY_BROKER_URL)
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["status"] == "down"
