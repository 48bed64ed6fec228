"""A partial update through the connection's published mapping (integrations/sync/outbound.py,
`partial_update_message`): only the fields the mapping writes are sent, with the record's id
where the mapping reads it; a required field it does not write, nothing to send, or no
published mapping is refused with a reason in an admin's words, and no row."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from integrations.mapping.services import mapping_defaults_install
from integrations.models import Connection, Customer, LegalEntity, Project
from integrations.sync.outbound import PartialUpdate, partial_update_message

pytestmark = pytest.mark.django_db

CONTEXT = {"what": "project", "label": "Project P-1", "queue": "pmo", "run_id": 7}


@pytest.fixture
def project() -> Project:
    entity = LegalEntity.objects.create(code="UK01", name="Concord", base_currency="GBP")
    customer = Customer.objects.create(name="Initech", legal_entity=entity, currency="GBP")
    return Project.objects.create(
        code="P-1", name="Initech", customer=customer, legal_entity=entity, currency="GBP"
    )


@pytest.fixture
def harvest(make_connection: Callable[..., Connection]) -> Connection:
    connection = make_connection("harvest")
    mapping_defaults_install(connection=connection)
    return connection


def _update(
    connection: Connection, project: Project, values: dict[str, Any], **options: Any
) -> PartialUpdate:
    return partial_update_message(
        connection=connection,
        canonical_model="project",
        external_id="4711",
        values=values,
        process="change_orders",
        step="psa_project",
        record=project,
        version=3,
        context=CONTEXT,
        **options,
    )


def _system(connection: Connection) -> str:
    return f"Harvest ({connection.name})"


def test_only_the_fields_the_mapping_writes_are_sent_with_the_records_id(
    harvest: Connection, project: Project
) -> None:
    update = _update(harvest, project, {"end_date": date(2028, 4, 30), "colour": "teal"})

    assert update.reason == ""
    assert update.object_type == "projects"
    message = update.message
    assert message is not None
    assert message.pk is None  # the caller enqueues it with its step's other rows
    assert message.payload == {"ends_on": "2028-04-30", "id": "4711"}
    assert (message.operation, message.process, message.step) == (
        "update_project",
        "change_orders",
        "psa_project",
    )
    assert (message.object_id, message.record_version) == (project.pk, 3)
    assert message.context == CONTEXT


def test_a_required_field_the_mapping_does_not_write_is_refused_in_its_words(
    harvest: Connection, project: Project
) -> None:
    update = _update(
        harvest,
        project,
        {"end_date": date(2028, 4, 30), "colour": "teal"},
        required=("end_date", "colour"),
        words={"end_date": "end date", "colour": "colour of the project"},
    )

    assert update.message is None
    assert update.reason == (
        f"the published projects mapping of {_system(harvest)} writes no colour of the project"
    )
    assert update.object_type == "projects"


def test_nothing_the_mapping_writes_is_refused(harvest: Connection, project: Project) -> None:
    one = _update(harvest, project, {"colour": "teal"})
    two = _update(harvest, project, {"colour": "teal", "size": 3})

    assert (one.message, two.message) == (None, None)
    assert one.reason == f"the published projects mapping of {_system(harvest)} writes no colour"
    assert two.reason == (
        f"the published projects mapping of {_system(harvest)} writes none of colour, size"
    )


def test_a_connection_without_the_published_mapping_or_the_operation_is_refused(
    make_connection: Callable[..., Connection], project: Project
) -> None:
    bare = make_connection("harvest")  # no mappings published
    no_mapping = _update(bare, project, {"end_date": date(2028, 4, 30)})
    no_operation = partial_update_message(
        connection=bare,
        canonical_model="invoice",
        external_id="1",
        values={"status": "paid"},
        process="back_sync",
        step="psa_invoice",
        record=project,
        version=1,
        context={},
    )

    assert no_mapping.message is None
    assert no_mapping.reason == f"{_system(bare)} has no published projects mapping"
    assert no_mapping.object_type == "projects"
    assert no_operation.message is None
    assert no_operation.reason == f"{_system(bare)} has no operation to update a invoice"
    assert no_operation.object_type == ""
