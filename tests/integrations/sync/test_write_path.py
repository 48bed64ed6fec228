"""The one write path of canonical records: a polled page, a webhook's record and a person's edit
are checked by the same compiled copy of full_clean, refused in the same words, and a record that
is refused fails alone while the rest of its page lands."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import models
from rest_framework.test import APIClient

from integrations.mapping.apply import MappedRecord
from integrations.mapping.ownership import OwnershipRules
from integrations.mapping.services import mapping_defaults_install
from integrations.models import (
    AuditEvent,
    Connection,
    CrossReference,
    Customer,
    InboundMessage,
    Project,
    Resource,
    TimeEntry,
)
from integrations.roles import PMO
from integrations.sync.inbound import inbound_process
from integrations.sync.polling import poll_object
from integrations.sync.records import record_update
from integrations.sync.upsert import canonical_upsert, plan_upsert, write_upsert
from integrations.sync.validation import row_checks
from tests.factories import CustomerFactory, ProjectFactory, ResourceFactory, make_connection
from tests.integrations.conftest import Sandbox

pytestmark = pytest.mark.django_db


def _full_clean_errors(model: type[models.Model], row: dict[str, Any]) -> dict[str, list[str]]:
    try:
        model(**row).full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        return dict(exc.message_dict)
    return {}


# -- the compiled checks say what full_clean says ------------------------------------------------


def test_compiled_checks_report_what_full_clean_reports_for_a_new_project() -> None:
    customer = CustomerFactory.create()
    row = {
        "code": "P" * 70,  # max_length 64
        "name": "",  # blank
        "customer_id": customer.pk,
        "region": "mars",  # not a choice
        "currency": "eur",  # the ISO 4217 validator
        "budget": Decimal("1234567890123.456"),  # 14 digits, 2 places
        "status": "open",  # not a choice
    }
    expected = _full_clean_errors(Project, row)
    assert set(expected) == {"code", "name", "region", "currency", "budget", "status"}
    assert row_checks(Project, tuple(row), creating=True)(dict(row)) == expected


def test_compiled_checks_convert_and_refuse_as_full_clean_does() -> None:
    project = ProjectFactory.create()
    worker = ResourceFactory.create()
    # Unwritten on a new record: `date` keeps its default (None) and is refused for it.
    row = {"project_id": project.pk, "resource_id": worker.pk, "hours": "abc", "task": 7}
    expected = _full_clean_errors(TimeEntry, row)
    assert set(expected) == {"hours", "date"}
    checked = dict(row)
    assert row_checks(TimeEntry, tuple(row), creating=True)(checked) == expected
    assert checked["task"] == "7"  # converted to the field's type, as Field.clean would

    good = {"project_id": project.pk, "resource_id": worker.pk, "date": date(2026, 11, 2)}
    good |= {"hours": "7.5"}
    assert row_checks(TimeEntry, tuple(good), creating=True)(good) is None
    assert good["hours"] == Decimal("7.5")


def test_compiled_checks_of_an_update_look_only_at_the_fields_written() -> None:
    row = {"email": "not-an-address", "cost_rate": None}
    expected = _full_clean_errors(Resource, {**row, "name": "N", "role": "R"})
    assert set(expected) == {"email", "cost_rate", "cost_currency"}
    got = row_checks(Resource, tuple(row), creating=False)(dict(row))
    assert got == {"email": expected["email"], "cost_rate": expected["cost_rate"]}


# -- one record, many records, one person: the same refusal -------------------------------------


def _worker(external_id: str, version: int, **fields: object) -> MappedRecord:
    values = {
        "name": "N",
        "email": f"{external_id}@example.invalid",
        "role": "Consultant",
        "cost_rate": Decimal("0"),
        "cost_currency": "EUR",
    }
    return MappedRecord("resource", external_id, version, {**values, **fields}, [])


def test_a_models_own_clean_refuses_alike_on_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def clean(self: Resource) -> None:
        if self.role == "Intern" and self.cost_rate > 0:
            raise ValidationError({"cost_rate": "Interns carry no cost rate."})

    monkeypatch.setattr(Resource, "clean", clean, raising=False)
    connection = make_connection(name="Harvest", role="psa", vendor="harvest")
    costed = {"role": "Intern", "cost_rate": Decimal("10"), "cost_currency": "EUR"}
    page = [_worker("u-1", 5, **costed), _worker("u-2", 5, cost_rate=0)]
    plan = plan_upsert(connection=connection, mapped=page, rules=OwnershipRules())
    write_upsert(plan)
    assert plan.notes == {0: ("failed", "resource u-1: cost_rate: Interns carry no cost rate.")}
    assert list(Resource.objects.values_list("email", flat=True)) == ["u-2@example.invalid"]

    one = canonical_upsert(
        connection=connection, mapped=_worker("u-3", 5, **costed), rules=plan.rules
    )
    assert (one.state, one.error) == (
        "failed",
        "resource u-3: cost_rate: Interns carry no cost rate.",
    )

    stored = Resource.objects.get()
    with pytest.raises(ValidationError) as refused:
        record_update(
            record=stored, data={"role": "Intern", "cost_rate": Decimal("10")}, actor=None
        )
    assert refused.value.message_dict == {"cost_rate": ["Interns carry no cost rate."]}


def test_a_record_the_database_refuses_fails_alone_and_the_rest_of_the_batch_lands() -> None:
    connection = make_connection(name="Harvest", role="psa", vendor="harvest")
    taken = ResourceFactory.create(email="taken@example.invalid")
    page = [_worker("u-1", 5), _worker("u-2", 5, email=taken.email), _worker("u-3", 5)]
    plan = plan_upsert(connection=connection, mapped=page, rules=OwnershipRules())
    write_upsert(plan)
    assert plan.later == {
        1: ("failed", "resource u-2: email: Resource with this Email already exists.")
    }
    assert plan.outcome["applied"] == 2
    assert Resource.objects.count() == 3
    ids = CrossReference.objects.filter(connection=connection).values_list("external_id", flat=True)
    assert sorted(ids) == ["u-1", "u-3"]  # no cross-reference left behind for the refused one


def test_a_project_without_a_region_is_stored_by_the_one_record_path() -> None:
    connection = make_connection(name="Harvest", role="psa", vendor="harvest")
    customer = CustomerFactory.create()
    CrossReference.objects.create(
        content_type=ContentType.objects.get_for_model(Customer),
        object_id=customer.pk,
        connection=connection,
        external_id="c-1",
    )
    fields = {"code": "H-1", "name": "Harvest project", "currency": "EUR"}
    fields["customer__external_id"] = "c-1"
    mapped = MappedRecord("project", "p-1", 10, fields, [])
    result = canonical_upsert(connection=connection, mapped=mapped, rules=OwnershipRules())
    assert (result.state, result.created) == ("applied", True)
    assert result.record_id is not None
    assert Project.objects.get(pk=result.record_id).region == ""


# -- against the Harvest sandbox ---------------------------------------------------------------


@pytest.fixture
def harvest(make_connection: Callable[..., Connection], sandbox: Sandbox) -> Connection:
    sandbox.limits("*", enabled=False)
    sandbox.post("/seed", {"scale": 1, "seed": 7})
    connection = make_connection("harvest", rate_limit_per_minute=100_000)
    mapping_defaults_install(connection=connection)
    poll_object(connection_id=connection.pk, object_type="clients")
    return connection


def test_polling_refuses_what_the_webhook_path_refuses_in_the_same_words(
    harvest: Connection, sandbox: Sandbox
) -> None:
    projects = sandbox.records("harvest", "projects")
    bad = projects[0]
    sandbox.patch("harvest", "projects", bad["id"], {"code": "P" * 70})

    report = poll_object(connection_id=harvest.pk, object_type="projects")
    assert report.failed == 1
    assert Project.objects.count() == len(projects) - 1  # the rest of the page landed
    polled = InboundMessage.objects.get(
        connection=harvest, object_type="projects", external_id=str(bad["id"])
    )
    assert polled.state == "failed"
    django_words = _full_clean_errors(Project, {"code": "P" * 70})["code"][0]
    assert polled.error == f"project {bad['id']}: code: {django_words}"

    # The same record through the one-record path (a webhook names it; Concord reads it).
    delivered = InboundMessage.objects.create(
        connection=harvest,
        source=InboundMessage.Source.WEBHOOK,
        object_type="projects",
        external_id=str(bad["id"]),
        dedupe_key=f"test:{bad['id']}",
        payload={},
    )
    assert inbound_process(message_id=delivered.pk) == "failed"
    delivered.refresh_from_db()
    assert delivered.error == polled.error


def test_a_project_polled_from_harvest_can_be_edited_by_pmo(
    harvest: Connection, sandbox: Sandbox, api_client_as: Callable[..., APIClient]
) -> None:
    report = poll_object(connection_id=harvest.pk, object_type="projects")
    assert report.failed == 0
    project = Project.objects.order_by("pk").first()
    assert project is not None
    assert project.region == ""  # Harvest has no region: blank until someone knows it

    client = api_client_as(PMO)
    response = client.patch(
        f"/api/v1/projects/{project.pk}/",
        {"status": "on_hold", "name": "Renamed by PMO"},
        format="json",
    )
    assert response.status_code == 200, response.content
    project.refresh_from_db()
    assert (project.status, project.name) == ("on_hold", "Renamed by PMO")
    (event,) = AuditEvent.objects.filter(object_type="project", object_id=str(project.pk))
    assert event.changes["owned_by"] == [None, {"name": "psa", "status": "psa"}]

    region = client.patch(f"/api/v1/projects/{project.pk}/", {"region": "emea"}, format="json")
    assert region.status_code == 200, region.content
