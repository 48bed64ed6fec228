"""Loading published mappings: one compile per version, no query per record, reload on publish."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache

from integrations.mapping import selectors
from integrations.mapping.apply import map_inbound
from integrations.mapping.selectors import mapping_load_published
from integrations.mapping.services import (
    mapping_defaults_install,
    mapping_set_create_draft,
    mapping_set_publish,
    value_map_set_entries,
)
from integrations.models import ValueMap
from tests.factories import make_connection

pytestmark = pytest.mark.django_db


def test_nothing_published_is_none_and_cached(django_assert_num_queries: Any) -> None:
    connection = make_connection()
    with django_assert_num_queries(1):
        assert mapping_load_published(connection_id=connection.pk, object_type="Contacts") is None
    with django_assert_num_queries(0):
        assert mapping_load_published(connection_id=connection.pk, object_type="Contacts") is None


def test_published_mapping_is_compiled_once(django_assert_num_queries: Any) -> None:
    connection = make_connection()
    mapping_defaults_install(connection=connection)
    selectors.mapping_cache_clear()
    # The published row, its fields, the value maps and their entries.
    with django_assert_num_queries(4):
        first = mapping_load_published(connection_id=connection.pk, object_type="Invoices")
    with django_assert_num_queries(0):
        for _ in range(1000):
            again = mapping_load_published(connection_id=connection.pk, object_type="Invoices")
    assert first is again
    assert first is not None
    assert (first.canonical_model, first.version) == ("invoice", 1)


def test_publishing_a_version_reloads_it(
    django_capture_on_commit_callbacks: Any, django_assert_num_queries: Any
) -> None:
    connection = make_connection()
    with django_capture_on_commit_callbacks(execute=True):
        mapping_defaults_install(connection=connection)
    v1 = mapping_load_published(connection_id=connection.pk, object_type="Contacts")
    assert v1 is not None
    assert v1.version == 1
    with django_capture_on_commit_callbacks(execute=True):
        draft = mapping_set_create_draft(
            connection=connection, object_type="Contacts", canonical_model="customer", actor=None
        )
        draft.fields.filter(canonical_field="country").delete()
        # Not yet published: workers keep applying v1.
        assert mapping_load_published(connection_id=connection.pk, object_type="Contacts") is v1
        mapping_set_publish(mapping_set=draft, actor=None)
    v2 = mapping_load_published(connection_id=connection.pk, object_type="Contacts")
    assert v2 is not None
    assert v2.version == 2
    assert "country" not in {f.name for f in v2.inbound}


def test_other_processes_reload_when_the_shared_generation_moves(
    monkeypatch: pytest.MonkeyPatch, django_assert_num_queries: Any
) -> None:
    connection = make_connection()
    mapping_defaults_install(connection=connection)
    monkeypatch.setattr(selectors, "CHECK_INTERVAL_S", 0.0)
    first = mapping_load_published(connection_id=connection.pk, object_type="Contacts")
    with django_assert_num_queries(0):
        assert mapping_load_published(connection_id=connection.pk, object_type="Contacts") is first
    # Another process publishes: it bumps the shared counter, this process only sees Redis.
    cache.add(selectors.GENERATION_KEY, 0, timeout=None)
    cache.incr(selectors.GENERATION_KEY)
    with django_assert_num_queries(4):
        reloaded = mapping_load_published(connection_id=connection.pk, object_type="Contacts")
    assert reloaded is not first  # same version, compiled again
    assert reloaded is not None
    assert first is not None
    assert (reloaded.mapping_set_id, reloaded.version) == (first.mapping_set_id, first.version)


def test_value_map_change_reaches_the_published_mapping(
    django_capture_on_commit_callbacks: Any,
) -> None:
    connection = make_connection()
    mapping_defaults_install(connection=connection)
    mapping = mapping_load_published(connection_id=connection.pk, object_type="Invoices")
    assert mapping is not None
    invoice = {"InvoiceID": "i", "Status": "DELETED", "Contact": {"ContactID": "c"}}
    assert map_inbound(mapping, invoice).fields["status"] == "voided"

    value_map = ValueMap.objects.get(name="xero_invoice_status")
    entries = dict(value_map.entries.values_list("vendor_value", "canonical_value"))
    entries["DELETED"] = "draft"
    with django_capture_on_commit_callbacks(execute=True):
        value_map_set_entries(value_map=value_map, entries=entries, actor=None)
    reloaded = mapping_load_published(connection_id=connection.pk, object_type="Invoices")
    assert reloaded is not None
    assert map_inbound(reloaded, invoice).fields["status"] == "draft"
