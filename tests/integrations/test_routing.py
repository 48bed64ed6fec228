"""Which connection serves a legal entity for a role (integrations/selectors.py): the entity's
routing rule, else the role's default rule, else the role's one enabled connection; the bulk
form a billing run reads answers the same for every entity."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from integrations.models import Connection, LegalEntity, RoutingRule
from integrations.selectors import (
    route_table_load,
    routing_connection,
    routing_rule_serving,
)

pytestmark = pytest.mark.django_db


def _erp(name: str, *, enabled: bool = True) -> Connection:
    return Connection.objects.create(
        name=name, role="erp", vendor="xero", base_url="http://127.0.0.1:1/x", enabled=enabled
    )


def _entity(code: str) -> LegalEntity:
    return LegalEntity.objects.create(code=code, name=f"Concord {code}", base_currency="GBP")


def test_the_entitys_rule_before_the_default_and_the_default_for_the_others(
    django_assert_num_queries: Any,
) -> None:
    uk, de = _entity("UK01"), _entity("DE01")
    legacy, new = _erp("Legacy Xero"), _erp("New Xero")
    RoutingRule.objects.create(role="erp", connection=legacy)
    RoutingRule.objects.create(role="erp", legal_entity=uk, connection=new)

    with django_assert_num_queries(1):  # every step of every run asks
        assert routing_connection(role="erp", legal_entity_id=uk.pk) == new
    assert routing_connection(role="erp", legal_entity_id=de.pk) == legacy
    assert routing_connection(role="erp", legal_entity_id=None) == legacy
    assert routing_connection(role="psa", legal_entity_id=uk.pk) is None


def test_without_a_rule_the_one_enabled_connection_serves_and_two_serve_none() -> None:
    uk = _entity("UK01")
    only = _erp("Xero")
    _erp("Old Xero", enabled=False)
    assert routing_connection(role="erp", legal_entity_id=uk.pk) == only
    assert routing_rule_serving(role="erp", legal_entity_id=uk.pk) is None

    _erp("Second Xero")
    assert routing_connection(role="erp", legal_entity_id=uk.pk) is None


def test_a_rule_to_a_disabled_connection_serves_only_the_route_as_it_stands() -> None:
    uk = _entity("UK01")
    default, disabled = _erp("Xero"), _erp("Retired Xero", enabled=False)
    RoutingRule.objects.create(role="erp", connection=default)
    own = RoutingRule.objects.create(role="erp", legal_entity=uk, connection=disabled)

    serving = routing_rule_serving(role="erp", legal_entity_id=uk.pk)
    assert serving is not None
    assert serving.connection == default  # where work goes: past the disabled connection
    with transaction.atomic():  # a route switch reads it locked, whatever its connection
        assert (
            routing_rule_serving(role="erp", legal_entity_id=uk.pk, enabled_only=False, lock=True)
            == own
        )


def test_the_bulk_table_answers_as_the_single_read_for_every_entity(
    django_assert_num_queries: Any,
) -> None:
    uk, de, fr = _entity("UK01"), _entity("DE01"), _entity("FR01")
    legacy, new, off = _erp("Legacy Xero"), _erp("New Xero"), _erp("Off", enabled=False)
    RoutingRule.objects.create(role="erp", connection=legacy)
    RoutingRule.objects.create(role="erp", legal_entity=uk, connection=new)
    RoutingRule.objects.create(role="erp", legal_entity=fr, connection=off)

    with django_assert_num_queries(2):  # the routes and the switch history
        table = route_table_load(role="erp")
    for entity_id in (uk.pk, de.pk, fr.pk, None):
        rule = routing_rule_serving(role="erp", legal_entity_id=entity_id)
        assert rule is not None
        assert table.serving(entity_id) == rule.connection, entity_id
    assert table.serving(fr.pk) == legacy
