"""The doors: lockout after failed sign-ins (page, admin, token endpoint), throttles on the API,
a Content-Security-Policy on every page, and nothing at all for a user who holds no role."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from axes.models import AccessAttempt
from axes.utils import reset as axes_reset
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from integrations.management.commands.run_portal import demo_logins_reset
from integrations.roles import FINANCE, INTEGRATION_ADMIN, PMO, SALES_OPS, VIEWER
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
LIMIT = settings.AXES_FAILURE_LIMIT
COOL_OFF_S = int(settings.AXES_COOLOFF_TIME.total_seconds())
TEMPLATES = Path(settings.BASE_DIR) / "templates"

# Each page, and a role that may open it (None: the page is public).
PAGES = {
    "/": VIEWER,
    "/finance/": FINANCE,
    "/pmo/": PMO,
    "/sales-ops/": SALES_OPS,
    "/integration-admin/": INTEGRATION_ADMIN,
    "/api/v1/docs/": VIEWER,
    "/login/": None,
    "/admin/login/": None,
}
ROLE_PAGES = [url for url, role in PAGES.items() if role is not None and "/api/" not in url]


def _sign_in(client: Client, username: str, password: str, **extra: Any):
    return client.post("/login/", {"username": username, "password": password}, **extra)


def _token(username: str, password: str, **extra: Any):
    return APIClient().post(
        "/api/v1/auth/token/", {"username": username, "password": password}, **extra
    )


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


# --- Lockout ---------------------------------------------------------------------------------


def test_login_page_locks_after_repeated_failures_until_the_cool_off_has_passed() -> None:
    UserFactory.create(username="fiona", role=FINANCE)
    client = Client()
    for _ in range(LIMIT - 1):
        failed = _sign_in(client, "fiona", "wrong")
        assert failed.status_code == 200
        assert b"didn't match" in failed.content

    locking = _sign_in(client, "fiona", "wrong")
    assert locking.status_code == 429
    assert b"Sign-in locked" in locking.content
    assert b"try again in 15 minutes" in locking.content
    assert locking["Retry-After"] == str(COOL_OFF_S)

    right = _sign_in(client, "fiona", PASSWORD)
    assert right.status_code == 429
    assert b"Sign-in locked" in right.content
    assert not _signed_in(client)
    # Refused tries while locked do not restart the clock (AXES_RESET_COOL_OFF_...=False).
    assert AccessAttempt.objects.get(username="fiona").failures_since_start == LIMIT

    # The lock lifts once the cool-off has passed since the last failure.
    AccessAttempt.objects.update(
        attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1)
    )
    after = _sign_in(client, "fiona", PASSWORD)
    assert after.status_code == 302
    assert after["Location"] == "/"
    assert _signed_in(client)


def test_lockout_answer_counts_down_from_the_last_failure() -> None:
    UserFactory.create(username="fiona", role=FINANCE)
    client = Client()
    for _ in range(LIMIT):
        _sign_in(client, "fiona", "wrong")
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=10))
    locked = _sign_in(client, "fiona", PASSWORD)
    assert locked.status_code == 429
    assert COOL_OFF_S - 600 - 5 <= int(locked["Retry-After"]) <= COOL_OFF_S - 600
    assert b"try again in 5 minutes" in locked.content


def test_lockout_is_per_username_and_address() -> None:
    UserFactory.create(username="fiona", role=FINANCE)
    UserFactory.create(username="paul", role=PMO)
    for _ in range(LIMIT):
        _sign_in(Client(), "fiona", "wrong")
    assert _sign_in(Client(), "fiona", PASSWORD).status_code == 429
    # The same user from another address, and another user from the same address, sign in.
    assert _sign_in(Client(), "fiona", PASSWORD, REMOTE_ADDR="10.1.2.3").status_code == 302
    assert _sign_in(Client(), "paul", PASSWORD).status_code == 302


def test_the_admin_login_is_locked_too() -> None:
    UserFactory.create(username="ines", role=INTEGRATION_ADMIN, is_staff=True)
    for _ in range(LIMIT):
        _sign_in(Client(), "ines", "wrong")
    client = Client()
    locked = client.post("/admin/login/", {"username": "ines", "password": PASSWORD})
    assert locked.status_code == 429
    assert b"Sign-in locked" in locked.content
    assert not _signed_in(client)


def test_a_success_before_the_limit_clears_the_count() -> None:
    UserFactory.create(username="fiona", role=FINANCE)
    for _ in range(LIMIT - 1):
        _sign_in(Client(), "fiona", "wrong")
    assert _sign_in(Client(), "fiona", PASSWORD).status_code == 302
    for _ in range(LIMIT - 1):
        _sign_in(Client(), "fiona", "wrong")
    assert _sign_in(Client(), "fiona", PASSWORD).status_code == 302


def test_token_endpoint_locks_after_repeated_failures_until_reset() -> None:
    UserFactory.create(username="fiona", role=FINANCE)
    for _ in range(LIMIT - 1):
        failed = _token("fiona", "wrong")
        assert failed.status_code == 400
        assert failed.json() == {
            "non_field_errors": ["Unable to log in with provided credentials."]
        }

    locking = _token("fiona", "wrong")
    assert locking.status_code == 429
    assert locking["Content-Type"] == "application/json"
    assert locking.json() == {
        "detail": "Too many failed sign-ins. Signing in is locked; try again in 15 minutes."
    }
    assert locking["Retry-After"] == str(COOL_OFF_S)

    right = _token("fiona", PASSWORD)
    assert right.status_code == 429
    assert "token" not in right.json()
    assert not Token.objects.filter(user__username="fiona").exists()

    # An admin lifts the lock (axes_reset_username does the same from the shell).
    assert axes_reset(username="fiona") == 1
    ok = _token("fiona", PASSWORD)
    assert ok.status_code == 200
    assert ok.json()["token"] == Token.objects.get(user__username="fiona").key


def test_make_run_lifts_the_demo_users_locks_with_their_new_passwords() -> None:
    for _ in range(LIMIT):
        _sign_in(Client(), "finance", "last run's password")
    assert AccessAttempt.objects.get(username="finance").failures_since_start == LIMIT
    passwords = demo_logins_reset()
    assert not AccessAttempt.objects.filter(username="finance").exists()
    assert _sign_in(Client(), "finance", passwords["finance"]).status_code == 302


def test_page_and_token_endpoint_share_one_count() -> None:
    UserFactory.create(username="fiona", role=FINANCE)
    for _ in range(LIMIT - 1):
        _sign_in(Client(), "fiona", "wrong")
    assert _token("fiona", "wrong").status_code == 429
    assert _sign_in(Client(), "fiona", PASSWORD).status_code == 429


# --- Throttles -------------------------------------------------------------------------------


def _rates(settings, **rates: str) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **rates},
    }


def test_token_endpoint_is_throttled_per_address(settings) -> None:
    _rates(settings, token="3/min")
    UserFactory.create(username="fiona", role=FINANCE)
    address = "10.9.8.7"
    cache.delete(f"throttle_token_{address}")  # counts live in Redis, across runs
    for _ in range(3):
        assert _token("fiona", PASSWORD, REMOTE_ADDR=address).status_code == 200
    throttled = _token("fiona", PASSWORD, REMOTE_ADDR=address)
    assert throttled.status_code == 429
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert "Request was throttled" in throttled.json()["detail"]
    # Another address is not held back.
    cache.delete("throttle_token_10.9.8.6")
    assert _token("fiona", PASSWORD, REMOTE_ADDR="10.9.8.6").status_code == 200


def test_api_is_throttled_per_user(settings) -> None:
    _rates(settings, user="5/min")
    busy, other = UserFactory.create(role=VIEWER), UserFactory.create(role=VIEWER)
    clients = {}
    for user in (busy, other):
        cache.delete(f"throttle_user_{user.pk}")
        clients[user] = APIClient()
        clients[user].force_authenticate(user)
    for _ in range(5):
        assert clients[busy].get("/api/v1/customers/").status_code == 200
    throttled = clients[busy].get("/api/v1/customers/")
    assert throttled.status_code == 429
    assert 1 <= int(throttled["Retry-After"]) <= 60
    assert clients[other].get("/api/v1/customers/").status_code == 200


def test_api_throttle_counts_the_client_address_not_a_forwarded_header(settings) -> None:
    """With no proxy configured (DJANGO_NUM_PROXIES=0), X-Forwarded-For cannot dodge a limit."""
    _rates(settings, token="2/min")
    UserFactory.create(username="fiona", role=FINANCE)
    cache.delete("throttle_token_10.9.8.5")
    codes = [
        _token(
            "fiona", PASSWORD, REMOTE_ADDR="10.9.8.5", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}"
        ).status_code
        for n in range(3)
    ]
    assert codes == [200, 200, 429]


# --- Content-Security-Policy and headers -----------------------------------------------------


@pytest.mark.parametrize(("url", "role"), PAGES.items())
def test_every_page_is_served_with_the_policy_and_headers(url: str, role: str | None) -> None:
    client = Client()
    if role is not None:
        client.force_login(UserFactory.create(role=role))
    response = client.get(url)
    assert response.status_code == 200
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in response["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["img-src"] == ("'self' data:" if url == "/api/v1/docs/" else "'self'")
    assert policy["frame-ancestors"] == "'none'"
    assert policy["form-action"] == "'self'"
    assert policy["base-uri"] == "'none'"
    assert "unsafe" not in response["Content-Security-Policy"]
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"


def test_error_pages_carry_the_policy_too() -> None:
    client = Client()
    client.force_login(UserFactory.create(role=PMO))
    refused = client.get("/finance/")
    assert refused.status_code == 403
    assert "script-src 'self'" in refused["Content-Security-Policy"]
    missing = client.get("/no-such-page/")
    assert missing.status_code == 404
    assert "script-src 'self'" in missing["Content-Security-Policy"]


def test_templates_hold_no_inline_script_style_or_handler() -> None:
    """The policy allows no inline code: scripts and styles come from static files."""
    inline = re.compile(
        r"<script(?![^>]*\bsrc=)[^>]*>|<style\b|\sstyle=|\son[a-z]+=|javascript:", re.IGNORECASE
    )
    templates = sorted(TEMPLATES.rglob("*.html"))
    assert len(templates) >= 10
    found = {
        str(path.relative_to(TEMPLATES)): inline.findall(path.read_text()) for path in templates
    }
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_docs_page_loads_its_start_up_script_from_the_same_origin() -> None:
    client = Client()
    client.force_login(UserFactory.create(role=VIEWER))
    page = client.get("/api/v1/docs/").content.decode()
    assert '<script src="/api/v1/docs/?script="></script>' in page
    script = client.get("/api/v1/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle(" in script.content
    assert b'"validatorUrl": null' in script.content
    # Every script, stylesheet and icon is a path on this origin: no other host, no CDN.
    assert re.findall(r'(?:src|href)="([^"]*)"', page)
    assert [url for url in re.findall(r'(?:src|href)="([^"]*)"', page) if url[:2] == "//"] == []
    assert "http" not in page


# --- Deny by default -------------------------------------------------------------------------


def _no_role_user() -> User:
    return UserFactory.create(username="nobody", is_staff=True)


@pytest.mark.parametrize("url", [*ROLE_PAGES, "/admin/", "/admin/integrations/customer/"])
def test_a_user_with_no_role_is_refused_every_page(url: str) -> None:
    client = Client()
    client.force_login(_no_role_user())
    response = client.get(url)
    assert response.status_code == 403
    assert b"You don't have access to this page" in response.content
    assert b"Your account has no role in Concord." in response.content


def test_a_user_with_no_role_may_still_sign_in_and_out() -> None:
    _no_role_user()
    client = Client()
    assert _sign_in(client, "nobody", PASSWORD).status_code == 302
    assert client.get("/").status_code == 403
    out = client.post("/logout/")
    assert out.status_code == 302
    assert out["Location"] == "/login/"
    assert not _signed_in(client)


def _api_endpoints() -> list[str]:
    """The index, the schema, the docs, and every path of the schema that lists or reads
    without an id (the index lists only the router's endpoints)."""
    admin = APIClient()
    admin.force_authenticate(UserFactory.create(role=INTEGRATION_ADMIN))
    schema = admin.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    listed = [
        path
        for path, operations in schema.json()["paths"].items()
        if "{" not in path and "get" in operations
    ]
    return ["/api/v1/", "/api/v1/schema/", "/api/v1/docs/", *listed]


def test_a_user_with_no_role_is_refused_every_api_endpoint() -> None:
    endpoints = _api_endpoints()
    assert len(endpoints) >= 20
    user = _no_role_user()
    by_token = APIClient()
    by_token.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    by_session = APIClient()
    by_session.force_login(user)
    for client in (by_token, by_session):
        refused = {url: client.get(url).status_code for url in endpoints}
        assert refused == dict.fromkeys(endpoints, 403)


@pytest.mark.parametrize("url", ["/api/v1/", "/api/v1/schema/", "/api/v1/docs/"])
def test_anonymous_gets_401_from_the_api_index_schema_and_docs(url: str) -> None:
    assert APIClient().get(url).status_code == 401


def test_anonymous_is_sent_to_sign_in_from_the_home_page() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


@pytest.mark.parametrize("role", [VIEWER, FINANCE, PMO, SALES_OPS, INTEGRATION_ADMIN])
def test_every_role_opens_home_and_the_api_index_schema_and_docs(role: str) -> None:
    client = APIClient()
    client.force_login(UserFactory.create(role=role))
    for url in ["/", "/api/v1/", "/api/v1/schema/", "/api/v1/docs/"]:
        assert client.get(url).status_code == 200, url
