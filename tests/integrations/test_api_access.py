"""Each role gets what is its own through the API and is refused the rest."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, ROLES, SALES_OPS, VIEWER
from tests.factories import CustomerFactory, LegalEntityFactory, UserFactory, make_connection

pytestmark = pytest.mark.django_db

RECORD_ENDPOINTS = [
    "legal-entities",
    "customers",
    "contracts",
    "projects",
    "resources",
    "assignments",
    "rate-cards",
    "time-entries",
    "expenses",
    "milestones",
    "billing-events",
    "invoices",
    "payments",
    "exchange-rates",
    "tax-rates",
]
ADMIN_ENDPOINTS = ["connections", "cross-references", "ownership-rules", "audit-events"]

# Which role may create which record through the API; everything else is refused.
WRITERS = {
    "legal-entities": {FINANCE},
    "customers": {FINANCE, SALES_OPS},
    "contracts": {SALES_OPS},
    "projects": {PMO},
    "tax-rates": {FINANCE},
    "exchange-rates": {FINANCE},
    "connections": {INTEGRATION_ADMIN},
    "ownership-rules": {INTEGRATION_ADMIN},
}


@pytest.mark.parametrize("endpoint", RECORD_ENDPOINTS + ADMIN_ENDPOINTS + [""])
def test_anonymous_is_refused_everything(endpoint: str) -> None:
    response = APIClient().get(f"/api/v1/{endpoint}/".replace("//", "/"))
    assert response.status_code == 401
    assert "credentials were not provided" in response.json()["detail"]


def test_a_user_without_a_role_sees_nothing(api_client_as: Callable[..., APIClient]) -> None:
    client = api_client_as("")
    for endpoint in RECORD_ENDPOINTS + ADMIN_ENDPOINTS:
        assert client.get(f"/api/v1/{endpoint}/").status_code == 403, endpoint


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_canonical_records(
    role: str, api_client_as: Callable[..., APIClient]
) -> None:
    CustomerFactory.create()
    client = api_client_as(role)
    for endpoint in RECORD_ENDPOINTS:
        assert client.get(f"/api/v1/{endpoint}/").status_code == 200, endpoint


@pytest.mark.parametrize("role", ROLES)
def test_only_integration_admins_see_connections_and_mapping_data(
    role: str, api_client_as: Callable[..., APIClient]
) -> None:
    make_connection()
    client = api_client_as(role)
    for endpoint in ADMIN_ENDPOINTS:
        expected = 200 if role == INTEGRATION_ADMIN else 403
        assert client.get(f"/api/v1/{endpoint}/").status_code == expected, endpoint


def _payload(endpoint: str) -> dict[str, object]:
    entity = LegalEntityFactory.create()
    customer = CustomerFactory.create(legal_entity=entity)
    payloads: dict[str, dict[str, object]] = {
        "legal-entities": {
            "code": "NEW1",
            "name": "New Co",
            "country": "FR",
            "base_currency": "EUR",
        },
        "customers": {"name": "Fresh Customer", "currency": "EUR"},
        "contracts": {
            "number": "C-NEW",
            "customer": customer.pk,
            "billing_model": "tm",
            "currency": "EUR",
        },
        "projects": {
            "code": "P-NEW",
            "name": "New project",
            "customer": customer.pk,
            "region": "emea",
            "currency": "EUR",
        },
        "tax-rates": {"code": "FR-TVA20", "name": "TVA", "country": "FR", "rate_percent": "20"},
        "exchange-rates": {
            "base_currency": "EUR",
            "quote_currency": "CHF",
            "date": "2026-11-20",
            "rate": "0.94",
        },
        "connections": {
            "name": "SF",
            "role": "crm",
            "vendor": "salesforce",
            "base_url": "http://127.0.0.1:8100/salesforce",
        },
        "ownership-rules": {"object_type": "project", "field": "budget", "owner_role": "crm"},
    }
    return payloads[endpoint]


@pytest.mark.parametrize("endpoint", sorted(WRITERS))
@pytest.mark.parametrize("role", ROLES)
def test_writes_are_allowed_only_to_the_owning_role(
    role: str, endpoint: str, api_client_as: Callable[..., APIClient]
) -> None:
    response = api_client_as(role).post(f"/api/v1/{endpoint}/", _payload(endpoint), format="json")
    if role in WRITERS[endpoint]:
        assert response.status_code == 201, response.content
    else:
        assert response.status_code == 403, response.content


def test_nobody_but_admins_deletes_and_viewers_never_change(
    api_client_as: Callable[..., APIClient],
) -> None:
    customer = CustomerFactory.create()
    for role in ROLES:
        client = api_client_as(role)
        assert client.delete(f"/api/v1/customers/{customer.pk}/").status_code == 403
    viewer = api_client_as(VIEWER)
    assert viewer.patch(f"/api/v1/customers/{customer.pk}/", {"name": "x"}).status_code == 403


def test_token_authentication_and_sync_fields_are_read_only() -> None:
    user = UserFactory.create(role=FINANCE)
    token = Token.objects.create(user=user)
    customer = CustomerFactory.create()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = client.patch(
        f"/api/v1/customers/{customer.pk}/",
        {"tax_number": "DE999", "source_version": 999, "source_system": "erp"},
        format="json",
    )
    assert response.status_code == 200
    body = response.json()
    assert body["tax_number"] == "DE999"
    assert body["source_version"] == 0  # set only by the sync engine
    assert body["source_system"] == ""


def test_obtaining_a_token_with_a_password() -> None:
    UserFactory.create(username="fin", role=FINANCE)
    ok = APIClient().post(
        "/api/v1/auth/token/", {"username": "fin", "password": "correct horse battery staple"}
    )
    assert ok.status_code == 200
    assert ok.json()["token"]
    bad = APIClient().post("/api/v1/auth/token/", {"username": "fin", "password": "nope"})
    assert bad.status_code == 400


def test_lists_are_paginated_filtered_and_ordered(
    django_assert_max_num_queries, api_client_as: Callable[..., APIClient]
) -> None:
    de, uk = (
        LegalEntityFactory.create(country="DE"),
        LegalEntityFactory.create(country="GB", base_currency="GBP"),
    )
    for i in range(60):
        CustomerFactory.create(legal_entity=de if i % 2 else uk, name=f"Cust {i:02d}")
    client = api_client_as(VIEWER)
    with django_assert_max_num_queries(6):
        page = client.get("/api/v1/customers/?ordering=name").json()
    assert page["count"] == 60
    assert len(page["results"]) == 50
    assert page["next"].endswith("page=2")
    assert page["results"][0]["name"] == "Cust 00"
    filtered = client.get(f"/api/v1/customers/?legal_entity={uk.pk}&page_size=100").json()
    assert filtered["count"] == 30
    assert {c["legal_entity"] for c in filtered["results"]} == {uk.pk}
    bad = client.get("/api/v1/customers/?legal_entity=not-a-number")
    assert bad.status_code == 400
    assert "legal_entity" in bad.json()


def test_schema_and_docs_are_served_to_signed_in_users(
    api_client_as: Callable[..., APIClient],
) -> None:
    client = api_client_as(VIEWER)
    schema = client.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/time-entries/" in paths
    assert "/api/v1/connections/{id}/" in paths
    assert client.get("/api/v1/docs/").status_code == 200
    assert APIClient().get("/api/v1/schema/").status_code == 401
